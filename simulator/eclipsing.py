"""Eclipsing binaries in DECam g: a two-star geometric light-curve model with a physically drawn population.

Why: the CatSim eclipsing-binary templates used by Carrasco-Davis et al. (2019) are not available, and the
paper blames the EB light-curve model for the weak real-data recall of the class. Here every light curve
follows from a drawn binary (masses, radii, temperatures, orbit), so depths, durations, ellipsoidal and
reflection amplitudes are consistent with one another and with published EB populations.

Light curve (flux of the two stars, positions from Kepler's equation, units of the semi-major axis a):
  - eclipses: overlap of two linearly limb-darkened disks (radii R/a): exact circle-circle overlap areas of 24
    annuli of the occulted disk times their mean intensities; sky-projected separation
    rho = d sqrt(1 - sin^2(nu + omega) sin^2 i) (e.g. Winn 2010, arXiv:1001.2010, eqs. 5-7); the primary
    minimum is the deeper of the two conjunctions;
  - ellipsoidal variation, leading (P2) tidal term: dF/F = -(2/3) alpha2 (M_other/M) (R/d)^3 (3 cos^2 psi - 1),
    which for circular orbits is Morris (1985, ApJ 295, 143) dF/F = -alpha2 q (R/a)^3 sin^2 i cos(2 theta),
    alpha2 = 0.15 (15 + u)(1 + tau)/(3 - u), u the linear limb darkening and tau the g-band gravity darkening
    tau = (beta/4) x e^x/(e^x - 1), x = hc/(lambda k T), with beta = 0.32 for convective envelopes (Lucy 1967,
    ZAp 65, 89) and 1 for radiative ones (von Zeipel 1924), switching at 7200 K;
  - reflection: each star reflects its companion's g flux as a Lambert sphere, F_refl/F_source = A_g (R/d)^2
    Phi(alpha), Phi = (sin alpha + (pi - alpha) cos alpha)/pi, geometric albedo A_g = 2/3 of the bolometric
    albedo (0.5 convective, Rucinski 1969, AcA 19, 245; 1.0 radiative);
  - g-band surface brightness: photon-weighted blackbody over 400-550 nm (the DECam g passband, Flaugher et
    al. 2015, AJ 150, 150); linear limb darkening u(T) from the SDSS-g values of Claret & Bloemen (2011,
    A&A 529, A75) at log g = 4.5, rounded.
Contact systems use the same machinery with volume-equivalent spheres filling their Roche lobes: spheres give
the eclipses, the tidal term the continuous W UMa modulation. W UMa itself (q = 0.48, i ~ 86 deg) comes out at
0.72 mag against 0.73 observed in V, but with minima 0.16 mag apart where the real ones are nearly equal, and
with flatter maxima than the near-cos(4 pi phase) real curves: spheres are the approximation to watch here.

Population (fractions and distributions are module constants below, each with its source):
  - subtype: contact (W UMa, EW) in 87% of EBs, as in the high-latitude ground survey closest to HiTS, the
    Catalina survey (Drake et al. 2014, ApJS 213, 9: ~31,000 EW against ~4,700 EA among ~47,000 periodic
    variables; ZTF: ~370,000 EW against ~50,000 EA, Chen et al. 2020, ApJS 249, 18); semi-detached (Algols)
    are 11% of the rest, the Kepler detached : semi-detached ratio 1261 : 152 (Prsa et al. 2011, AJ 141, 83).
    Brighter or space samples have fewer contact systems (Kepler: 469 overcontact of 1879; ASAS: about half);
  - detached: primary mass from the Kroupa (2001, MNRAS 322, 231) IMF (slope 2.3) on 0.5-2 Msun; mass ratio
    uniform on [0.1 Msun / M1, 1] plus a 30% twin excess at q > 0.95 (Moe & Di Stefano 2017, ApJS 230, 15,
    solar-type primaries, log P < 1); radii and temperatures from the main sequence (rounded values of
    Pecaut & Mamajek 2013, ApJS 208, 9, online table); period from the log-normal of Raghavan et al. (2010,
    ApJS 190, 1; mean log P = 5.03, sigma = 2.28, P in days) weighted by the eclipse probability (R1+R2)/a,
    whose P^(-2/3) factor turns it into another log-normal (mean -2.95), on 0.4-100 d; eccentricity zero below
    the circularisation period 10 d (Meibom & Mathieu 2005, ApJ 620, 970), above it f(e) ~ e^eta,
    eta = 0.6 - 0.7/(log P - 0.5), up to e_max = 1 - (P/2 d)^(-2/3) (Moe & Di Stefano 2017, eqs. 3 and 18);
    both stars must lie inside their Roche lobes (Eggleton 1983, ApJ 268, 368) at periastron;
  - contact: period log-normal around 0.35 d (sigma 0.12 dex), cut at 0.22 d (the short-period limit of
    Rucinski 1992, AJ 103, 960; 2007, MNRAS 382, 393) and 1 d; the EW period peak near 0.3-0.4 d is seen
    in ZTF (Chen et al. 2020) and Gaia DR3 (Mowlavi et al. 2023, A&A 674, A16); mass ratio a truncated normal
    (0.3 +- 0.2 on 0.07-1), as in catalogues of field contact binaries (Pribulla et al. 2003, CoSka 33, 38);
    both stars fill their Roche lobes (fill-out 0); the primary mass follows from Kepler's third law with a
    main-sequence primary filling its lobe, which gives the observed period-colour trend (median 5100 K at
    0.25 d, 6000 K at 0.35 d, 7300 K at 0.5 d: somewhat hot at long periods, the primaries being taken
    unevolved); T2/T1 in 0.93-1.03 (W UMa components share an envelope);
  - semi-detached: gainer mass from the IMF on 1.2-3 Msun, q in 0.1-0.5 (after mass reversal), period
    log-normal around 2.5 d (sigma 0.25 dex, 0.6-15 d), the donor filling its Roche lobe at 4000-6000 K (a G-K
    subgiant), circular orbit; typical of Algols (Budding et al. 2004, A&A 417, 263);
  - inclination isotropic within the eclipsing range (cos i < (R1+R2)/rho_conjunction);
  - a system counts as an EB only if its primary minimum is at least MIN_PRIMARY_DEPTH_MAG deep (0.1 mag:
    a few times the HiTS per-epoch error at g ~ 21-22, Forster et al. 2016, ApJ 832, 155); shallower draws
    are redrawn within the subtype, so the subtype fractions stay as above.

Magnitudes: delta_mag is the g magnitude minus the maximum-light magnitude (the brightest point of the orbit,
found on a 256-point phase grid), hence >= 0 up to ~1e-5 mag of grid error. amplitude_mag is the depth of the
primary minimum below maximum light, i.e. the peak-to-peak g amplitude.

At the HiTS cadence (~25 epochs over ~1 week) most detached systems with P of days show no eclipse in a
sequence (eclipses last a few % of the period); that is physical, and whether such an object is kept as a
labelled EB is for the detection rule, not this model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri

# --- subtype fractions -----------------------------------------------------------------------------------
CONTACT_FRACTION = 0.87  # Catalina: ~31,000 EW / (EW + ~4,700 EA) (Drake et al. 2014); ZTF: 0.88 (Chen et al. 2020)
SEMIDETACHED_SHARE_OF_NONCONTACT = 0.11  # Kepler: 152 / (1261 + 152) (Prsa et al. 2011)
MIN_PRIMARY_DEPTH_MAG = 0.1  # detectability: a few times the HiTS per-epoch error at g ~ 21-22

# --- detached population ---------------------------------------------------------------------------------
DETACHED_MASS1_RANGE_MSUN = (0.5, 2.0)
IMF_SLOPE = 2.3  # dN/dM ~ M^-2.3 above 0.5 Msun (Kroupa 2001)
MIN_MASS_MSUN = 0.1  # hydrogen-burning limit: the lightest companion
TWIN_FRACTION = 0.3  # excess of q > 0.95 (Moe & Di Stefano 2017, solar-type, log P < 1)
TWIN_Q_MIN = 0.95
RAGHAVAN_LOGP_MEAN = 5.03  # log10(P / d) of solar-type binaries (Raghavan et al. 2010)
RAGHAVAN_LOGP_SIGMA = 2.28
DETACHED_PERIOD_RANGE_D = (0.4, 100.0)
CIRCULARISATION_PERIOD_D = 10.0  # Meibom & Mathieu 2005: ~10 d for Gyr-old populations

# --- contact (W UMa) population --------------------------------------------------------------------------
CONTACT_LOGP_MEAN = math.log10(0.35)
CONTACT_LOGP_SIGMA = 0.12
CONTACT_PERIOD_RANGE_D = (0.22, 1.0)  # short-period limit (Rucinski 1992, 2007)
CONTACT_Q_MEAN, CONTACT_Q_SIGMA, CONTACT_Q_RANGE = 0.3, 0.2, (0.07, 1.0)
CONTACT_TEFF_RATIO_RANGE = (0.93, 1.03)

# --- semi-detached (Algol) population --------------------------------------------------------------------
ALGOL_MASS1_RANGE_MSUN = (1.2, 3.0)
ALGOL_Q_RANGE = (0.1, 0.5)
ALGOL_LOGP_MEAN = math.log10(2.5)
ALGOL_LOGP_SIGMA = 0.25
ALGOL_PERIOD_RANGE_D = (0.6, 15.0)
ALGOL_DONOR_TEFF_RANGE_K = (4000.0, 6000.0)

# --- stellar physics -------------------------------------------------------------------------------------
# Main-sequence dwarfs M6.5V..B8V, rounded from Pecaut & Mamajek (2013) and its online update.
_MS_MASS_MSUN = np.array([0.10, 0.16, 0.23, 0.44, 0.57, 0.70, 0.88, 1.00, 1.10, 1.33, 1.61, 1.86, 2.18, 2.75, 3.38])
_MS_RADIUS_RSUN = np.array([0.13, 0.20, 0.27, 0.44, 0.59, 0.72, 0.85, 1.00, 1.12, 1.40, 1.60, 1.75, 2.00, 2.30, 2.60])
_MS_TEFF_K = np.array([2800, 3060, 3210, 3560, 3850, 4440, 5270, 5770, 5930, 6510, 7220, 8180, 9700, 10700, 12500.0])
# Linear limb darkening in SDSS g at log g = 4.5, rounded from Claret & Bloemen (2011).
_LD_TEFF_K = np.array([3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 15000.0])
_LD_U_G = np.array([0.80, 0.85, 0.78, 0.68, 0.60, 0.55, 0.47, 0.38])
RADIATIVE_TEFF_K = 7200.0  # above: radiative envelope (von Zeipel beta = 1, albedo 1)
G_BAND_NM = (400.0, 550.0)  # DECam g (Flaugher et al. 2015)
_HC_OVER_K_NM_K = 1.438777e7  # h c / k in nm K
_KEPLER_RSUN = 4.2084  # a / Rsun = 4.2084 (M / Msun)^(1/3) (P / d)^(2/3)

_N_ANNULI = 24  # annuli of the occulted disk: exact overlap areas, ring-averaged limb darkening
_N_REFERENCE_PHASES = 256  # phase grid on which maximum light is found
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _ms_radius_rsun(mass_msun: float) -> float:
    return float(np.exp(np.interp(math.log(mass_msun), np.log(_MS_MASS_MSUN), np.log(_MS_RADIUS_RSUN))))


def _ms_teff_k(mass_msun: float) -> float:
    return float(np.exp(np.interp(math.log(mass_msun), np.log(_MS_MASS_MSUN), np.log(_MS_TEFF_K))))


def _roche_lobe_fraction(q: float) -> float:
    """Volume-equivalent Roche-lobe radius / a of a star with mass ratio q = M_self / M_other (Eggleton 1983)."""
    q23 = q ** (2.0 / 3.0)
    return 0.49 * q23 / (0.6 * q23 + math.log1p(q ** (1.0 / 3.0)))


def _semimajor_axis_rsun(mass_total_msun: float, period_d: float) -> float:
    """Kepler's third law."""
    return _KEPLER_RSUN * mass_total_msun ** (1.0 / 3.0) * period_d ** (2.0 / 3.0)


