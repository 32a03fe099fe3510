"""Supernova physics, the magnitude laws and the detection/window rules of the sequences."""
import numpy as np
import pytest
from scipy import stats
from scipy.special import erf

from simulator import supernova
from simulator.classes import MODELS, _star_mag
from simulator.settings import SimConfig
from simulator.shard import choose_window
from survey_params import make_sampler
from survey_params.sampling import ObjectConditions


@pytest.fixture(scope="module")
def sn_model():
    return supernova.SupernovaModel(None, depth_mag=25.0)


def _draws(model, n, seed=0):
    sampler, rng = make_sampler(), np.random.default_rng(seed)
    out = []
    while len(out) < n:
        c = sampler.draw(rng)
        v = c.mask
        got = model.draw(rng, c.mjd[v], c.limmag5[v])
        if got is not None:
            out.append((c.mjd[v], c.limmag5[v]) + got)
    return out


NO_EFFECTS = {"stretch": 1.0, "flux_scale": 1.0, "av_mag": 0.0, "salt2_x1": np.nan, "salt2_c": np.nan}


def test_ia_peak_absolute_magnitude_and_shape(sn_model):
    """Hsiao Ia at low z: rest-frame B peak -19.3 (Vega) through sncosmo; rise ~19 d; Delta m15(B) ~ 1.1."""
    import sncosmo

    ia = sn_model.template("hsiao-subsampled")
    z = 0.02
    truth = dict(NO_EFFECTS, redshift=z, abs_mag=supernova.IA_ABS_MAG_B_VEGA + supernova.AB_MINUS_VEGA["bessellb"],
                 explosion_mjd=0.0)
    t = np.linspace(0, 60, 601)
    bessellb = sncosmo.get_bandpass("bessellb").shifted(1 + z)  # the rest-frame B band, observed
    mag_b = sn_model.light_curve(ia, truth, t, band=bessellb)
    dm = float(np.interp(z, sn_model._dm_z, sn_model._dm))
    peak = int(np.argmin(mag_b))
    # K-correction of a band shifted by (1 + z) in AB: -2.5 log10(1 + z) (Hogg et al. 2002)
    assert mag_b[peak] - dm + 2.5 * np.log10(1 + z) - supernova.AB_MINUS_VEGA["bessellb"] == pytest.approx(-19.3, abs=0.02)
    assert t[peak] / (1 + z) == pytest.approx(20.0, abs=1.5)          # Hsiao starts 20 d before B maximum
    i15 = np.searchsorted(t, t[peak] + 15 * (1 + z))
    assert 0.9 < mag_b[i15] - mag_b[peak] < 1.3                        # Delta m15(B), normal Ia
    g = sn_model.light_curve(ia, truth, t)
    assert np.isinf(sn_model.light_curve(ia, truth, [-1.0])).all()  # nothing before the explosion
    assert abs(g.min() - mag_b[peak]) < 0.5                            # g ~ B at low z


def test_time_dilation_and_stretch(sn_model):
    """Observed rise time, explosion to peak in the same rest-frame band, scales with (1 + z) x stretch."""
    import sncosmo

    ia = sn_model.template("hsiao-subsampled")
    t = np.linspace(0, 120, 4801)

    def rise(z, s):
        truth = dict(NO_EFFECTS, redshift=z, stretch=s, abs_mag=-19.4, explosion_mjd=0.0)
        band = sncosmo.get_bandpass("bessellb").shifted(1 + z)
        return t[np.argmin(sn_model.light_curve(ia, truth, t, band=band))]

    base = rise(0.05, 1.0)
    assert rise(0.05, 1.3) / base == pytest.approx(1.3, rel=0.01)
    assert rise(0.4, 1.0) / base == pytest.approx(1.4 / 1.05, rel=0.01)


