"""Optimal photometry: unbiased fluxes and calibrated errors, masking, photutils cross-check, real stamps, CLI."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from photometry.dataset import PhotometryError, run_photometry, working_copy
from photometry.optimal import OptimalPhotometry, first_detection, zero_point_scaling
from simulator.flux import mag_to_adu
from simulator.noise import add_ccd_noise
from simulator.render import Renderer, StampParams
from simulator.run import simulate
from simulator.settings import SimConfig

GAIN, RN, SKY, SAT = 4.0, 6.0, 120.0, 60000.0


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """Simulated non-variable stars without hosts, from 15 to the survey's depth: (stamps, conditions, true flux)."""
    out = tmp_path_factory.mktemp("phot") / "nv.h5"
    simulate(SimConfig(classes=("nonvariable",), n_per_class=600, seed=11, host_fraction_other=0.0,
                       star_mag_min=15.0, progress=False), out)
    with h5py.File(out, "r") as f:
        m = f["mask"][()]
        cond = {k: f[f"conditions/{k}"][()][m] for k in ("seeing_arcsec", "sky_adu", "zero_point", "exp_time_s",
                                                          "gain", "read_noise", "saturation")}
        cond["fwhm_px"] = f["truth/psf_fwhm_arcsec"][()][m] / 0.27  # the rendered PSF: photometry given the truth
        zp_true = cond["zero_point"] + f["truth/zero_point_error_mag"][()][m]
        true_flux = mag_to_adu(f["truth/mag"][()][m], zp_true, cond["exp_time_s"])
        stamps = f["stamps"][()][m]
    return stamps, cond, true_flux


def _measure(stamps, cond):
    return OptimalPhotometry().measure(stamps, cond["fwhm_px"], cond["gain"], cond["read_noise"],
                                       cond["sky_adu"], cond["saturation"])


def test_unbiased_and_calibrated_from_faint_to_bright(stars):
    """Pulls (measured - true) / error: mean within 3 standard errors (+0.02), standard deviation 0.95-1.05,
    in every S/N range."""
    stamps, cond, true_flux = stars
    r = _measure(stamps, cond)
    pull = (r.flux_adu - true_flux) / r.flux_err_adu
    snr = true_flux / r.flux_err_adu
    for lo, hi in ((0, 20), (20, 100), (100, np.inf)):
        sel = (snr >= lo) & (snr < hi)
        assert sel.sum() > 300, (lo, hi, sel.sum())
        bound = 0.02 + 3 / np.sqrt(sel.sum())
        assert abs(pull[sel].mean()) < bound, f"S/N {lo}-{hi}: mean pull {pull[sel].mean():.3f} (bound {bound:.3f})"
        assert 0.95 < pull[sel].std() < 1.05, f"S/N {lo}-{hi}: pull std {pull[sel].std():.3f}"


def test_masked_pixels_are_left_out_not_averaged(stars):
    """Sentinels (-9999), absurd values (1e8) and NaN in a star's wings leave its flux within its error."""
    stamps, cond, true_flux = stars
    idx = np.flatnonzero((true_flux > 2e4) & (true_flux < 2e5))[:50]
    clean = _measure(stamps[idx], {k: v[idx] for k, v in cond.items()})
    dirty = stamps[idx].copy()
    dirty[:, 8, 12] = -9999.0
    dirty[:, 13, 9] = 1e8
    dirty[:, 7, 7] = np.nan
    r = _measure(dirty, {k: v[idx] for k, v in cond.items()})
    assert (r.n_masked == clean.n_masked + 3).all()
    # losing 3 wing pixels' information moves a flux by ~0.2 sigma; averaging a sentinel in would move it by 100s
    z = np.abs(r.flux_adu - clean.flux_adu) / clean.flux_err_adu
    assert z.max() < 1.0 and np.sqrt(np.mean(z ** 2)) < 0.35, (z.max(), np.sqrt(np.mean(z ** 2)))