def _g_surface_brightness(teff_k: float) -> float:
    """Photon-weighted blackbody intensity over the g passband (arbitrary units; only ratios are used)."""
    lo, hi = G_BAND_NM
    lam_nm = 0.5 * (hi + lo) + 0.5 * (hi - lo) * _GL_NODES
    return float(np.sum(_GL_WEIGHTS * lam_nm ** -4.0 / np.expm1(_HC_OVER_K_NM_K / (lam_nm * teff_k))))


def _limb_darkening_g(teff_k: float) -> float:
    return float(np.interp(teff_k, _LD_TEFF_K, _LD_U_G))


def _ellipsoidal_alpha(teff_k: float, u: float) -> float:
    """Morris (1985) alpha2 with the g-band gravity-darkening coefficient of a convective or radiative star."""
    beta = 1.0 if teff_k >= RADIATIVE_TEFF_K else 0.32
    x = _HC_OVER_K_NM_K / (0.5 * sum(G_BAND_NM) * teff_k)
    tau = 0.25 * beta * x / -math.expm1(-x)
    return 0.15 * (15.0 + u) * (1.0 + tau) / (3.0 - u)


def _geometric_albedo(teff_k: float) -> float:
    return (2.0 / 3.0) * (1.0 if teff_k >= RADIATIVE_TEFF_K else 0.5)


