"""Eclipsing-binary model: light-curve physics and population statistics against published EB samples."""
import math

import numpy as np
import pytest
from scipy import stats

from simulator import eclipsing
from simulator.eclipsing import load_model

MODEL = load_model(None)
PUBLIC_KEYS = {"period_d", "amplitude_mag", "template", "subtype", "epoch_mjd"}


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(20190101)
    return [MODEL.draw(rng) for _ in range(3000)]


def _first(population, subtype, condition=lambda d: True):
    return next(d for d in population if d["subtype"] == subtype and condition(d))


def _phase_curve(params, n=20001):
    phase = np.linspace(0.0, 1.0, n)
    return phase, MODEL.delta_mag(params, params["epoch_mjd"] + phase * params["period_d"])


def test_interface_keys_and_types(population):
    for d in population[:50]:
        assert PUBLIC_KEYS <= set(d)
        assert all(k in PUBLIC_KEYS or k.startswith("_") for k in d)
        assert d["template"] == "two-star" and d["subtype"] in {"detached", "semidetached", "contact"}
        assert isinstance(d["period_d"], float) and isinstance(d["amplitude_mag"], float)
        assert 0.0 <= d["epoch_mjd"] < d["period_d"]
    assert MODEL.source == "geometric"
    assert isinstance(load_model("/no/such/templates"), eclipsing.Model)  # the argument is ignored


def test_periodic(population):
    t = 57000.0 + np.linspace(0.0, 30.0, 200)
    for d in population[:40]:
        np.testing.assert_allclose(MODEL.delta_mag(d, t + d["period_d"]), MODEL.delta_mag(d, t), atol=1e-7)
        np.testing.assert_allclose(MODEL.delta_mag(d, t + 7 * d["period_d"]), MODEL.delta_mag(d, t), atol=1e-7)


def test_primary_minimum_at_epoch_and_reference_is_maximum_light(population):
    for d in population[:60] + [x for x in population if x["_ecc"] > 0.1][:10]:
        phase, dm = _phase_curve(d)
        assert min(phase[np.argmax(dm)], 1.0 - phase[np.argmax(dm)]) < 2e-3  # deepest point at phase 0
        assert MODEL.delta_mag(d, np.array([d["epoch_mjd"]]))[0] == pytest.approx(d["amplitude_mag"], abs=1e-9)
        assert dm.max() == pytest.approx(d["amplitude_mag"], abs=1e-4)
        assert dm.min() > -1e-4  # referenced to maximum light (found on a 256-point grid)
        assert dm.min() < 1e-3


def test_circular_secondary_at_half_phase_and_shallower(population):
    circular = [d for d in population if d["_ecc"] == 0.0 and d["_depth2_mag"] > 0.01][:40]
    assert len(circular) == 40
    for d in circular:
        phase, dm = _phase_curve(d)
        window = (phase > 0.25) & (phase < 0.75)
        assert phase[window][np.argmax(dm[window])] == pytest.approx(0.5, abs=2e-3)
        assert dm[window].max() == pytest.approx(d["_depth2_mag"], abs=1e-6)
        assert d["_depth2_mag"] <= d["amplitude_mag"]


def test_eccentric_secondary_displaced_by_e_cos_omega(population):
    ecc = [d for d in population if d["_ecc"] > 0.15 and d["_depth2_mag"] > 0.05][:5]
    assert ecc
    for d in ecc:
        phase, dm = _phase_curve(d, 40001)
        window = (phase > 0.05) & (phase < 0.95)
        offset = phase[window][np.argmax(dm[window])] - 0.5
        first_order = 2.0 / math.pi * d["_ecc"] * math.cos(d["_omega_rad"])  # Sterne (1940), i ~ 90 deg
        assert abs(offset) == pytest.approx(abs(first_order), rel=0.25, abs=2e-3)


def test_eclipse_width_matches_geometry(population):
    """Without tides and reflection the light is flat outside eclipses, so the eclipse spans exactly the
    phases where the disks overlap: sin(pi w) = sqrt((r1 + r2)^2 - cos^2 i) / sin i for a circular orbit."""
    for d in [x for x in population if x["subtype"] == "detached" and x["_ecc"] == 0.0][:8]:
        flat = {**d, "_ellip1": 0.0, "_ellip2": 0.0, "_refl1": 0.0, "_refl2": 0.0, "_flux_max": 1.0}
        phase, dm = _phase_curve(flat, 100001)
        primary = (dm > 1e-12) & ((phase < 0.25) | (phase > 0.75))
        measured = primary.sum() / len(phase)
        cos_i, r_sum = d["_cos_incl"], d["_r1"] + d["_r2"]
        expected = math.asin(math.sqrt(r_sum ** 2 - cos_i ** 2) / math.sqrt(1 - cos_i ** 2)) / math.pi
        assert measured == pytest.approx(expected, abs=3e-5)
        assert d["_eclipse_width_phase"] == pytest.approx(expected, rel=1e-9)


def test_contact_light_curve_has_two_maxima_and_minima_at_conjunctions(population):
    for d in [x for x in population if x["subtype"] == "contact"][:30]:
        phase, dm = _phase_curve(d, 2001)
        phase, dm = phase[:-1], dm[:-1]  # one period; neighbours wrap around
        before, after = np.roll(dm, 1), np.roll(dm, -1)
        brightest = np.flatnonzero((dm < before) & (dm <= after))
        faintest = np.flatnonzero((dm > before) & (dm >= after))
        assert len(brightest) == 2 and len(faintest) == 2
        assert np.allclose(np.sort(phase[brightest]), [0.25, 0.75], atol=0.03)
        assert np.allclose(np.sort(phase[faintest]), [0.0, 0.5], atol=1e-3)
        assert np.mean(dm < 0.03 * d["amplitude_mag"]) < 0.3  # rounded maxima, no flat stretch (cf. detached)


