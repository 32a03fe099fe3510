"""End to end: a dataset of all seven classes, its per-class truth, windows, alerts and the gallery figure."""
import json

import h5py
import numpy as np
import pytest

from simulator.classes import asteroid
from simulator.hosts import draw_host
from simulator.run import simulate
from simulator.settings import ALL_CLASSES, SimConfig
from simulator.summary import plot_gallery
from survey_params.sampling import ObjectConditions


def _text(a):
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "all.h5"
    simulate(SimConfig(n_per_class=8, seed=5, progress=False), out)
    return out


def test_all_classes_with_their_truth(dataset):
    with h5py.File(dataset, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["label"].attrs["class_names"]]
        assert names == list(ALL_CLASSES)
        label, mask, mag = f["label"][()], f["mask"][()], f["truth/mag"][()]
        lim = f["conditions/limmag5"][()]
        t = {k: f[f"truth/{k}"][()] for k in ("period_d", "redshift", "alert_epoch", "trail_arcsec", "amplitude_mag",
                                              "class_mean_mag", "explosion_mjd")}
        subtype, template = _text(f["truth/subtype"][()]), _text(f["truth/template"][()])
        assert mask.shape[1] == 20                                   # N_d capped at the paper's 20
    c = {n: label == i for i, n in enumerate(names)}
    assert np.isfinite(t["redshift"][c["supernova"]]).all() and np.isnan(t["redshift"][~c["supernova"]]).all()
    assert set(subtype[c["supernova"]]) <= {"Ia", "IIP", "IIL"}
    for n in ("rrlyrae", "cepheid", "eclipsing_binary"):
        assert np.isfinite(t["period_d"][c[n]]).all() and (template[c[n]] != "").all()
        assert np.isfinite(t["class_mean_mag"][c[n]]).all()
    assert set(subtype[c["rrlyrae"]]) <= {"RRab", "RRc"}
    assert (t["period_d"][c["rrlyrae"]] < 1.0).all()
    assert np.isnan(t["period_d"][c["nonvariable"] | c["galaxy"] | c["asteroid"] | c["supernova"]]).all()
    assert (t["trail_arcsec"][c["asteroid"]] > 0).all() and np.isnan(t["trail_arcsec"][~c["asteroid"]]).all()
    # variable stars vary, non-variables do not
    for n in ("rrlyrae", "cepheid"):
        rows = mag[c[n]]
        spread = [np.ptp(r[np.isfinite(r)]) for r in rows if np.isfinite(r).sum() > 3]
        assert np.median(spread) > 0.1
    nv = mag[c["nonvariable"]]
    assert all(np.ptp(r[np.isfinite(r)]) == 0 for r in nv)
    # alerts: supernovae and asteroids are first detected at alert_epoch, pre_alert_epochs into their sequence
    for i in np.flatnonzero(c["supernova"] | c["asteroid"]):
        a = t["alert_epoch"][i]
        det = np.flatnonzero(mask[i] & (mag[i] < lim[i]))
        assert a >= 0 and det[0] == a and a <= 5
    assert (t["alert_epoch"][~(c["supernova"] | c["asteroid"])] == -1).all()
    assert (mask.sum(1)[~(c["supernova"] | c["asteroid"])] >= 6).all()


def test_periodic_magnitudes_are_the_class_mean_plus_the_model_light_curve(dataset):
    """RR Lyrae: truth/mag = class_mean_mag + the model's delta_mag at each epoch's MJD, the light curve rebuilt
    from the stored truth (period, epoch, amplitude, template); eclipsing binaries only fade from maximum light
    (class_mean_mag): a light curve added with the wrong sign fails both."""
    from simulator import rrlyrae
    from simulator.templates import resolve_templates

    with h5py.File(dataset, "r") as f:
        templates = json.loads(f.attrs["config"])["templates"]
        label, mask, mag, mjd = f["label"][()], f["mask"][()], f["truth/mag"][()], f["mjd"][()]
        t = {k: f[f"truth/{k}"][()] for k in ("class_mean_mag", "period_d", "epoch_mjd", "amplitude_mag")}
        template = _text(f["truth/template"][()])
    model = rrlyrae.load_model(resolve_templates(templates))
    rows = np.flatnonzero(label == ALL_CLASSES.index("rrlyrae"))
    for i in rows:
        params = {k: t[k][i] for k in ("period_d", "epoch_mjd", "amplitude_mag")}
        params["_template_id"] = int(template[i].split(":")[1])  # fourier:ID or sesar:ID
        v = mask[i]
        np.testing.assert_allclose(mag[i, v], t["class_mean_mag"][i] + model.delta_mag(params, mjd[i, v]), atol=1e-5)
    assert np.ptp(mag[rows][mask[rows]] - np.repeat(t["class_mean_mag"][rows], mask[rows].sum(1))) > 0.3
    eb = label == ALL_CLASSES.index("eclipsing_binary")
    faded = mag[eb][mask[eb]] - np.repeat(t["class_mean_mag"][eb], mask[eb].sum(1))
    assert faded.min() > -1e-4 and faded.max() > 0.05