def _truncated_normal(rng: np.random.Generator, mean: float, sigma: float, lo: float, hi: float) -> float:
    """One draw by inverting the normal CDF between the bounds."""
    c_lo, c_hi = ndtr((lo - mean) / sigma), ndtr((hi - mean) / sigma)
    return float(mean + sigma * ndtri(c_lo + (c_hi - c_lo) * rng.random()))


def _power_law(rng: np.random.Generator, slope: float, lo: float, hi: float) -> float:
    """One draw from dN/dx ~ x^-slope on [lo, hi] (slope != 1)."""
    k = 1.0 - slope
    return float((lo ** k + rng.random() * (hi ** k - lo ** k)) ** (1.0 / k))


def _eccentric_anomaly(mean_anomaly: np.ndarray, ecc: float) -> np.ndarray:
    """Kepler's equation M = E - e sin E by Newton's method from Danby's starting value."""
    ecc_anomaly = mean_anomaly + 0.85 * ecc * np.sign(np.sin(mean_anomaly))
    for _ in range(50):
        step = (ecc_anomaly - ecc * np.sin(ecc_anomaly) - mean_anomaly) / (1.0 - ecc * np.cos(ecc_anomaly))
        ecc_anomaly = ecc_anomaly - step
        if np.max(np.abs(step), initial=0.0) < 1e-12:
            break
    return ecc_anomaly