def test_dust_only_dims(sn_model):
    ia = sn_model.template("hsiao-subsampled")
    t = np.linspace(5, 40, 8)
    clear = sn_model.light_curve(ia, dict(NO_EFFECTS, redshift=0.2, abs_mag=-19.4, explosion_mjd=0.0), t)
    dusty = sn_model.light_curve(ia, dict(NO_EFFECTS, redshift=0.2, abs_mag=-19.4, explosion_mjd=0.0, av_mag=1.0), t)
    assert (dusty - clear > 0.8).all() and (dusty - clear < 2.0).all()  # A_g(rest ~3900 A) ~ 1.4 A_V


def test_supernova_population(sn_model):
    """Every draw is detected; redshifts follow the depth (Ia seen farther than II); the parameters follow
    the HiTS choices (stretch, scale ~ N(1, 0.3), ln A_V ~ N(ln 0.1, 1))."""
    draws = _draws(sn_model, 250)
    for mjd, lim, mag, truth in draws:
        assert np.any(mag < lim)
        assert mjd[0] <= truth["explosion_mjd"] <= mjd[-1]
    z = np.array([d[3]["redshift"] for d in draws])
    ia = np.array([d[3]["subtype"] == "Ia" for d in draws])
    assert 0.1 < ia.mean() < 0.8 and np.median(z[ia]) > 0.2
    assert z.min() >= supernova.Z_MIN and z.max() < 1.5
    peak = np.array([d[2].min() for d in draws])
    assert 20.0 < np.median(peak) < 24.5
    av = np.array([d[3]["av_mag"] for d in draws])
    assert np.median(np.log(av)) == pytest.approx(np.log(0.1), abs=0.35)


def test_supernova_types_do_not_depend_on_the_redshift_cut():
    """Each template's redshifts stop where it can no longer be seen (to save draws); the detected mix of
    types and redshifts must be that of one common range where all are invisible. A template's share of
    the candidates is its events up to its own limit: choosing templates uniformly within a type (with the
    type weighted by its farthest template's events) gave Ia 0.31 / IIP 0.50 / IIL 0.19 against 0.40 /
    0.35 / 0.24 (500 detected SNe)."""
    from astropy.cosmology import Planck18

    model = supernova.SupernovaModel(None, depth_mag=25.0)
    assert model.template_p.sum() == pytest.approx(1.0)
    common = supernova.SupernovaModel(None, depth_mag=25.0)
    z = np.linspace(supernova.Z_MIN, 1.6, 400)  # beyond every template's own limit at this depth
    assert all(t.z_support[-1] < z[-1] for t in common.templates)
    dvdz = np.asarray(Planck18.differential_comoving_volume(z).value)
    weight = []
    for t in common.templates:
        d = supernova.volumetric_rate(t.sn_type, z) / (1 + z) * dvdz
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(z))])
        t.z_support, t.z_cdf = z, cdf / cdf[-1]
        weight.append(cdf[-1] / sum(u.sn_type == t.sn_type for u in common.templates))
    common._template_cdf = np.cumsum(weight) / np.sum(weight)
    common._flat_cdf = np.concatenate([t.z_cdf + i * supernova._Z_CDF_STEP for i, t in enumerate(common.templates)])
    common._flat_support = np.concatenate([t.z_support for t in common.templates])
    n = 400
    a, b = _draws(model, n, seed=5), _draws(common, n, seed=6)
    for kind in ("Ia", "IIP", "IIL"):
        pa, pb = (np.mean([d[3]["subtype"] == kind for d in draws]) for draws in (a, b))
        sigma = np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
        assert abs(pa - pb) < 3.5 * sigma, (kind, pa, pb, sigma)
    za, zb = (np.array([d[3]["redshift"] for d in draws]) for draws in (a, b))
    assert np.median(za) == pytest.approx(np.median(zb), rel=0.12)