def test_gallery_figure(dataset, tmp_path):
    png = plot_gallery(dataset, tmp_path / "gallery.png")
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_templates_dataset(tmp_path, templates_dir):
    out = tmp_path / "real.h5"
    simulate(SimConfig(n_per_class=3, seed=2, templates=str(templates_dir), progress=False), out)
    with h5py.File(out, "r") as f:
        template = _text(f["truth/template"][()])
        label = f["label"][()]
    assert all(t.startswith("sesar:") for t in template[label == 1])
    assert all(t.startswith("yoachim") for t in template[label == 2])


def test_supernova_hosts_sit_at_the_supernova_redshift():
    """A host at z = 0.5 is fainter by the distance-modulus difference and smaller by the angular-size ratio."""
    from astropy.cosmology import Planck18

    from simulator.hosts import draw_host

    cfg, rng = SimConfig(), np.random.default_rng(0)
    near = [draw_host(rng, cfg, 0.27, centred=False, redshift=0.1) for _ in range(400)]
    far = [draw_host(rng, cfg, 0.27, centred=False, redshift=0.5) for _ in range(400)]
    d_mag = np.median([h["mag"] for h in far]) - np.median([h["mag"] for h in near])
    assert d_mag == pytest.approx(float(Planck18.distmod(0.5).value - Planck18.distmod(0.1).value), abs=0.2)
    size_ratio = np.median([h["disk_hlr_px"] for h in near]) / np.median([h["disk_hlr_px"] for h in far])
    scale = Planck18.kpc_proper_per_arcmin(0.5) / Planck18.kpc_proper_per_arcmin(0.1)
    assert size_ratio == pytest.approx(float(scale), rel=0.15)


def _conditions(limmag5, exp_time_s=86.0):
    """Conditions of one object with these 5-sigma limits, all epochs valid, one day apart."""
    n = len(limmag5)
    return ObjectConditions(mjd=np.arange(n, dtype=float), exp_time_s=np.full(n, exp_time_s), seeing_arcsec=np.ones(n),
                            airmass=np.ones(n), sky_adu=np.full(n, 100.0), zero_point=np.full(n, 25.0),
                            limmag5=np.asarray(limmag5, float), mask=np.ones(n, bool), gain=4.0, read_noise=6.0,
                            saturation=4e4, field="1", ccd=1)


def test_asteroid_avoids_clouded_out_epochs():
    """An epoch whose 5-sigma limit (14.8) is brighter than any star cannot host the asteroid's detection."""
    cfg = SimConfig()
    rng = np.random.default_rng(0)
    assert asteroid(rng, _conditions([14.8, 14.8]), cfg, {}) is None
    for _ in range(50):
        mag, _ = asteroid(rng, _conditions([14.8, 23.5, 14.8]), cfg, {})
        assert np.isfinite(mag).tolist() == [False, True, False] and mag[1] < 23.5


def test_asteroid_trail_is_its_rate_over_the_exposure():
    """trail_arcsec = rate (deg/day) x 3600 "/deg / 86400 s/day x exposure time (s): 0.25 deg/day trails 0.896" in
    HiTS's 86 s exposures, 1.06" in its 102 s ones."""
    rng = np.random.default_rng(1)
    for exp_time_s in (86.0, 102.0):
        for cfg in (SimConfig(), SimConfig(asteroid_rate_scatter_dex=0.0)):
            _, truth = asteroid(rng, _conditions([23.5], exp_time_s), cfg, {})
            assert truth["trail_arcsec"] == pytest.approx(truth["rate_deg_per_day"] * exp_time_s / 24.0, rel=1e-12)
        assert truth["trail_arcsec"] == pytest.approx(0.25 * exp_time_s / 24.0, rel=1e-12)  # the median rate


def test_asteroid_stamps_trail_their_rate_in_pixels(monkeypatch):
    """Noiseless asteroid stamps (41 px, no host): the second moment (its trace, whatever the orientation) exceeds
    that of a fixed source with the same PSF by L^2 / 12 of a uniform segment, L = rate x exposure / pixel scale
    (6.7-8 px at 0.6 deg/day; a trail of L x 0.27 px, arcsec taken for pixels, adds 0.27^2 as much)."""
    from simulator import shard
    from simulator.render import Renderer, StampParams

    monkeypatch.setattr(shard, "add_ccd_noise_streams", lambda rngs, noiseless, *rest: noiseless)
    cfg = SimConfig(classes=("asteroid",), n_per_class=6, seed=2, asteroid_rate_deg_per_day=0.6,
                    asteroid_rate_scatter_dex=0.0, host_fraction_other=0.0, stamp_size=41, fft_size=96,
                    host_fft_size=96, progress=False)
    out = shard.simulate_shard(cfg.content_json(), 0, 6)
    scale = shard.pixel_scale_arcsec(cfg)
    obj, epoch = np.nonzero(out["mask"] & np.isfinite(out["truth/mag"]))
    assert len(obj) == 6
    trailed = out["stamps"][obj, epoch]
    fixed = Renderer(41, 96, 96, moffat_beta=cfg.moffat_beta).render(StampParams.point_sources(
        trailed.sum(axis=(1, 2)), out["truth/psf_fwhm_arcsec"][obj, epoch] / scale))
    length_px = out["truth/rate_deg_per_day"][obj] * out["conditions/exp_time_s"][obj, epoch] / 24.0 / scale
    y, x = np.mgrid[:41, :41]

    def trace(img):  # sum of the central second moments along x and y, per stamp
        w = img / img.sum(axis=(1, 2), keepdims=True)
        cx, cy = (w * x).sum(axis=(1, 2), keepdims=True), (w * y).sum(axis=(1, 2), keepdims=True)
        return (w * ((x - cx) ** 2 + (y - cy) ** 2)).sum(axis=(1, 2))

    np.testing.assert_allclose(trace(trailed) - trace(fixed), length_px ** 2 / 12, rtol=0.01)