def _mean_anomaly_of_true(true_anomaly: float, ecc: float) -> float:
    ecc_anomaly = 2.0 * math.atan2(math.sqrt(1.0 - ecc) * math.sin(0.5 * true_anomaly),
                                   math.sqrt(1.0 + ecc) * math.cos(0.5 * true_anomaly))
    return (ecc_anomaly - ecc * math.sin(ecc_anomaly)) % (2.0 * math.pi)


_RING_EDGES = np.arange(1, _N_ANNULI + 1) / _N_ANNULI  # outer radii of the annuli of a unit disk


def _ring_overlap_areas(radius_ratio: np.ndarray, sep: np.ndarray) -> np.ndarray:
    """Area of each annulus of a unit disk covered by disks of radii `radius_ratio` at centre separations
    `sep` (both (n,), units of the occulted radius): differences of exact circle-circle overlap areas, (n, N)."""
    r, p = _RING_EDGES, radius_ratio[:, None]
    z = np.maximum(sep, 1e-12)[:, None]
    z2, r2, p2 = z * z, r * r, p * p
    cos_r = np.minimum(np.maximum((z2 + r2 - p2) / (2.0 * z * r), -1.0), 1.0)
    cos_p = np.minimum(np.maximum((z2 + p2 - r2) / (2.0 * z * p), -1.0), 1.0)
    kite = (-z + r + p) * (z + r - p) * (z - r + p) * (z + r + p)
    overlap = r2 * np.arccos(cos_r) + p2 * np.arccos(cos_p) - 0.5 * np.sqrt(np.maximum(kite, 0.0))
    overlap[:, 1:] -= overlap[:, :-1].copy()
    return overlap