def test_detection_and_window_rules():
    """SN/asteroid sequences start pre_alert_epochs before the first detection; others leave min_dates."""
    cfg = SimConfig()
    n = 30
    mjd = np.arange(n, dtype=float)
    lim = np.full(n, 23.0)
    cond = ObjectConditions(mjd=mjd, exp_time_s=np.full(n, 86.0), seeing_arcsec=np.ones(n), airmass=np.ones(n),
                            sky_adu=np.ones(n), zero_point=np.full(n, 25.0), limmag5=lim, mask=np.ones(n, bool),
                            gain=4.0, read_noise=7.0, saturation=6e4, field="f", ccd=1)
    mag = np.full(n, 25.0)
    mag[12:] = 22.0
    rng = np.random.default_rng(0)
    idx, alert = choose_window(rng, "supernova", mag, cond, cfg, 20)
    assert idx[0] == 12 - cfg.pre_alert_epochs and alert == cfg.pre_alert_epochs and len(idx) == 20
    mag[2:] = 22.0  # detected early: the sequence starts at the first epoch
    idx, alert = choose_window(rng, "asteroid", mag, cond, cfg, 20)
    assert idx[0] == 0 and alert == 2
    starts = [choose_window(rng, "rrlyrae", mag, cond, cfg, 20)[0][0] for _ in range(300)]
    assert min(starts) == 0 and max(starts) == n - cfg.min_dates


def _law_cdf(m, slope, m_cut, m_min, m_max):
    grid = np.linspace(m_min, m_max, 4001)
    pdf = 10 ** (slope * grid) * 0.5 * (1 - erf(grid - m_cut))
    cdf = np.cumsum(pdf)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return np.interp(m, grid, cdf)


@pytest.mark.parametrize("m_cut", [22.8, 21.5])
def test_star_magnitudes_follow_the_erf_cutoff_law(m_cut):
    """KS test of drawn magnitudes against 10^(slope m) (1 - erf(m - m_cut)) / 2 on [m_min, depth]."""
    cfg = SimConfig()
    cond = make_sampler().draw(np.random.default_rng(3))
    rng = np.random.default_rng(4)
    mags = np.array([_star_mag(rng, cond, cfg, m_cut=m_cut) for _ in range(3000)])
    lim = cond.limmag5[cond.mask]
    depth = lim.mean() + cfg.star_depth_nsigma * lim.std()
    res = stats.kstest(mags, lambda m: _law_cdf(m, cfg.star_count_slope_dex, m_cut, cfg.star_mag_min, depth))
    assert res.pvalue > 0.01
    # and the law is not trivially satisfied: the other cutoff is rejected
    other = 21.5 if m_cut == 22.8 else 22.8
    res_other = stats.kstest(mags, lambda m: _law_cdf(m, cfg.star_count_slope_dex, other, cfg.star_mag_min, depth))
    assert res_other.pvalue < 1e-6


class _SineModel:
    """A stand-in light-curve model: delta_mag = 0.3 sin(2 pi mjd / 1.7 d), drawing nothing."""

    def draw(self, rng):
        return {"period_d": 1.7, "_private": 0.0}

    def delta_mag(self, params, mjd):
        return 0.3 * np.sin(2 * np.pi * np.asarray(mjd) / params["period_d"])


PERIODIC = [("rrlyrae", "rrlyrae"), ("cepheid", "cepheid"), ("eclipsing_binary", "eclipsing")]


@pytest.mark.parametrize("cname, key", PERIODIC)
def test_periodic_class_adds_its_model_light_curve_to_the_mean(cname, key):
    """A periodic class's magnitude at each valid epoch is class_mean_mag + its model's delta_mag(params, MJD),
    inf elsewhere; the public parameters go to the truth, the private (underscore) ones do not."""
    cond = make_sampler().draw(np.random.default_rng(3))
    mag, truth = MODELS[cname](np.random.default_rng(0), cond, SimConfig(), {key: _SineModel()})
    v = cond.mask
    assert not v.all() and np.isinf(mag[~v]).all()
    np.testing.assert_allclose(mag[v], truth["class_mean_mag"] + 0.3 * np.sin(2 * np.pi * cond.mjd[v] / 1.7),
                               rtol=0, atol=1e-12)
    assert truth["period_d"] == 1.7 and "_private" not in truth