def test_delta_mag_is_vectorised():
    d = MODEL.draw(np.random.default_rng(3))
    mjd = 57070.0 + np.arange(15.0).reshape(3, 5) * 0.37
    out = MODEL.delta_mag(d, mjd)
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out.ravel(), [MODEL.delta_mag(d, np.array([t]))[0] for t in mjd.ravel()], atol=1e-12)
    assert MODEL.delta_mag(d, np.float64(57070.1)).shape == ()


def test_deterministic_given_rng():
    a = [MODEL.draw(np.random.default_rng(11)) for _ in range(3)]
    b = [MODEL.draw(np.random.default_rng(11)) for _ in range(3)]
    assert a == b
    assert MODEL.draw(np.random.default_rng(12)) != a[0]


def test_phases_uniform(population):
    """epoch_mjd / period_d, the phase at MJD 0, is uniform on [0, 1)."""
    pvalue = stats.kstest([d["epoch_mjd"] / d["period_d"] for d in population[:500]], "uniform").pvalue
    assert pvalue > 1e-3, pvalue


def test_semimajor_axes_follow_keplers_third_law(population):
    """a^3 = G (M1 + M2) P^2 / (4 pi^2) with the IAU nominal GM_sun and R_sun (a = 4.2084 Rsun at 1 Msun, 1 d),
    for each subtype; a star's radius in units of a, times a, is its radius in Rsun (main sequence: detached)."""
    from astropy import constants

    for subtype in eclipsing._SUBTYPE_DRAWS:
        for d in [d for d in population if d["subtype"] == subtype][:20]:
            gm = constants.GM_sun.value * (d["_mass1_msun"] + d["_mass2_msun"])
            a_m = (gm * (d["period_d"] * 86400.0) ** 2 / (4 * math.pi ** 2)) ** (1 / 3)
            assert d["_a_rsun"] == pytest.approx(a_m / constants.R_sun.value, rel=1e-4)
    d = _first(population, "detached")
    assert d["_r1"] * d["_a_rsun"] == pytest.approx(eclipsing._ms_radius_rsun(d["_mass1_msun"]), rel=1e-9)


def test_population_subtypes_and_detectability(population):
    subtype = np.array([d["subtype"] for d in population])
    # contact fraction of a high-latitude ground survey (Catalina: ~0.87, Drake et al. 2014)
    assert np.mean(subtype == "contact") == pytest.approx(eclipsing.CONTACT_FRACTION, abs=0.02)
    assert 0.005 < np.mean(subtype == "semidetached") < 0.05
    assert min(d["amplitude_mag"] for d in population) >= eclipsing.MIN_PRIMARY_DEPTH_MAG


def test_population_periods(population):
    period = {s: np.array([d["period_d"] for d in population if d["subtype"] == s]) for s in eclipsing._SUBTYPE_DRAWS}
    contact = period["contact"]
    assert contact.min() >= 0.22  # short-period limit of contact binaries (Rucinski 1992, 2007)
    assert 0.3 < np.median(contact) < 0.4  # EW peak near 0.35 d (ZTF, Gaia DR3)
    assert np.quantile(contact, 0.95) < 0.7
    detached = period["detached"]
    assert 1.0 < np.median(detached) < 4.0  # detached EBs: days, with a tail to tens of days
    assert 0.1 < np.mean(detached > 10.0) < 0.35 and detached.max() > 30.0
    assert 1.5 < np.median(period["semidetached"]) < 4.0  # Algols: a few days
    all_logp = np.log10(np.concatenate(list(period.values())))
    hist, edges = np.histogram(all_logp, bins=np.arange(-0.7, 2.01, 0.1))
    assert -0.6 <= edges[np.argmax(hist)] <= -0.3  # the contact peak dominates log P


def test_population_depths_and_durations(population):
    noncontact = [d for d in population if d["subtype"] != "contact"]
    depth = np.array([d["amplitude_mag"] for d in noncontact])
    assert 0.2 < np.median(depth) < 0.5  # most detached EBs are shallow
    assert 0.01 < np.mean(depth > 1.0) < 0.2  # some (mostly Algols) exceed 1 mag
    detached = [d for d in noncontact if d["subtype"] == "detached"]
    width = np.array([d["_eclipse_width_phase"] for d in detached])
    period = np.array([d["period_d"] for d in detached])
    assert np.median(width) < 0.08 and np.median(width[period > 5.0]) < 0.03  # eclipses last a few % of P
    ratio = np.array([d["_depth2_mag"] / d["amplitude_mag"] for d in detached])
    assert np.median(ratio) < 0.7  # unequal stars: shallower secondary
    flat = [np.mean(_phase_curve(d, 2001)[1] < 0.03 * d["amplitude_mag"]) for d in detached[:50]]
    assert np.median(flat) > 0.5  # flat outside eclipses, unlike contact systems
    contact = [d for d in population if d["subtype"] == "contact"]
    amplitude = np.array([d["amplitude_mag"] for d in contact])
    assert 0.25 < np.median(amplitude) < 0.5  # W UMa amplitudes: typically 0.2-0.6 mag
    assert np.quantile(amplitude, 0.99) < 0.9 and amplitude.max() < 1.2  # rarely above ~0.8 mag
    assert np.median([d["_depth2_mag"] / d["amplitude_mag"] for d in contact]) > 0.8  # near-equal minima
    assert np.median([d["_eclipse_width_phase"] for d in contact]) > 0.2