@lru_cache(maxsize=4096)
def _ring_intensities(u: float) -> np.ndarray:
    """Mean intensity of each annulus under linear limb darkening I = 1 - u (1 - mu), normalised so that the
    whole disk sums to 1 (exact ring averages of the cumulative flux pi [(1-u) r^2 + (2u/3)(1 - (1-r^2)^1.5)])."""
    r2 = np.r_[0.0, _RING_EDGES] ** 2
    cumulative = (1.0 - u) * r2 + (2.0 * u / 3.0) * (1.0 - (1.0 - r2) ** 1.5)
    return np.diff(cumulative) / np.diff(r2) / (math.pi * (1.0 - u / 3.0))


def _lambert_phase(cos_alpha: np.ndarray) -> np.ndarray:
    """Lambert-sphere phase function (sin a + (pi - a) cos a) / pi at phase angle a (1 at full phase)."""
    return (np.sqrt(1.0 - cos_alpha * cos_alpha) + (math.pi - np.arccos(cos_alpha)) * cos_alpha) / math.pi


def _flux(p: dict, mean_anomaly: np.ndarray) -> np.ndarray:
    """Total g flux (L1 + L2 = 1 apart from tides and reflection) at the given mean anomalies."""
    ecc = p["_ecc"]
    if ecc == 0.0:
        true_anomaly, inv_d = mean_anomaly, np.ones_like(mean_anomaly)
    else:
        ecc_anomaly = _eccentric_anomaly(np.mod(mean_anomaly, 2.0 * math.pi), ecc)
        true_anomaly = 2.0 * np.arctan2(math.sqrt(1.0 + ecc) * np.sin(0.5 * ecc_anomaly),
                                        math.sqrt(1.0 - ecc) * np.cos(0.5 * ecc_anomaly))
        inv_d = 1.0 / (1.0 - ecc * np.cos(ecc_anomaly))
    cos_i = p["_cos_incl"]
    # line-of-sight component of the unit vector from star 1 to star 2 (> 0: star 2 in front)
    n_z = np.sin(true_anomaly + p["_omega_rad"]) * math.sqrt(1.0 - cos_i * cos_i)
    rho = np.sqrt(1.0 - n_z * n_z) / inv_d
    tide = inv_d ** 3 * (3.0 * n_z * n_z - 1.0)
    own1, own2 = p["_lum1"] * (1.0 - p["_ellip1"] * tide), p["_lum2"] * (1.0 - p["_ellip2"] * tide)
    refl1 = p["_refl1"] * inv_d ** 2 * _lambert_phase(n_z)
    refl2 = p["_refl2"] * inv_d ** 2 * _lambert_phase(-n_z)
    flux = own1 + own2 + refl1 + refl2
    r1, r2 = p["_r1"], p["_r2"]
    eclipsed = np.flatnonzero(rho < r1 + r2)
    if eclipsed.size:
        # the occulted star loses its own light with its limb darkening, and its reflected light with the
        # I ~ mu profile of a Lambert sphere near full phase (reflection peaks where the companion covers it)
        star1_behind = n_z[eclipsed] > 0.0
        radius = np.where(star1_behind, r1, r2)
        areas = _ring_overlap_areas(np.where(star1_behind, r2, r1) / radius, rho[eclipsed] / radius)
        own = np.where(star1_behind, own1[eclipsed] * (areas @ _ring_intensities(p["_ld1"])),
                       own2[eclipsed] * (areas @ _ring_intensities(p["_ld2"])))
        refl = np.where(star1_behind, refl1[eclipsed], refl2[eclipsed]) * (areas @ _ring_intensities(1.0))
        flux[eclipsed] -= own + refl
    return flux