@pytest.mark.parametrize("cname, cut_key", [("rrlyrae", "rrlyrae_mag_cut"), ("cepheid", "star_mag_cut"),
                                            ("eclipsing_binary", "star_mag_cut"), ("nonvariable", "star_mag_cut")])
def test_each_star_class_uses_its_magnitude_cutoff(cname, cut_key):
    """KS test of a class's mean magnitudes against the erf-cutoff law with its m_cut (RR Lyrae 21.5, other stars
    22.8; Carrasco-Davis et al. 2019, sec. 2.2), and the other cutoff rejected."""
    cfg = SimConfig()
    cond = make_sampler().draw(np.random.default_rng(3))
    rng, models = np.random.default_rng(4), {key: _SineModel() for _, key in PERIODIC}
    mags = np.array([MODELS[cname](rng, cond, cfg, models)[1]["class_mean_mag"] for _ in range(1500)])
    lim = cond.limmag5[cond.mask]
    depth = lim.mean() + cfg.star_depth_nsigma * lim.std()
    pvalue = {m_cut: stats.kstest(mags, lambda m: _law_cdf(m, cfg.star_count_slope_dex, m_cut, cfg.star_mag_min,
                                                          depth)).pvalue for m_cut in (21.5, 22.8)}
    assert pvalue[getattr(cfg, cut_key)] > 0.01 and min(pvalue.values()) < 1e-6, pvalue


def test_real_templates_mode(templates_dir):
    """With the template directory: full Hsiao for Ia, SNANA/Pierel and Vincenzi SN II; SALT2.4 on request."""
    model = supernova.SupernovaModel(templates_dir, depth_mag=25.0)
    names = {t.name for t in model.templates}
    assert "hsiao" in names and {"snana-2004hx", "v19-2013fs-corr"} <= names
    draws = _draws(model, 60, seed=1)
    assert all(np.any(d[2] < d[1]) for d in draws)
    assert {d[3]["template"] for d in draws} & {"snana-2004hx", "snana-2005gi", "v19-2009n-corr", "v19-2013fs-corr",
                                                "v19-2009kr-corr", "snana-2006gq", "snana-2006jl", "snana-2006kv",
                                                "snana-2007lj"}
    salt2 = supernova.SupernovaModel(templates_dir, depth_mag=25.0, ia_model="salt2")
    for _, lim, mag, truth in _draws(salt2, 40, seed=2):
        assert np.any(mag < lim)
        if truth["template"] == "salt2":  # its own stretch and colour; no extra stretch, scale or dust
            assert np.isfinite(truth["salt2_x1"]) and truth["stretch"] == truth["flux_scale"] == 1.0 == 1 + truth["av_mag"]
        else:
            assert np.isnan(truth["salt2_x1"]) and truth["av_mag"] > 0
    ia = salt2.template("salt2")
    truth = dict(redshift=0.05, stretch=1.0, flux_scale=1.0, av_mag=0.0, salt2_x1=0.0, salt2_c=0.0,
                 abs_mag=-19.39, explosion_mjd=0.0)
    t = np.linspace(0, 60, 241)
    wide = salt2.light_curve(ia, dict(truth, salt2_x1=2.0), t)
    narrow = salt2.light_curve(ia, dict(truth, salt2_x1=-2.0), t)
    assert np.isfinite(wide).sum() > 100
    # larger x1: broader light curve (slower decline after peak)
    assert wide[-1] - wide.min() < narrow[-1] - narrow.min()


def test_salt2_needs_the_template_directory():
    with pytest.raises(ValueError, match="template directory"):
        supernova.SupernovaModel(None, depth_mag=25.0, ia_model="salt2")