def test_saturated_core_is_masked():
    """A star saturating its core is measured from its unsaturated wings, within 1%."""
    rng = np.random.default_rng(0)
    p = StampParams.point_sources(np.full(20, 3e6), np.full(20, 4.0), rng.uniform(-0.5, 0.5, 20), rng.uniform(-0.5, 0.5, 20))
    clean = Renderer(moffat_beta=4.2).render(p)  # the photometry's PSF
    noisy = add_ccd_noise(rng, clean, np.full(20, SKY), GAIN, RN, SAT)
    r = OptimalPhotometry().measure(noisy, 4.0, GAIN, RN, SKY, SAT)
    assert (r.n_masked > 0).all()
    assert np.median(r.flux_adu / 3e6) == pytest.approx(1.0, abs=0.01)


def test_cross_check_with_photutils(stars):
    """Same stamps: photutils PSF photometry (matching Moffat image PSF) agrees; aperture photometry agrees and
    has no better S/N than optimal photometry."""
    from astropy.table import Table
    from photutils.aperture import ApertureStats, CircularAperture
    from photutils.psf import ImagePSF, PSFPhotometry

    stamps, cond, true_flux = stars
    idx = np.flatnonzero(true_flux / np.sqrt(true_flux / GAIN + 441 * SKY / GAIN) > 30)[:40]
    c = {k: v[idx] for k, v in cond.items()}
    fwhm = c["fwhm_px"]
    ours = _measure(stamps[idx], c)
    renderer = Renderer(stamp_size=21, moffat_beta=4.2)  # the simulator's PSF
    ratio_psf, ratio_ap, snr_ap = [], [], []
    for j, i in enumerate(idx):
        data = stamps[i].astype(float) - c["sky_adu"][j]
        raw = renderer.render(StampParams.point_sources([1.0], [fwhm[j]]))[0].astype(float)  # unit total flux
        psf = ImagePSF(raw / raw.sum(), x_0=10, y_0=10)  # photutils fits the flux within the stamp
        err = np.sqrt((c["sky_adu"][j] + np.clip(data, 0, None)) / c["gain"][j] + (c["read_noise"][j] / c["gain"][j]) ** 2)
        phot = PSFPhotometry(psf, fit_shape=(11, 11), aperture_radius=fwhm[j])
        res = phot(data, error=err, init_params=Table({"x": [10.0], "y": [10.0]}))
        ratio_psf.append(res["flux_fit"][0] / raw.sum() / ours.flux_adu[j])
        ap = CircularAperture((10, 10), r=1.5 * fwhm[j])
        stats = ApertureStats(data, ap, error=err, sum_method="exact")
        ratio_ap.append(stats.sum / ours.flux_adu[j])
        snr_ap.append(stats.sum / stats.sum_err)
    assert np.median(ratio_psf) == pytest.approx(1.0, abs=0.02)
    assert np.median(ratio_ap) == pytest.approx(0.97, abs=0.03)  # a 1.5 FWHM aperture misses a few % of a Moffat
    snr_opt = ours.flux_adu / ours.flux_err_adu
    assert (snr_opt >= 0.98 * np.array(snr_ap)).mean() > 0.9