@dataclass(frozen=True)
class _System:
    """A drawn binary: masses, main-sequence or Roche radii (units of a), temperatures and orbit."""
    subtype: str
    period_d: float
    mass1_msun: float
    mass2_msun: float
    a_rsun: float
    r1: float
    r2: float
    teff1_k: float
    teff2_k: float
    ecc: float
    omega_rad: float
    cos_incl: float


def _detached(rng: np.random.Generator) -> _System:
    """Main-sequence pair inside its Roche lobes; eclipse probability folded into the period and mass draws."""
    m_lo, m_hi = DETACHED_MASS1_RANGE_MSUN
    # (R1 + R2) / (M1 + M2)^(1/3) grows with mass; its maximum (twins at m_hi) bounds the rejection weight
    weight_max = 2.0 ** (2.0 / 3.0) * _ms_radius_rsun(m_hi) / m_hi ** (1.0 / 3.0)
    logp_mean = RAGHAVAN_LOGP_MEAN - (2.0 / 3.0) * math.log(10.0) * RAGHAVAN_LOGP_SIGMA ** 2
    logp_lo, logp_hi = (math.log10(p) for p in DETACHED_PERIOD_RANGE_D)
    while True:
        m1 = _power_law(rng, IMF_SLOPE, m_lo, m_hi)
        q_lo = MIN_MASS_MSUN / m1
        q = rng.uniform(TWIN_Q_MIN, 1.0) if rng.random() < TWIN_FRACTION else rng.uniform(q_lo, 1.0)
        m2 = q * m1
        rad1, rad2 = _ms_radius_rsun(m1), _ms_radius_rsun(m2)
        if rng.random() * weight_max > (rad1 + rad2) / (m1 + m2) ** (1.0 / 3.0):
            continue
        period_d = 10.0 ** _truncated_normal(rng, logp_mean, RAGHAVAN_LOGP_SIGMA, logp_lo, logp_hi)
        ecc = 0.0
        if period_d > CIRCULARISATION_PERIOD_D:
            logp = math.log10(period_d)
            eta = 0.6 - 0.7 / (logp - 0.5)
            ecc = (1.0 - (period_d / 2.0) ** (-2.0 / 3.0)) * rng.random() ** (1.0 / (1.0 + eta))
        omega = rng.uniform(0.0, 2.0 * math.pi)
        a_rsun = _semimajor_axis_rsun(m1 + m2, period_d)
        r1, r2 = rad1 / a_rsun, rad2 / a_rsun
        if r1 >= _roche_lobe_fraction(1.0 / q) * (1.0 - ecc) or r2 >= _roche_lobe_fraction(q) * (1.0 - ecc):
            continue
        rho_conj_min = (1.0 - ecc * ecc) / (1.0 + ecc * abs(math.sin(omega)))
        cos_incl = rng.uniform(0.0, min(1.0, (r1 + r2) / rho_conj_min))
        return _System("detached", period_d, m1, m2, a_rsun, r1, r2, _ms_teff_k(m1), _ms_teff_k(m2),
                       ecc, omega, cos_incl)