def test_desg_and_speclite_decam_g_agree(templates_dir):
    """sncosmo's DES g and speclite's decam2014-g give the same Hsiao Ia magnitudes (<= 0.01 mag, z 0.05-0.5)."""
    spec = supernova.SupernovaModel(templates_dir, depth_mag=25.0)
    des = supernova.SupernovaModel(templates_dir, depth_mag=25.0, bandpass="desg")
    t = np.linspace(10, 40, 7)
    for z in (0.05, 0.2, 0.5):
        truth = dict(NO_EFFECTS, redshift=z, abs_mag=-19.4, explosion_mjd=0.0)
        a = spec.light_curve(spec.template("hsiao"), truth, t)
        b = des.light_curve(des.template("hsiao"), truth, t)
        assert np.abs(a - b).max() < 0.01


def test_bad_bandpass_is_a_clear_error():
    with pytest.raises(ValueError, match="bandpass"):
        supernova.SupernovaModel(None, depth_mag=25.0, bandpass="desg")
    with pytest.raises(ValueError, match="bandpass"):
        supernova.SupernovaModel(None, depth_mag=25.0, bandpass="sdss-g")


def test_tabulated_magnitude_law_matches_the_direct_inversion():
    from simulator.magnitudes import exp_erf_quantile, exp_erf_sample

    u = np.linspace(0.001, 0.999, 37)
    for m_max in (18.0, 22.3, 24.9):
        direct = exp_erf_quantile(u, 0.3, 21.5, 15.0, m_max)
        fast = np.array([exp_erf_sample(x, 0.3, 21.5, 15.0, m_max) for x in u])
        assert np.max(np.abs(fast - direct)) < 0.005
    with pytest.raises(ValueError, match="m_min < m_max"):
        exp_erf_sample(0.5, 0.3, 21.5, 15.0, 14.0)


def test_detection_bound_never_discards_a_detectable_supernova(sn_model):
    """The cheap bound that spares sncosmo calls (tabulated light curve, least dust extinction) may only
    discard candidates whose sncosmo light curve is below every 5-sigma limit."""
    sampler, rng = make_sampler(), np.random.default_rng(5)
    discarded = kept = 0
    while discarded < 150:
        c = sampler.draw(rng)
        mjd, lim = c.mjd[c.mask], c.limmag5[c.mask] + 1.0  # deeper than the survey: more near misses
        cand = sn_model._candidates(rng, 64, float(mjd[0]), float(mjd[-1]))
        for k in np.flatnonzero(cand["av_mag"] > 0.3)[:8]:  # dusty ones test the extinction term
            t = sn_model.templates[cand["template"][k]]
            truth = {key: float(cand[key][k]) for key in supernova.TRUTH_KEYS}
            detected = bool(np.any(sn_model.light_curve(t, truth, mjd) < lim))
            if not sn_model._may_be_detected(cand, k, mjd, lim):
                discarded += 1
                assert not detected, f"candidate {truth} was discarded but is detected"
            kept += detected
    assert kept >= 5  # the sample also holds detectable ones


def test_candidates_follow_each_templates_redshift_law(sn_model):
    """Candidates of all templates are drawn together (one interpolation over every template's table):
    each template's redshifts must still follow its own law and its own peak-magnitude curve."""
    from scipy import stats

    cand = sn_model._candidates(np.random.default_rng(9), 20000, 57000.0, 57100.0)
    checked = 0
    for i, t in enumerate(sn_model.templates):
        sel = cand["template"] == i
        if sel.sum() < 200:
            continue
        z = cand["redshift"][sel]
        assert t.z_support[0] <= z.min() and z.max() <= t.z_support[-1]
        assert stats.kstest(np.interp(z, t.z_support, t.z_cdf), "uniform").pvalue > 1e-3  # inverse-CDF draws
        peak = np.interp(z, t.z_grid, t.peak_mag_z)
        expected = peak + cand["abs_mag"][sel] + cand["dm"][sel] - 2.5 * np.log10(cand["flux_scale"][sel])
        np.testing.assert_allclose(cand["brightest"][sel], expected, atol=1e-9)
        checked += 1
    assert checked >= 3
