"""Simulated non-variable stars vs the 10 real HiTS NV objects (Carrasco-Davis et al. 2019, Appendix A).

Uses the measurement functions of `benchmarks/compare_real.py`: sky (border median), pixel noise (border
1.4826 MAD) and PSF FWHM (Moffat + constant fit) of ~60 simulated stars made with the real HiTS 2015 logs
and of the real NV frames of `real_dev.npz`. Needs the shared data directory ($STAMPSEQ_SHARED, else
`<repo root>/../shared`); skipped when it is absent.

Tolerances come from the measured values (real / sim, 60 objects, seeds 0-4 agree to <1%):
sky/logged 0.999 / 1.006; noise/expected on the raw border 1.094 / 1.02, after subtracting the fitted
star 1.025 / 0.994-1.002; FWHM/logged seeing 0.811 / 1.016. They fail if the gain were not applied
(noise ratio ~2) or the PSF were twice too wide (FWHM ratio ~2).

Known discrepancy, now calibrated: real PSFs are ~20% narrower than the logged seeing (FWHM/seeing 0.81)
with steeper wings (Moffat beta ~4.2), the narrowing growing with the seeing: FWHM = 0.931 seeing - 0.159"
over the 665 frames of the 30 real stars, each frame scattering 4.3% about it. The simulator's defaults
(`psf_fwhm_per_seeing`, `psf_fwhm_offset_arcsec`, `psf_fwhm_scatter`, `moffat_beta`) are these numbers, and
`test_psf_calibration_is_what_the_real_stars_give` checks them against the script.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "compare_real.py"
N_SIM = 60
SEED = 0


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_real", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cr():
    return _load_script()


@pytest.fixture(scope="module")
def result(cr, hits_dir, tmp_path_factory):
    missing = [str(hits_dir / f) for f in ("real_dev.npz", "field_epochs.csv") if not (hits_dir / f).exists()]
    if missing:
        pytest.skip(f"shared HiTS data not available (set STAMPSEQ_SHARED): missing {', '.join(missing)}")
    return cr.compare(hits_dir.parent, n_per_class=N_SIM, seed=SEED, workdir=tmp_path_factory.mktemp("sim"))


def test_measure_stamps_on_known_stamps(cr):
    """The estimators recover sky and noise of blank stamps, and FWHM, beta and the pixel noise under
    synthetic Moffat stars (whose wings bias the raw border statistics, hence `noise_clean`)."""
    rng = np.random.default_rng(1)
    size, n = 21, 40
    assert cr.border_mask(size).sum() == size ** 2 - 15 ** 2
    blank = cr.measure_stamps(100.0 + rng.normal(0.0, 5.0, (n, size, size)))
    assert not blank["fitted"].any()
    assert np.median(blank["sky"]) == pytest.approx(100.0, abs=0.5)
    assert np.median(blank["noise"]) == pytest.approx(5.0, rel=0.05)
    yy, xx = np.mgrid[:size, :size].astype(float)
    fwhm_px = rng.uniform(3.5, 7.0, n)
    clean = np.stack([cr.moffat([2000.0, 10.2, 9.8, f, 3.0], xx, yy) for f in fwhm_px])
    m = cr.measure_stamps(clean + 100.0 + rng.normal(0.0, 5.0, clean.shape))
    assert m["fitted"].all()
    np.testing.assert_allclose(m["fwhm_arcsec"], fwhm_px * cr.PIXEL_SCALE_ARCSEC, rtol=0.03)
    assert np.median(m["beta"]) == pytest.approx(3.0, rel=0.15)
    assert np.median(m["noise_clean"]) == pytest.approx(5.0, rel=0.05)
    assert np.median(m["noise"]) > 1.1 * np.median(m["noise_clean"])  # the wings reach the border


def test_enough_frames(result):
    assert result["sum_real"]["n"] >= 150 and result["sum_real"]["n_fit"] >= 150
    assert result["sum_sim"]["n"] >= 1000 and result["sum_sim"]["n_fit"] >= 300


def test_sky_matches_logs(result):
    """Border median / logged sky: 1.006 sim, 0.999 real."""
    assert abs(result["sum_sim"]["sky"] - 1.0) < 0.03
    assert abs(result["sum_real"]["sky"] - 1.0) < 0.03


def test_noise_real_vs_sim(result):
    """Border noise / sqrt(sky/gain + (rn/gain)^2); real uses the median CCD gain and read noise."""
    real, sim = result["sum_real"], result["sum_sim"]
    # pure pixel noise (fitted star subtracted): the simulator follows its own noise model...
    assert abs(sim["noise_clean"] - 1.0) < 0.03
    # ...and real pixels agree with it (measured 1.025 vs 0.993)
    assert abs(real["noise_clean"] / sim["noise_clean"] - 1.0) < 0.06
    # raw border ring as in the paper (wings, neighbours included; measured 1.094 vs 1.023)
    assert abs(real["noise"] / sim["noise"] - 1.0) < 0.12


def test_sim_fwhm_follows_the_calibrated_psf(result):
    """Fitted simulated FWHMs are the rendered ones (truth/psf_fwhm_arcsec), with the configured Moffat beta."""
    from simulator.settings import SimConfig

    ms, sim = result["meas_sim"], result["sim"]
    ok = ms["fitted"]
    assert np.median(ms["fwhm_arcsec"][ok] / sim["true_fwhm_arcsec"][ok]) == pytest.approx(1.0, abs=0.03)
    assert result["sum_sim"]["beta"] == pytest.approx(SimConfig().moffat_beta, rel=0.15)


def test_psf_calibration_is_what_the_real_stars_give(result):
    """The simulator's PSF relation and per-epoch jitter are those fitted to the real stars (settings.py)."""
    from simulator.settings import SimConfig

    cfg, rel = SimConfig(), result["psf_relation"]
    assert rel["n"] >= 600
    assert rel["slope"] == pytest.approx(cfg.psf_fwhm_per_seeing, abs=0.03)
    assert rel["offset_arcsec"] == pytest.approx(cfg.psf_fwhm_offset_arcsec, abs=0.04)
    assert np.sqrt(rel["scatter"] ** 2 - rel["fit_scatter"] ** 2) == pytest.approx(cfg.psf_fwhm_scatter, abs=0.01)


def test_real_fwhm_tracks_logged_seeing(result):
    """Real FWHMs follow the logged seeing frame by frame (so the join and the fits work)."""
    m, real = result["meas_real"], result["real"]
    ok = m["fitted"]
    assert np.corrcoef(m["fwhm_arcsec"][ok], real["seeing_arcsec"][ok])[0, 1] > 0.9


def test_fwhm_real_vs_sim(result):
    assert abs(result["sum_real"]["fwhm"] / result["sum_sim"]["fwhm"] - 1.0) < 0.15