def _contact(rng: np.random.Generator) -> _System:
    """W UMa pair filling its Roche lobes; the primary mass is the main-sequence mass whose radius fills the
    lobe at the drawn period (Kepler's third law), which sets its temperature."""
    logp_lo, logp_hi = (math.log10(p) for p in CONTACT_PERIOD_RANGE_D)
    period_d = 10.0 ** _truncated_normal(rng, CONTACT_LOGP_MEAN, CONTACT_LOGP_SIGMA, logp_lo, logp_hi)
    q = _truncated_normal(rng, CONTACT_Q_MEAN, CONTACT_Q_SIGMA, *CONTACT_Q_RANGE)
    r1, r2 = _roche_lobe_fraction(1.0 / q), _roche_lobe_fraction(q)
    # R_MS(M1) / M1^(1/3) = r1 * 4.2084 (1 + q)^(1/3) P^(2/3), monotonic in M1
    target = r1 * _KEPLER_RSUN * (1.0 + q) ** (1.0 / 3.0) * period_d ** (2.0 / 3.0)
    table = np.log(_MS_RADIUS_RSUN / _MS_MASS_MSUN ** (1.0 / 3.0))
    m1 = float(np.exp(np.interp(math.log(target), table, np.log(_MS_MASS_MSUN))))
    teff1 = _ms_teff_k(m1)
    teff2 = teff1 * rng.uniform(*CONTACT_TEFF_RATIO_RANGE)
    cos_incl = rng.uniform(0.0, r1 + r2)
    return _System("contact", period_d, m1, q * m1, _semimajor_axis_rsun(m1 * (1.0 + q), period_d), r1, r2,
                   teff1, teff2, 0.0, math.pi / 2.0, cos_incl)


def _semidetached(rng: np.random.Generator) -> _System:
    """Algol: main-sequence gainer inside its lobe, cool subgiant donor filling its lobe, circular orbit."""
    logp_lo, logp_hi = (math.log10(p) for p in ALGOL_PERIOD_RANGE_D)
    while True:
        m1 = _power_law(rng, IMF_SLOPE, *ALGOL_MASS1_RANGE_MSUN)
        q = rng.uniform(*ALGOL_Q_RANGE)
        period_d = 10.0 ** _truncated_normal(rng, ALGOL_LOGP_MEAN, ALGOL_LOGP_SIGMA, logp_lo, logp_hi)
        a_rsun = _semimajor_axis_rsun(m1 * (1.0 + q), period_d)
        r1, r2 = _ms_radius_rsun(m1) / a_rsun, _roche_lobe_fraction(q)
        if r1 >= _roche_lobe_fraction(1.0 / q):
            continue
        teff1 = _ms_teff_k(m1)
        t_lo, t_hi = ALGOL_DONOR_TEFF_RANGE_K
        teff2 = rng.uniform(t_lo, min(t_hi, teff1 - 500.0))
        cos_incl = rng.uniform(0.0, r1 + r2)
        return _System("semidetached", period_d, m1, q * m1, a_rsun, r1, r2, teff1, teff2, 0.0, math.pi / 2.0,
                       cos_incl)


_SUBTYPE_DRAWS = {"detached": _detached, "semidetached": _semidetached, "contact": _contact}