@pytest.mark.parametrize("size", [9, 21])
def test_border_sky_takes_the_star_out(size):
    """Sky from the stamp border (no sky given): unbiased fluxes and calibrated errors even where the PSF's
    wings reach the border (FWHM 3-6 px; before, the wings raised the border's median: median flux ratio
    0.65 at 9 px, pull std 2.2 at 21 px)."""
    rng = np.random.default_rng(size)
    n = 400
    fwhm, flux = rng.uniform(3.0, 6.0, n), 10 ** rng.uniform(3, 5, n)
    p = StampParams.point_sources(flux, fwhm, *rng.uniform(-0.5, 0.5, (2, n)))
    op = OptimalPhotometry(size)
    noisy = add_ccd_noise(rng, op.renderer.render(p), np.full(n, SKY), GAIN, RN, SAT)
    r = op.measure(noisy, fwhm, GAIN, RN, None, SAT)
    pull = (r.flux_adu - flux) / r.flux_err_adu
    assert np.median(r.flux_adu / flux) == pytest.approx(1.0, abs=0.005)
    assert abs(pull.mean()) < 0.15 and 0.9 < pull.std() < 1.1, (pull.mean(), pull.std())
    sky_err = np.sqrt(SKY / GAIN + (RN / GAIN) ** 2) / np.sqrt(4 * (size - 2) * 2)  # one pixel's over the border
    assert abs(np.median(r.sky_adu) - SKY) < 2 * sky_err, np.median(r.sky_adu)
    with pytest.raises(ValueError, match="sky cannot be measured on the border of 5-pixel stamps"):
        OptimalPhotometry(5).measure(noisy[:, size // 2 - 2:size // 2 + 3, size // 2 - 2:size // 2 + 3], fwhm,
                                     GAIN, RN, None, SAT)


def test_real_stamps_give_sensible_light_curves(hits_dir):
    """Real HiTS stamps: RR Lyrae vary by tenths of a magnitude, non-variable stars by ~0.02 mag at most."""
    from photometry.real import measure_real

    r = measure_real(hits_dir / "real_dev.npz", hits_dir / "camera.csv")
    scatter = {}
    for k in range(len(r.label)):
        s = slice(r.offsets[k], r.offsets[k + 1])
        m = r.mag[s][r.measured[s]]
        m = m[np.isfinite(m)]
        scatter.setdefault(r.class_names[r.label[k]], []).append(1.4826 * np.median(np.abs(m - np.median(m))))
    assert max(scatter["NV"]) < 0.04 < 0.08 < min(scatter["RRLyrae"])
    assert np.median(scatter["EB"]) > 2 * np.median(scatter["NV"])


def test_detection_rule_and_zero_point_scaling():
    """The alert: 5 errors over the median of the fainter half of the valid epochs (not below zero), as a
    difference image sees a transient over its host; with `quiescent=False` the paper's rule on the flux."""
    flux = np.array([[1.0, 4.0, 6.0, 20.0], [1.0, 1.0, 1.0, 1.0], [50.0, 52.0, 49.0, 51.0], [-2.0, 0.5, 4.5, 9.0]])
    err = np.ones_like(flux)
    mask = np.array([[True, True, True, True], [True, True, True, False], [True] * 4, [True] * 4])
    assert first_detection(flux, err, mask, quiescent=False).tolist() == [2, -1, 0, 3]
    # levels: median(1, 4) = 2.5 (the fainter two of four), 1, median(49, 50) = 49.5 (a host), 0 (not -0.75)
    assert first_detection(flux, err, mask).tolist() == [3, -1, -1, 3]
    host = np.r_[100.0, 101.0, 99.0, 100.5, 99.5, 103.0, 108.0, 130.0]  # a supernova rising on a host
    assert first_detection(host[None], np.ones((1, 8)), np.ones((1, 8), bool)).tolist() == [6]
    assert first_detection(flux[:, :1], err[:, :1], mask[:, :1]).tolist() == [-1, -1, 0, -1]  # one epoch: no level
    zp = np.array([[25.0, 25.5, 24.5, 25.0], [25.0, 25.0, 25.0, np.nan]])
    scale = zero_point_scaling(zp, mask[:2])
    assert scale[0].tolist() == pytest.approx([1.0, 10 ** (-0.2), 10 ** 0.2, 1.0])
    assert np.isnan(scale[1, 3])


def _at_batch(monkeypatch, n: int, action) -> dict:
    """`OptimalPhotometry.measure` patched so that `action()` runs before its `n`-th call (one per batch);
    returns its call count ({"n": ...})."""
    import photometry.dataset as pd

    calls = {"n": 0}
    real = pd.OptimalPhotometry.measure

    def measure(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real(self, *a, **k)
    monkeypatch.setattr(pd.OptimalPhotometry, "measure", measure)
    return calls


def test_alerts_of_supernovae_on_hosts_follow_the_supernova(tmp_path):
    """On science stamps a host's light alone passes "flux > 5 sigma" at the first epoch; the rule over the
    quiescent level finds the supernova's own alert (the simulator's: its first epoch brighter than limmag5)
    about as often as without a host."""
    ds = tmp_path / "sn.h5"
    simulate(SimConfig(classes=("supernova",), n_per_class=80, seed=11, progress=False,
                       host_fraction_supernova=1.0, host_mag_min=19.0), ds)
    run_photometry(ds, progress=False)
    with h5py.File(ds, "r") as f:
        g, mask, alert = f["photometry"], f["mask"][()], f["truth/alert_epoch"][()]
        flux, err, det = g["flux_adu"][()], g["flux_err_adu"][()], g["first_detection"][()]
    literal = first_detection(flux, err, mask, quiescent=False)
    assert (literal == 0).mean() > 0.6 and (literal == alert).mean() < 0.15  # the host, not the supernova
    assert (det == 0).mean() < 0.3 and (abs(det - alert) <= 1).mean() > 2 * (abs(literal - alert) <= 1).mean()


def _die():
    raise KeyboardInterrupt  # a kill with no signal path: nothing after it runs


def test_cli_adds_photometry_and_resumes(tmp_path, monkeypatch):
    ds = tmp_path / "d.h5"
    simulate(SimConfig(classes=("nonvariable", "supernova"), n_per_class=12, seed=3, progress=False), ds)
    ref = tmp_path / "ref.h5"
    ref.write_bytes(ds.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "photometry.cli", str(ref), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(ref, "r") as f:
        g, mask = f["photometry"], f["mask"][()]
        flux, err, lc = g["flux_adu"][()], g["flux_err_adu"][()], g["lc_flux"][()]
        assert flux.shape == mask.shape and np.isfinite(flux[mask]).all() and np.isnan(flux[~mask]).all()
        assert (err[mask] > 0).all()
        zp, zp_ref = f["conditions/zero_point"][()], f["conditions/zero_point_ref"][()]
        assert np.allclose(lc[mask], (flux * zero_point_scaling(zp, mask, zp_ref))[mask], rtol=1e-5)
        assert (g["first_detection"][()] == first_detection(flux, err, mask)).all()
        sn = f["label"][()] == 1
        assert (g["first_detection"][()][sn] >= 0).mean() > 0.6  # simulated SNe rose 5 sigma over their level
    # interrupted after the first batch, then rerun: the same result
    _at_batch(monkeypatch, 2, _die)
    with pytest.raises(KeyboardInterrupt):
        run_photometry(ds, batch_objects=8, progress=False)
    assert (tmp_path / "d.h5.photometry-tmp").exists()
    with h5py.File(ds, "r") as f:
        assert "photometry" not in f  # the dataset itself is untouched until the end
    monkeypatch.undo()
    run_photometry(ds, batch_objects=8, progress=False)
    with h5py.File(ds, "r") as f, h5py.File(ref, "r") as g:
        assert np.array_equal(f["photometry/flux_adu"][()], g["photometry/flux_adu"][()], equal_nan=True)
    assert not (tmp_path / "d.h5.photometry-tmp").exists()


def test_cli_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "photometry.cli", str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert proc.returncode == 2 and "none.h5: dataset not found" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(PhotometryError, match=f"^{tmp_path}: is a directory, not a dataset$"):
        run_photometry(tmp_path)
    (tmp_path / "text.h5").write_text("not HDF5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    for name, message in (("text.h5", "text.h5: cannot be read as an HDF5 dataset"),
                          ("other.h5", "other.h5: missing dataset(s) stamps, mask, conditions/seeing_arcsec")):
        proc = subprocess.run([sys.executable, "-m", "photometry.cli", str(tmp_path / name)], capture_output=True,
                              text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5", "text.h5"]  # no working copy left
    with pytest.raises(PhotometryError, match="batch_objects must be >= 1, got 0"):  # it looped for ever
        run_photometry(tmp_path / "other.h5", batch_objects=0)


def test_a_stop_signal_ends_photometry_after_the_batch_in_flight(tmp_path, monkeypatch, capsys):
    """SIGTERM (a batch scheduler's time limit) mid-run: the batch in flight is finished and kept in the
    working copy, the command says so and exits 143; the rerun gives what an uninterrupted run does."""
    import signal

    from photometry.cli import main

    ds = tmp_path / "d.h5"
    simulate(SimConfig(classes=("nonvariable", "supernova"), n_per_class=12, seed=3, progress=False), ds)
    ref = tmp_path / "ref.h5"
    ref.write_bytes(ds.read_bytes())
    run_photometry(ref, batch_objects=8, progress=False)
    # recorded: the second batch is still measured and written
    calls = _at_batch(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))

    def unhandled(signum, frame):
        raise AssertionError("the command did not handle the signal")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert main([str(ds), "--no-progress", "--batch-objects", "8"]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    tmp = tmp_path / "d.h5.photometry-tmp"
    assert f"photometry: stopped by SIGTERM; the objects measured so far are kept in {tmp}" in capsys.readouterr().err
    with h5py.File(tmp, "r") as f:
        assert f["photometry"].attrs["done"] == 16 and calls["n"] == 2
    with h5py.File(ds, "r") as f:
        assert "photometry" not in f
    monkeypatch.undo()
    assert main([str(ds), "--no-progress", "--batch-objects", "8"]) == 0
    with h5py.File(ds, "r") as f, h5py.File(ref, "r") as g:
        for k in ("flux_adu", "flux_err_adu", "first_detection"):
            assert np.array_equal(f[f"photometry/{k}"][()], g[f"photometry/{k}"][()], equal_nan=True), k
    assert not tmp.exists()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small valid dataset (8 objects, 20 epochs), copied and corrupted by the bad-input tests."""
    out = tmp_path_factory.mktemp("small") / "d.h5"
    simulate(SimConfig(classes=("nonvariable", "supernova"), n_per_class=4, seed=1, progress=False), out)
    return out


def _replace(key, make):
    """A corruption: dataset `key` replaced by `make(its values)` (None: removed)."""
    def corrupt(f):
        new = make(f[key][()])
        del f[key]
        if new is not None:
            f[key] = new
    return corrupt


def _config(**changes):
    def corrupt(f):
        import json

        f.attrs["config"] = json.dumps({**json.loads(f.attrs["config"]), **changes})
    return corrupt


def _at_first_valid(key, value, row=5):
    """`key` set to `value` at object `row`'s first valid epoch."""
    def corrupt(f):
        v = f[key][()]
        v[row, np.argmax(f["mask"][row])] = value
        f[key][...] = v
    return corrupt


def _stamps_group(f):
    del f["stamps"]
    f.create_group("stamps")


def _no_objects(f):
    for k in ["stamps", "mask"] + [f"conditions/{c}" for c in f["conditions"]]:
        _replace(k, lambda v: v[:0])(f)


BAD_INPUT = [  # (corruption, message after "d.h5: "); the fixture's dataset has shape (8, 20)
    (_replace("mask", lambda v: v.astype(np.float32)), "'mask' has dtype float32; expected bool"),
    (_replace("mask", lambda v: v.astype(np.int64)), "'mask' has dtype int64; expected bool"),
    (_replace("mask", lambda v: v[:, :-2]), "'mask' has shape (8, 18); expected (8, 20)"),
    (_replace("mask", lambda v: v[:-3]), "'mask' has shape (5, 20); expected (8, 20)"),
    (_replace("conditions/gain", lambda v: v[:, :1]), "'conditions/gain' has shape (8, 1); expected (8, 20)"),
    (_replace("stamps", lambda v: v[:, :, 3:18, 3:18]), "'stamps' has shape (8, 20, 15, 15); expected (N, T, 21, 21)"),
    (_replace("stamps", lambda v: v[..., :20]), "'stamps' has shape (8, 20, 21, 20); expected (N, T, 21, 21)"),
    (_replace("stamps", lambda v: v[..., 0]), "'stamps' has shape (8, 20, 21); expected (N, T, 21, 21)"),
    (_replace("stamps", lambda v: v.astype("S8")), "'stamps' has dtype |S8; expected numbers"),
    (_stamps_group, "'stamps' is a group; expected an array"),
    (_no_objects, "holds no objects ('stamps' has shape (0, 20, 21, 21))"),
    (_replace("mask", np.zeros_like), "no valid epochs ('mask' is all False)"),
    (lambda f: f.attrs.__setitem__("config", "{not json"), "attribute 'config' is not valid JSON"),
    (_config(psf="foo"), "config: psf must be one of ('moffat', 'kolmogorov'), got 'foo'"),
    (_config(moffat_beta="abc"), "config 'moffat_beta' is 'abc'; expected a finite number > 1.1"),
    (_config(stamp_size=15), "'stamps' has shape (8, 20, 21, 21); expected (N, T, 15, 15)"),
    (_config(stamp_size=20), "'stamps' has shape (8, 20, 21, 21); expected (N, T, 20, 20)"),
    (lambda f: f.attrs.__setitem__("pixel_scale_arcsec", 0.0),
     "attribute 'pixel_scale_arcsec' is 0.0; expected a finite number > 0"),
    (_replace("conditions/sky_adu", lambda v: None), "missing dataset(s) conditions/sky_adu"),
    (_replace("conditions/read_noise", lambda v: None), "missing dataset(s) conditions/read_noise"),
    (_replace("conditions/saturation", lambda v: None), "missing dataset(s) conditions/saturation"),
    (_replace("conditions/zero_point", lambda v: None), "missing dataset(s) conditions/zero_point"),
    (lambda f: [_replace(f"conditions/{k}", lambda v: None)(f) for k in ("gain", "zero_point")],
     "missing dataset(s) conditions/gain, conditions/zero_point"),
    # values that gave NaN fluxes (or a whole NaN light curve: eq. 4's reference is the first zero point)
    (_at_first_valid("conditions/zero_point", np.nan), "'conditions/zero_point' is nan at row 5, epoch "),
    (_at_first_valid("conditions/seeing_arcsec", np.nan), "'conditions/seeing_arcsec' is nan at row 5, epoch "),
    (_at_first_valid("conditions/seeing_arcsec", 0.0), "'conditions/seeing_arcsec' is 0.0 at row 5, epoch "),
    (_at_first_valid("conditions/gain", np.nan), "'conditions/gain' is nan at row 5, epoch "),
    (_at_first_valid("conditions/gain", 0.0), "'conditions/gain' is 0.0 at row 5, epoch "),
    (_at_first_valid("conditions/read_noise", -1.0), "'conditions/read_noise' is -1.0 at row 5, epoch "),
    (_at_first_valid("conditions/sky_adu", np.inf), "'conditions/sky_adu' is inf at row 5, epoch "),
    (_at_first_valid("conditions/saturation", 0.0), "'conditions/saturation' is 0.0 at row 5, epoch "),
    # eq. 4's reference: a NaN one made that object's whole light curve NaN
    (_replace("conditions/zero_point_ref", lambda v: np.where(np.arange(len(v)) == 2, np.nan, v)),
     "'conditions/zero_point_ref'[2] is nan; expected a finite zero point"),
]


@pytest.mark.parametrize("corrupt, message", BAD_INPUT, ids=[m[:60] for _, m in BAD_INPUT])
def test_bad_dataset_is_one_error_line_and_leaves_nothing(small, tmp_path, capsys, corrupt, message):
    """Exit status 2 and one line naming the file, the array or attribute and the value, before any work: no
    traceback, the dataset unchanged and no working copy left."""
    from photometry.cli import main

    ds = tmp_path / "d.h5"
    ds.write_bytes(small.read_bytes())
    with h5py.File(ds, "r+") as f:
        corrupt(f)
    before = ds.read_bytes()
    assert main([str(ds), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"photometry: error: {ds}: {message}") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert ds.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_bad_conditions_at_padded_epochs_and_objects_without_epochs_are_fine(small, tmp_path, capsys):
    """Conditions at padded (mask False) epochs are never used; an object with no valid epoch gets an
    all-NaN light curve and no detection."""
    from photometry.cli import main

    ds = tmp_path / "d.h5"
    ds.write_bytes(small.read_bytes())
    with h5py.File(ds, "r+") as f:
        m = f["mask"][()]
        m[2:4] = False  # with 2 objects a batch: one batch of nothing to measure
        f["mask"][...] = m
        for k in ("gain", "seeing_arcsec", "zero_point"):
            v = f[f"conditions/{k}"][()]
            v[~m] = 0.0
            f[f"conditions/{k}"][...] = v
    assert main([str(ds), "--no-progress", "--batch-objects", "2"]) == 0, capsys.readouterr().err
    with h5py.File(ds, "r") as f:
        g = f["photometry"]
        assert np.isfinite(g["lc_flux"][()][m]).all() and np.isnan(g["lc_flux"][()][~m]).all()
        assert (g["first_detection"][2:4] == -1).all()


def test_a_failure_while_measuring_keeps_the_finished_batches(small, tmp_path, monkeypatch):
    """An error mid-run (a full disk, a read error) is no bad input: the batches done stay in the working copy,
    the dataset is untouched, and the rerun goes on to what an uninterrupted run gives."""
    ds, ref = tmp_path / "d.h5", tmp_path / "ref.h5"
    ds.write_bytes(small.read_bytes())
    ref.write_bytes(small.read_bytes())
    run_photometry(ref, batch_objects=2, progress=False)

    def fail():
        raise OSError("No space left on device")
    calls = _at_batch(monkeypatch, 2, fail)
    with pytest.raises(OSError, match="No space left"):
        run_photometry(ds, batch_objects=2, progress=False)
    assert calls["n"] == 2 and working_copy(ds).exists() and ds.read_bytes() == small.read_bytes()
    monkeypatch.undo()
    run_photometry(ds, batch_objects=2, progress=False)
    assert not working_copy(ds).exists()
    with h5py.File(ds, "r") as f, h5py.File(ref, "r") as g:
        assert np.array_equal(f["photometry/lc_flux"][()], g["photometry/lc_flux"][()], equal_nan=True)


def test_border_sky_needs_room_outside_the_border(small, tmp_path, capsys):
    """`--sky border` on 5-pixel stamps is refused naming the file and size; the logged sky still works."""
    from photometry.cli import main

    ds = tmp_path / "d.h5"
    ds.write_bytes(small.read_bytes())
    with h5py.File(ds, "r+") as f:
        _replace("stamps", lambda v: v[:, :, 8:13, 8:13])(f)
        _config(stamp_size=5)(f)
    assert main([str(ds), "--sky", "border", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"photometry: error: {ds}: config: stamp_size 5 is too small to measure the sky on the stamp "
                   f"border (at least 7); use the logged sky\n")
    assert main([str(ds), "--no-progress"]) == 0


def test_moffat_beta_is_checked_only_for_a_moffat_psf(small, tmp_path):
    """simulate accepts any moffat_beta with a Kolmogorov PSF (unused there); photometry refused the dataset."""
    from photometry.dataset import psf_options

    ds = tmp_path / "d.h5"
    ds.write_bytes(small.read_bytes())
    with h5py.File(ds, "r+") as f:
        _config(psf="kolmogorov", moffat_beta=1.0)(f)
        assert psf_options(f, ds)["psf"] == "kolmogorov"
        _config(psf="moffat")(f)
        with pytest.raises(Exception, match="config 'moffat_beta' is 1.0; expected a finite number > 1.1"):
            psf_options(f, ds)
