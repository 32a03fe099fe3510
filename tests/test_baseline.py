"""The random-forest baseline: aperture photometry (photutils parity), light-curve features on hand-made
curves, cross-validation on the real objects, simulated -> real through the CLI."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from rcnn.baseline import FEATURES, aperture_light_curves, light_curve_features, run_baseline
from simulator.run import simulate
from simulator.settings import SimConfig, psf_fwhm_arcsec


@pytest.fixture(scope="module")
def sim4(tmp_path_factory):
    path = tmp_path_factory.mktemp("rf") / "four.h5"
    simulate(SimConfig(classes=("supernova", "rrlyrae", "eclipsing_binary", "nonvariable"), n_per_class=30, seed=5,
                       progress=False), path)
    return path


def test_aperture_photometry_matches_photutils(sim4):
    from photutils.aperture import CircularAperture, aperture_photometry

    lc = aperture_light_curves(sim4)
    with h5py.File(sim4, "r") as f:
        for k, t in ((0, 0), (3, 4), (7, 2)):
            img = f["stamps"][k, t] - f["conditions/sky_adu"][k, t]
            r = np.round(psf_fwhm_arcsec(f["conditions/seeing_arcsec"][k, t]) / 0.27, 1)
            ref = aperture_photometry(img, CircularAperture((10, 10), r), method="exact")["aperture_sum"][0]
            zs = 10 ** ((f["conditions/zero_point_ref"][k] - f["conditions/zero_point"][k, t]) / 2.5)
            assert lc["flux"][k, t] == pytest.approx(ref * zs, rel=1e-5, abs=1e-3)
    chunked = aperture_light_curves(sim4, chunk_objects=7, progress=False)  # the stamps read 7 objects at a time
    for key in ("flux", "flux_err", "mag_offset", "mjd", "mask"):
        np.testing.assert_array_equal(chunked[key], lc[key], err_msg=key)


def test_aperture_errors_are_calibrated():
    """Noise realisations of one star: the aperture flux scatters as its error says, about the noiseless flux."""
    from rcnn.baseline import aperture_flux
    from simulator.noise import add_ccd_noise
    from simulator.render import Renderer, StampParams

    clean = Renderer().render(StampParams.point_sources(flux_adu=[3000.0], fwhm_px=[4.0]))
    rng = np.random.default_rng(1)
    n = 3000
    noisy = add_ccd_noise(rng, np.repeat(clean, n, 0), np.full(n, 150.0), 4.0, 6.0, 60000.0)
    ones = np.ones(n)
    flux, err = aperture_flux(noisy, 150.0 * ones, 4.0 * ones, 4.0 * ones, 6.0 * ones, 60000.0 * ones)
    ref, _ = aperture_flux(clean, [0.0], [4.0], [4.0], [6.0], [60000.0])
    assert flux.std() == pytest.approx(np.median(err), rel=0.05)
    assert abs(flux.mean() - ref[0]) < 4 * flux.std() / np.sqrt(n)


def test_features_of_hand_made_light_curves():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 25, 40))[None].repeat(3, 0)
    err = np.full(t.shape, 10.0)
    flux = np.stack([1e4 * (1 + 0.3 * np.sin(2 * np.pi * t[0] / 0.55)),    # RR Lyrae-like, P = 0.55 d
                     np.full(40, 1e4),                                      # constant
                     np.where(t[2] > 10, 5e3 * (t[2] - 10), 0.0)])          # rising transient
    flux = flux + rng.normal(0, 10.0, flux.shape)
    x = light_curve_features(flux, err, t, np.ones(t.shape, bool), np.full(3, 30.0))
    f = dict(zip(FEATURES, x.T))
    assert f["ls_log_period_d"][0] == pytest.approx(np.log10(0.55), abs=0.01) and f["ls_power"][0] > 0.9
    assert f["amplitude_mag"][0] > 0.5 and f["amplitude_mag"][1] < 0.01
    assert 0.5 < f["chi2_red"][1] < 1.6 and f["chi2_red"][0] > 100
    assert f["median_mag"][1] == pytest.approx(30 - 2.5 * np.log10(1e4), abs=0.01)
    assert f["early_late_mag"][2] < -3 and f["max_brightening_sigma"][2] > 100 and f["max_phase"][2] > 0.9


def test_cross_validation_on_real_objects(hits_dir, tmp_path):
    """The issue's second bar: a forest on 40 real objects classifies held-out real objects well."""
    from rcnn.real import import_real

    real = import_real(hits_dir / "real_dev.npz", tmp_path / "real.h5", hits_dir / "camera.csv")
    r = run_baseline(real, tmp_path / "cv", cv=5, n_trees=200)
    assert r["n_test"] == 40 and set(r["recall"]) == {"SN", "RRLyrae", "EB", "NV"}
    assert r["balanced_recall"] >= 0.8
    with pytest.raises(ValueError, match="--cv 11: needs 2 <= K <= the smallest class's count"):
        run_baseline(real, tmp_path / "cv", cv=11)
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "baseline", str(tmp_path / "none.h5"), "--test", str(real),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "none.h5: dataset not found" in proc.stderr and "Traceback" not in proc.stderr


def test_simulated_to_real_cli(sim4, hits_dir, tmp_path):
    from rcnn.real import import_real

    real = import_real(hits_dir / "real_dev.npz", tmp_path / "real.h5", hits_dir / "camera.csv")
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "baseline", str(sim4), "--test", str(real),
                           "--out", str(tmp_path / "s2r"), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "aperture photometry" not in proc.stderr and "light-curve features" not in proc.stderr
    m = json.loads((tmp_path / "s2r" / "metrics.json").read_text())
    assert set(m["recall"]) == {"supernova", "rrlyrae", "eclipsing_binary", "nonvariable"} and m["n_test"] == 40
    assert m["balanced_recall"] > 0.5  # well above chance (0.25) from 120 simulated objects
    assert (tmp_path / "s2r" / "confusion.png").stat().st_size > 10_000
    # the Python call maps the HiTS labels by default too
    assert run_baseline(sim4, tmp_path / "api", test=real, n_trees=50)["n_test"] == 40


def test_a_training_run_directory_is_refused_as_out(sim4, tmp_path):
    """`--out` naming a training run's directory (config.yaml and checkpoints/) is refused before any work: the
    report was written among the run's files."""
    from rcnn.train import RunError

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: rcnn\n")
    with pytest.raises(RunError, match=f"--out {run}: a training run's directory"):
        run_baseline(sim4, run, n_trees=10, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