def _light_curve_params(s: _System) -> dict | None:
    """Band luminosities, tidal and reflection coefficients, the primary minimum and maximum light; None when
    the primary minimum is shallower than MIN_PRIMARY_DEPTH_MAG (not a detectable EB)."""
    ld1, ld2 = _limb_darkening_g(s.teff1_k), _limb_darkening_g(s.teff2_k)
    lum1 = s.r1 ** 2 * _g_surface_brightness(s.teff1_k) * (1.0 - ld1 / 3.0)
    lum2 = s.r2 ** 2 * _g_surface_brightness(s.teff2_k) * (1.0 - ld2 / 3.0)
    lum1, lum2 = lum1 / (lum1 + lum2), lum2 / (lum1 + lum2)
    p = {
        "_ecc": s.ecc, "_omega_rad": s.omega_rad, "_cos_incl": s.cos_incl, "_r1": s.r1, "_r2": s.r2,
        "_lum1": lum1, "_lum2": lum2, "_ld1": ld1, "_ld2": ld2,
        "_ellip1": (2.0 / 3.0) * _ellipsoidal_alpha(s.teff1_k, ld1) * (s.mass2_msun / s.mass1_msun) * s.r1 ** 3,
        "_ellip2": (2.0 / 3.0) * _ellipsoidal_alpha(s.teff2_k, ld2) * (s.mass1_msun / s.mass2_msun) * s.r2 ** 3,
        "_refl1": _geometric_albedo(s.teff1_k) * lum2 * s.r1 ** 2,
        "_refl2": _geometric_albedo(s.teff2_k) * lum1 * s.r2 ** 2,
    }
    # conjunctions (star 2 in front at nu + omega = pi/2, star 1 at 3 pi/2), then a phase grid from the first
    conj = np.array([_mean_anomaly_of_true(0.5 * math.pi - s.omega_rad, s.ecc),
                     _mean_anomaly_of_true(1.5 * math.pi - s.omega_rad, s.ecc)])
    grid = conj[0] + 2.0 * math.pi * np.arange(_N_REFERENCE_PHASES) / _N_REFERENCE_PHASES
    flux = _flux(p, np.r_[conj, grid])
    flux_conj, flux_max = flux[:2], float(flux.max())
    primary = int(np.argmin(flux_conj))
    mean_anomaly0 = float(conj[primary])
    depth1_mag = -2.5 * math.log10(flux_conj[primary] / flux_max)
    if depth1_mag < MIN_PRIMARY_DEPTH_MAG:
        return None
    # eclipse duration (first to last contact) in phase, Winn (2010) eq. 14 with its eccentric factor
    e_sin_w = s.ecc * math.sin(s.omega_rad) * (1.0 if primary == 0 else -1.0)
    rho_conj = (1.0 - s.ecc ** 2) / (1.0 + e_sin_w)
    sin_i = math.sqrt(1.0 - s.cos_incl ** 2)
    chord = math.sqrt(max((s.r1 + s.r2) ** 2 - (rho_conj * s.cos_incl) ** 2, 0.0))
    width = math.asin(min(chord / sin_i, 1.0)) / math.pi * math.sqrt(1.0 - s.ecc ** 2) / (1.0 + e_sin_w)
    p.update({
        "_mean_anomaly0": mean_anomaly0, "_flux_max": flux_max,
        "_depth1_mag": depth1_mag, "_depth2_mag": -2.5 * math.log10(flux_conj[1 - primary] / flux_max),
        "_eclipse_width_phase": width,
        "_mass1_msun": s.mass1_msun, "_mass2_msun": s.mass2_msun, "_a_rsun": s.a_rsun,
        "_teff1_k": s.teff1_k, "_teff2_k": s.teff2_k,
    })
    return p


class Model:
    """Geometric two-star EB model: `draw` a binary from the population, `delta_mag` its g light curve."""

    source: str = "geometric"

    def draw(self, rng: np.random.Generator) -> dict:
        """One detectable EB: public keys period_d, amplitude_mag, template, subtype, epoch_mjd; private
        (underscore) keys hold the geometry and coefficients used by delta_mag, plus the drawn stars."""
        u = rng.random()
        if u < CONTACT_FRACTION:
            subtype = "contact"
        else:
            subtype = "semidetached" if rng.random() < SEMIDETACHED_SHARE_OF_NONCONTACT else "detached"
        while True:
            system = _SUBTYPE_DRAWS[subtype](rng)
            params = _light_curve_params(system)
            if params is not None:
                break
        return {
            "period_d": float(system.period_d),
            "amplitude_mag": float(params["_depth1_mag"]),
            "template": "two-star",
            "subtype": subtype,
            "epoch_mjd": float(rng.uniform(0.0, system.period_d)),
            **{k: float(v) for k, v in params.items()},
        }

    def delta_mag(self, params: dict, mjd: np.ndarray) -> np.ndarray:
        """g magnitude minus the maximum-light magnitude at each MJD (any shape; vectorised)."""
        mjd = np.asarray(mjd, dtype=float)
        phase = np.mod((mjd.ravel() - params["epoch_mjd"]) / params["period_d"], 1.0)
        flux = _flux(params, params["_mean_anomaly0"] + 2.0 * math.pi * phase)
        return (-2.5 * np.log10(flux / params["_flux_max"])).reshape(mjd.shape)


def load_model(templates_dir: str | Path | None = None) -> Model:
    """The EB model. It needs no data files: `templates_dir` is accepted for symmetry with the template-based
    classes (RR Lyrae, Cepheids) and ignored."""
    return Model()