def test_host_sizes_are_drawn_in_arcsec_and_stored_in_pixels():
    """Without scatter a host's disk half-light radius is host_disk_hlr_arcsec_at_g20 x 10^(slope (g - 20))
    arcsec, in [0.2, 4]", stored in pixels of the given scale; a supernova host's, from the cosmology, too."""
    cfg = SimConfig(host_size_scatter_dex=0.0)
    arcsec = {}
    for scale in (0.27, 0.5):
        rng = np.random.default_rng(0)
        hosts = [draw_host(rng, cfg, scale, centred=i % 2 == 0) for i in range(100)]
        mag, hlr_px = (np.array([h[k] for h in hosts]) for k in ("mag", "disk_hlr_px"))
        law = np.clip(cfg.host_disk_hlr_arcsec_at_g20 * 10 ** (cfg.host_size_mag_slope_dex * (mag - 20.0)), 0.2, 4.0)
        np.testing.assert_allclose(hlr_px * scale, law, rtol=1e-12)
        rng = np.random.default_rng(0)
        arcsec[scale] = [draw_host(rng, cfg, scale, centred=False, redshift=0.2)["disk_hlr_px"] * scale
                         for _ in range(20)]
    np.testing.assert_allclose(arcsec[0.27], arcsec[0.5], rtol=1e-12)


def test_a_nan_magnitude_is_an_error_naming_the_class_and_object(monkeypatch):
    """A light-curve model giving NaN at a valid epoch stops the run, naming the class and object (its flux was
    set to 0: an empty stamp labelled as the class)."""
    from simulator import rrlyrae
    from simulator.shard import simulate_shard

    model_delta_mag = rrlyrae.FourierModel.delta_mag

    def nan_at_second_epoch(self, params, mjd):
        return np.where(np.arange(len(mjd)) == 1, np.nan, model_delta_mag(self, params, mjd))

    monkeypatch.setattr(rrlyrae.FourierModel, "delta_mag", nan_at_second_epoch)
    cfg = SimConfig(classes=("nonvariable", "rrlyrae"), n_per_class=2, seed=1, progress=False)
    with pytest.raises(ValueError, match=r"^object 1: the rrlyrae model gave magnitude nan at epoch \d+ "):
        simulate_shard(cfg.content_json(), 0, 4)


def test_galaxy_stamps_hold_the_host_flux_of_its_magnitude(tmp_path):
    """Eq. 1 for hosts: a galaxy's stamp, less the sky, sums to 10^(0.4 (zp_true - host_mag)) x exposure time
    times the share of a compact host inside the stamp (> 0.8); a host 1 mag off in the stamps (the host
    magnitude misapplied) would give 0.4."""
    out = tmp_path / "gal.h5"
    simulate(SimConfig(classes=("galaxy",), n_per_class=100, seed=9, progress=False), out)
    with h5py.File(out, "r") as f:
        mask, stamps, sky = f["mask"][()], f["stamps"][()], f["conditions/sky_adu"][()]
        zp = f["conditions/zero_point"][()] + f["truth/zero_point_error_mag"][()]
        t, host_mag = f["conditions/exp_time_s"][()], f["truth/host_mag"][()]
        hlr = np.maximum(f["truth/host/disk_hlr_px"][()], f["truth/host/bulge_hlr_px"][()])
        dist = np.hypot(f["truth/host/dx_px"][()], f["truth/host/dy_px"][()])
    expected = 10 ** (0.4 * (zp - host_mag[:, None])) * t
    measured = (stamps - sky[..., None, None]).sum(axis=(2, 3))
    compact = (hlr < 2.0) & (dist < 1.0) & np.isfinite(host_mag)
    ratio = (measured / expected)[compact[:, None] & mask & (expected > 3e3)]
    assert len(ratio) > 30, len(ratio)
    assert 0.8 < np.median(ratio) < 1.05, np.median(ratio)
