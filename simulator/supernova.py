"""Supernova light curves in DECam g: sncosmo spectral templates, volumetric rates, dust, time dilation.

A supernova's magnitudes follow from physics, not from a fitted histogram:
- Type and redshift: observed events per unit survey time, dN/dz ~ R(z) / (1 + z) dV/dz (Planck 2018
  cosmology from astropy). SN Ia rate R = 2.5e-5 (1 + z)^1.5 / yr / Mpc^3 (Dilday et al. 2010, ApJ 713,
  1026); core-collapse rate 0.705e-4 / yr / Mpc^3 at z = 0 (Li et al. 2011, MNRAS 412, 1473) following the
  cosmic star-formation history of Madau & Dickinson 2014 (ARA&A 52, 415), 75% of it type II (Li et al.
  2011). Each event of a type is any of its templates with equal probability. Redshifts run to where the
  brightest member of each template would fall below the survey's depth (and no further than the
  template's wavelength coverage allows in g), so a template is drawn in proportion to its events up to
  its own limit (and its type's share), which keeps the mix of detected types that of one common range.
- Luminosity: SN Ia peak M_B = -19.3 (Vega). SN II peak M_R from the volume-limited luminosity functions
  of Li et al. 2011 (MNRAS 412, 1441): IIP N(-15.66, 1.23), IIL N(-17.44, 0.64); volume-limited, because
  the rates above already make the Malmquist bias (a magnitude-limited LF would count it twice).
  AB - Vega = -0.09 in B, +0.21 in R (Blanton & Roweis 2007, AJ 133, 734).
  SALT2.4 instead draws x1 ~ N(0, 1), c ~ N(0, 0.1) with M_B = -19.3 - 0.141 x1 + 3.101 c (Betoule et al.
  2014, A&A 568, A22).
- Stretch s and flux scale a ~ N(1, 0.3) (truncated at 0.3 and 0.1), host extinction ln A_V ~ N(ln 0.1, 1)
  with the CCM89 law, R_V = 3.1, in the rest frame: the choices of the HiTS SN simulations (Förster et al.
  2016, ApJ 832, 155; github.com/fforster/surveysim). SALT2 uses x1 and c instead of s and dust.
- The explosion falls uniformly within the object's epochs; rest-frame phases are dilated by (1 + z) s.
- Detection: an event is kept only if brighter than the 5-sigma limit at one epoch at least (rejection).

Templates: embedded default `hsiao-subsampled` (in sncosmo's wheel) for Ia and a library of analytic SN II
spectral series (`_analytic_sn2_source`); with a template directory, full `hsiao` (or `salt2` 2.4) and the
SNANA/Pierel 2018 and Vincenzi et al. 2019 SN II templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Rest-frame AB minus Vega magnitudes (Blanton & Roweis 2007).
AB_MINUS_VEGA = {"bessellb": -0.09, "bessellr": 0.21}
IA_ABS_MAG_B_VEGA = -19.3
SALT2_ALPHA, SALT2_BETA = 0.141, 3.101
IA_RATE_Z0, IA_RATE_POWER = 2.5e-5, 1.5          # / yr / Mpc^3 (Dilday et al. 2010)
CC_RATE_Z0, SN2_FRACTION_OF_CC = 0.705e-4, 0.75  # Li et al. 2011
STRETCH_MEAN, STRETCH_SIGMA, SCALE_MEAN, SCALE_SIGMA = 1.0, 0.3, 1.0, 0.3
LN_AV_MEAN, LN_AV_SIGMA, R_V = np.log(0.1), 1.0, 3.1
Z_MIN = 0.01
#: Real SN II templates in a template directory: (sncosmo name, subtype). SN 2009kr is a IIL (Elias-Rosa et al. 2010).
REAL_SN2 = (("snana-2004hx", "IIP"), ("snana-2005gi", "IIP"), ("snana-2006gq", "IIP"), ("snana-2006jl", "IIP"),
            ("snana-2006kv", "IIP"), ("snana-2007lj", "IIP"), ("v19-2013fs-corr", "IIP"), ("v19-2009n-corr", "IIP"),
            ("v19-2009kr-corr", "IIL"))
SN2_ABS_MAG_R_VEGA = {"IIP": (-15.66, 1.23), "IIL": (-17.44, 0.64)}  # Li et al. 2011, volume-limited
#: Embedded SN II library: how many analytic templates of each subtype (IIL ~ 15% of IIP+IIL, Li et al. 2011).
ANALYTIC_SN2 = {"IIP": 14, "IIL": 2}

#: Checks of a template directory's files (read before sncosmo uses them; `check_sncosmo_files`). Physical SEDs
#: (Hsiao, SN II) and bandpasses must be >= -NEGATIVE_TOLERANCE x their maximum (the real files have no negative
#: value at all). SALT2's M0 is a fitted model component: the real SALT2.4 M0 reaches -0.096 x its maximum (UV,
#: early phases), so it may go to -SALT2_M0_NEGATIVE_TOLERANCE x its maximum; M1 (a signed perturbation) may not
#: exceed SALT2_M1_MAX_RATIO x the maximum of M0 in absolute value (real: 0.5).
NEGATIVE_TOLERANCE = 1e-3
SALT2_M0_NEGATIVE_TOLERANCE = 0.2
SALT2_M1_MAX_RATIO = 10.0
#: An SED value beyond SED_SPIKE_FACTOR x the 99th percentile of the file's |flux| is a corrupted value (an
#: exponent typo, a bad join): the real files' maximum is at most 4.6x it (Pierel SDSS-003818; Hsiao 2.4x).
SED_SPIKE_FACTOR = 100.0
#: A g bandpass must reach half its peak across at least this range (Angstrom; DES g: 4180-5470) and fall below
#: BANDPASS_EDGE_FRACTION of its peak at both ends (a truncated curve does not).
G_HALF_MAX_COVERS_AA = (4250.0, 5250.0)
BANDPASS_EDGE_FRACTION = 0.02

BATCH = 64  # supernova candidates drawn at once (most are too faint to see)
_Z_CDF_STEP, _Z_STEP = 2.0, 4.0  # offsets between templates in the flat tables (> CDF and z ranges)
TRUTH_KEYS = ("redshift", "stretch", "flux_scale", "av_mag", "abs_mag", "explosion_mjd", "salt2_x1", "salt2_c")


def madau_dickinson_sfr(z):
    """Cosmic star-formation rate density relative to z = 0 (Madau & Dickinson 2014, eq. 15)."""
    z = np.asarray(z, dtype=float)
    return (1 + z) ** 2.7 / (1 + ((1 + z) / 2.9) ** 5.6) / (1.0 / (1 + (1 / 2.9) ** 5.6))


def volumetric_rate(sn_type: str, z):
    """Events / yr / Mpc^3 (rest frame) of type 'Ia' or 'II' at redshift z."""
    if sn_type == "Ia":
        return IA_RATE_Z0 * (1 + np.asarray(z, dtype=float)) ** IA_RATE_POWER
    return CC_RATE_Z0 * SN2_FRACTION_OF_CC * madau_dickinson_sfr(z)


def decam_g_bandpass(name: str = "decam2014-g"):
    """The DECam g bandpass as an sncosmo Bandpass: speclite's `decam2014-g` or sncosmo's `desg`."""
    import sncosmo

    if name == "decam2014-g":
        import astropy.units as u
        import speclite.filters

        f = speclite.filters.load_filter("decam2014-g")
        wave, resp = np.asarray(f.wavelength), np.asarray(f.response)
        # drop the red leak (< 1% of the peak beyond 5600 A, 0.3% of the integral): templates ending at 9200 A
        # (SALT2) could not be integrated over it, and it changes SN magnitudes by < 0.003 mag
        keep = np.flatnonzero(resp > 0.01 * resp.max())
        sel = slice(max(keep[0] - 1, 0), keep[-1] + 2)
        return sncosmo.Bandpass(wave[sel], resp[sel], wave_unit=u.AA, name=name)
    try:
        with _no_network(sncosmo):
            return sncosmo.get_bandpass(name)
    except Exception as exc:
        raise FileNotFoundError(f"{sncosmo.conf.data_dir}: bandpass {name!r} is missing or unreadable there "
                                f"(run `fetch-templates`): {exc}") from exc


def _blackbody(wave_aa: np.ndarray, temp_k: np.ndarray) -> np.ndarray:
    """Planck B_lambda (arbitrary units) on (phases, waves)."""
    x = 1.438777e8 / (wave_aa[None, :] * temp_k[:, None])  # h c / (lambda k T), lambda in Angstrom
    return wave_aa[None, :] ** -5 / np.expm1(np.minimum(x, 700.0))


def _analytic_sn2_source(rng: np.random.Generator, subtype: str, name: str):
    """A SN II spectral time series: blackbody of a cooling photosphere scaled to an analytic V light curve.

    V band (Olivares et al. 2010, ApJ 715, 833, eq. 1, with the plateau slope of Anderson et al. 2014,
    ApJ 786, 67): m(t) = -a0 F + [s2 F + p_tail (1 - F)] (t - t_p), F = 1 / (1 + e^{(t - t_p) / w0}), times a
    rise 1 - e^{-t / tau}. Plateau slope s2 [mag/100 d]: IIP N(1.0, 0.6), IIL N(2.8, 0.7); t_p ~ N(100, 15) d;
    drop a0 ~ N(1.8, 0.4) mag; w0 ~ U(2, 5) d; tail 0.98 mag/100 d (56Co); V rise time ~ N(9, 3) d.
    Photospheric temperature T = T_pl + (T_0 - T_pl) e^{-t / tau_T}, T_0 ~ U(15, 25) kK, T_pl ~ N(5.5, 0.4) kK,
    tau_T ~ U(8, 15) d (Faran et al. 2018, MNRAS 473, 3125). Metal-line blanketing suppresses the UV of SNe II
    within weeks: below lambda_cut the blackbody is scaled by lambda / lambda_cut (as MOSFiT does, Nicholl et
    al. 2017, ApJ 850, 55), lambda_cut rising from 2000 to 4000 A with e-folding time 10 d. Phase 0 is the
    explosion. An approximation: the real templates (template directory) do better.
    """
    import sncosmo

    s2 = (rng.normal(1.0, 0.6) if subtype == "IIP" else rng.normal(2.8, 0.7)) / 100
    s2 = float(np.clip(s2, -0.005, 0.02) if subtype == "IIP" else np.clip(s2, 0.02, 0.045))
    t_p = float(np.clip(rng.normal(100, 15), 60, 140))
    a0 = float(np.clip(rng.normal(1.8, 0.4), 1.0, 3.0))
    w0 = float(rng.uniform(2, 5))
    t_rise = float(np.clip(rng.normal(9, 3), 4, 18))
    t0_k, tpl_k, tau_t = rng.uniform(15e3, 25e3), rng.normal(5.5e3, 400), rng.uniform(8, 15)
    phase = np.concatenate([np.arange(0.0, 30.0, 0.5), np.arange(30.0, 201.0, 2.0)])
    wave = np.arange(1000.0, 12001.0, 20.0)
    fd = 1 / (1 + np.exp(np.clip((phase - t_p) / w0, -50, 50)))
    m_v = -a0 * fd + (s2 * fd + 0.0098 * (1 - fd)) * (phase - t_p)
    flux_v = 10 ** (-0.4 * m_v) * -np.expm1(-phase / (t_rise / 3))
    temp = tpl_k + (t0_k - tpl_k) * np.exp(-phase / tau_t)
    bb = _blackbody(wave, temp)
    lambda_cut = 2000.0 + 2000.0 * -np.expm1(-phase / 10.0)
    bb *= np.minimum(1.0, wave[None, :] / lambda_cut[:, None])
    bb_v = _blackbody(np.array([5500.0]), temp)[:, 0]
    return sncosmo.TimeSeriesSource(phase, wave, flux_v[:, None] * bb / bb_v[:, None], name=name)


@dataclass
class Template:
    """One spectral template and what a draw needs from it."""

    name: str
    sn_type: str             # Ia | II
    subtype: str             # Ia | IIP | IIL
    model: object            # sncosmo.Model with rest-frame CCM89 host dust
    amp_param: str           # 'amplitude' or 'x0'
    norm_band: str           # rest-frame band of the luminosity function: bessellb (Ia) or bessellr (II)
    amp_ref: float           # amplitude giving rest-frame peak M(AB) = 0 in norm_band at 10 pc
    abs_mag_mean: float      # peak absolute magnitude in norm_band, AB
    abs_mag_sigma: float
    explosion_phase_d: float  # rest-frame phase of the explosion (the template's first phase)
    z_grid: np.ndarray | None = None      # redshifts where peak_mag_z is tabulated
    peak_mag_z: np.ndarray | None = None  # dust-free peak g (AB) at M_B = 0 and zero distance modulus
    z_support: np.ndarray | None = None   # redshifts the template is drawn on (to the survey's depth)
    z_cdf: np.ndarray | None = None       # cumulative rate-weighted distribution on z_support
    phase_grid: np.ndarray | None = None  # rest-frame days where mag_table is tabulated (1-day steps)
    mag_table: np.ndarray | None = None   # dust-free g (AB) at M = 0, zero distance modulus: (z_grid, phase_grid)


def _template(source, sn_type: str, subtype: str, norm_band: str, abs_mag_vega: tuple[float, float]) -> Template:
    import sncosmo

    model = sncosmo.Model(source=source, effects=[sncosmo.CCM89Dust()], effect_names=["host"], effect_frames=["rest"])
    amp_param = model.param_names[2]  # after z, t0
    src = model.source
    src.set_peakmag(0.0, norm_band, "ab")
    return Template(name=src.name, sn_type=sn_type, subtype=subtype, model=model, amp_param=amp_param,
                    norm_band=norm_band, amp_ref=float(src.get(amp_param)),
                    abs_mag_mean=abs_mag_vega[0] + AB_MINUS_VEGA[norm_band],
                    abs_mag_sigma=abs_mag_vega[1], explosion_phase_d=float(src.minphase()))


def _band_mag(model, band, times) -> np.ndarray:
    """AB magnitudes of `model` in `band`, inf where the flux is zero (before explosion)."""
    flux = model.bandflux(band, times, zp=25.0, zpsys="ab")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 25.0 - 2.5 * np.log10(np.maximum(flux, 1e-300)), np.inf)


class SupernovaModel:
    """Draws detectable supernovae for an object's epochs (see the module docstring for the physics)."""

    def __init__(self, templates_dir: str | Path | None, depth_mag: float, ia_model: str = "hsiao",
                 bandpass: str = "decam2014-g", max_attempts: int = 5000):
        import extinction  # sncosmo's dust law package
        import sncosmo
        from astropy.cosmology import Planck18

        if templates_dir is not None:
            data = Path(templates_dir) / "sncosmo_data"
            if not data.is_dir():
                raise FileNotFoundError(f"{data}: no sncosmo data directory in the template directory")
            sncosmo.conf.data_dir = str(data)
        if ia_model not in ("hsiao", "salt2"):
            raise ValueError(f"sn_ia_model must be 'hsiao' or 'salt2', got {ia_model!r}")
        if ia_model == "salt2" and templates_dir is None:
            raise ValueError("sn_ia_model 'salt2' needs a template directory (--templates) holding SALT2.4")
        if bandpass not in ("decam2014-g", "desg"):
            raise ValueError(f"bandpass must be 'decam2014-g' or 'desg', got {bandpass!r}")
        if bandpass == "desg" and templates_dir is None:
            raise ValueError("bandpass 'desg' needs a template directory (--templates) holding sncosmo's DES curves")
        if templates_dir is not None:
            check_sncosmo_files(data, ia_model, bandpass)
        self.source = "embedded" if templates_dir is None else "templates"
        self.band = decam_g_bandpass(bandpass)
        self.depth_mag = float(depth_mag)
        self.max_attempts = max_attempts
        ia_abs = (IA_ABS_MAG_B_VEGA, 0.0)
        if templates_dir is None:
            self.templates = [_template(sncosmo.get_source("hsiao-subsampled"), "Ia", "Ia", "bessellb", ia_abs)]
            lib_rng = np.random.default_rng(20190417)  # fixed: the embedded library is part of the model
            for subtype, n in ANALYTIC_SN2.items():
                for k in range(n):
                    src = _analytic_sn2_source(lib_rng, subtype, f"analytic-{subtype.lower()}-{k:02d}")
                    self.templates.append(_template(src, "II", subtype, "bessellr", SN2_ABS_MAG_R_VEGA[subtype]))
        else:
            ia = (_source(sncosmo, "hsiao", None, data) if ia_model == "hsiao" else _source(sncosmo, "salt2", "2.4", data))
            self.templates = [_template(ia, "Ia", "Ia", "bessellb", ia_abs)]
            self.templates += [_template(_source(sncosmo, n, None, data), "II", sub, "bessellr", SN2_ABS_MAG_R_VEGA[sub])
                               for n, sub in REAL_SN2]
        z_big = np.linspace(Z_MIN, 3.0, 600)
        self._dm_z, self._dm = z_big, np.asarray(Planck18.distmod(z_big).value)
        dvdz = 4 * np.pi * np.asarray(Planck18.differential_comoving_volume(z_big).value)  # Mpc^3 / sr -> full sky
        g_blue = float(self.band.minwave())
        events = []  # per template: the events per unit time over its redshift range (the CDF's end)
        for t in self.templates:
            z_cap = min(3.0, g_blue / t.model.source.minwave() - 1.001)  # the g band must stay inside the template
            t.z_grid = np.linspace(Z_MIN, z_cap, 25)
            # SALT2's shape depends on x1 and c: no per-epoch table bound for it
            src = t.model.source
            # 60 rest-frame days after explosion cover a campaign of weeks (later phases: no bound, sncosmo decides)
            t.phase_grid = (np.arange(src.minphase(), min(src.maxphase(), src.minphase() + 60.0), 1.0)
                            if t.amp_param != "x0" else np.zeros(0))
            peak, table = zip(*(self._tabulate(t, z) for z in t.z_grid))
            t.peak_mag_z = np.array(peak)
            t.mag_table = np.array(table) if len(t.phase_grid) else None
            bright = t.abs_mag_mean - 2 * t.abs_mag_sigma - 2.5 * np.log10(SCALE_MEAN + 2 * SCALE_SIGMA)
            faint_enough = t.peak_mag_z + bright + np.interp(t.z_grid, z_big, self._dm) > self.depth_mag
            z_max = float(t.z_grid[np.argmax(faint_enough)]) if faint_enough.any() else z_cap
            zz = z_big[z_big <= z_max]
            density = volumetric_rate(t.sn_type, zz) / (1 + zz) * np.interp(zz, z_big, dvdz)
            t.z_cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(zz))])
            t.z_support = zz
            if np.isnan(t.peak_mag_z).any() or not np.isfinite(t.z_cdf[-1]):
                raise ValueError(f"supernova template {t.name!r} gives no finite flux in the {self.band.name} "
                                 "band at some redshift (check its SED file)")
            if not t.z_cdf[-1] > 0:  # even the nearest redshift drawn is beyond the survey's depth
                raise ValueError(f"no {t.name!r} supernova would be visible: at z = {Z_MIN:g} its brightest peak is "
                                 f"already fainter than the survey depth {self.depth_mag:.2f} mag (sn_depth_mag, or "
                                 "the deepest limmag5 of the conditions)")
            events.append(float(t.z_cdf[-1]))
            t.z_cdf = t.z_cdf / t.z_cdf[-1]
        # every event of a type is equally likely to be any of its templates, so template t's share of the
        # candidates is its events up to its own redshift limit over the number of its type's templates
        n_of_type = {k: sum(t.sn_type == k for t in self.templates) for k in ("Ia", "II")}
        weight = np.array([e / n_of_type[t.sn_type] for e, t in zip(events, self.templates)])
        self.template_p = weight / weight.sum()
        self._template_cdf = np.cumsum(self.template_p)
        # least host extinction across the g band per magnitude of A_V, on z_big; each value is the
        # minimum of its grid neighbours so a lookup at the lower grid point bounds the whole cell
        wave = self.band.wave[self.band.trans > 0]
        least = np.array([extinction.ccm89(wave / (1 + z), 1.0, R_V).min() for z in z_big])
        self._least_extinction = np.minimum(least, np.append(least[1:], least[-1]))
        self._salt2 = np.array([t.amp_param == "x0" for t in self.templates])
        self._abs_mean = np.array([t.abs_mag_mean for t in self.templates])
        self._abs_sigma = np.array([t.abs_mag_sigma for t in self.templates])
        # every template's redshift inverse CDF and peak-magnitude curve in one increasing table each,
        # template i shifted by i * _Z_CDF_STEP (CDFs span 0..1) and i * _Z_STEP (redshifts 0..3): one
        # np.interp serves candidates of all templates
        self._flat_cdf = np.concatenate([t.z_cdf + i * _Z_CDF_STEP for i, t in enumerate(self.templates)])
        self._flat_support = np.concatenate([t.z_support for t in self.templates])
        self._flat_z = np.concatenate([t.z_grid + i * _Z_STEP for i, t in enumerate(self.templates)])
        self._flat_peak = np.concatenate([t.peak_mag_z for t in self.templates])

    def _tabulate(self, t: Template, z: float) -> tuple[float, np.ndarray]:
        """Dust-free observed g at M = 0 and zero distance modulus (K-correction and (1+z) included): the
        peak, and the light curve at `t.phase_grid` (rest-frame days); one sncosmo call."""
        src = t.model.source
        t.model.set(z=z, t0=0.0, hostebv=0.0, hostr_v=R_V, **{t.amp_param: t.amp_ref})
        # every template peaks within 60 rest-frame days of its start; 1.5-day steps miss the peak by < 0.01 mag
        peak_phases = np.linspace(src.minphase(), min(src.maxphase(), src.minphase() + 60.0), 41)
        times, back = np.unique(np.concatenate([peak_phases, t.phase_grid]) * (1 + z), return_inverse=True)
        mag = _band_mag(t.model, self.band, times)[back]  # sncosmo wants increasing times
        return float(np.min(mag[:41])), mag[41:]

    def _may_be_detected(self, cand: dict, k: int, mjd: np.ndarray, limmag5: np.ndarray) -> bool:
        """False only when the tabulated light curve of candidate `k` of `cand` shows every epoch (`mjd`
        increasing) fainter than its 5-sigma limit.

        A lower bound on each epoch's magnitude: the brightest table value of the (z, phase) cell around it,
        minus 0.3 mag (cells are 1 day and < 0.12 in z wide), plus the least host extinction anywhere in
        the band. Saves the sncosmo call for most undetectable draws without changing which draws are
        kept."""
        t = self.templates[cand["template"][k]]
        if t.mag_table is None:
            return True
        z, stretch, explosion = cand["redshift"][k], cand["stretch"][k], cand["explosion_mjd"][k]
        t0 = explosion - t.explosion_phase_d * (1 + z) * stretch
        cell = max(int(np.searchsorted(self._dm_z, z, side="right")) - 1, 0)
        offset_mag = (cand["abs_mag"][k] + cand["dm"][k] - 2.5 * np.log10(cand["flux_scale"][k])
                      + cand["av_mag"][k] * self._least_extinction[cell])  # dust dims at least this
        first = int(np.searchsorted(mjd, explosion))  # epochs are in time order: later ones are after it
        if first == len(mjd):
            return False  # explodes after the last epoch
        phase = (mjd[first:] - t0) / stretch / (1 + z)
        grid = t.phase_grid
        if phase[-1] > grid[-1] or phase[0] < grid[0]:
            return True  # outside the table: leave it to sncosmo
        iz = min(max(int(np.searchsorted(t.z_grid, z)), 1), len(t.z_grid) - 1)
        j = np.searchsorted(grid, phase).clip(1, len(grid) - 1)
        rows = t.mag_table[iz - 1:iz + 1]
        bound = np.minimum(rows[:, j - 1], rows[:, j]).min(axis=0) + (offset_mag - 0.3)
        return bool((bound < limmag5[first:]).any())

    def template(self, name: str) -> Template:
        return next(t for t in self.templates if t.name == name)

    def draw(self, rng: np.random.Generator, mjd: np.ndarray, limmag5: np.ndarray):
        """(g magnitudes at `mjd` (increasing), truth) of a supernova detected at least once, or None if none was found
        in `max_attempts` draws (a field too shallow): the caller then draws other conditions.

        Candidates are drawn in batches of `BATCH` (type, template, z, stretch, scale, dust, luminosity,
        explosion time), cheap bounds discard the surely undetectable ones, and the first candidate whose
        sncosmo light curve is detected is kept: the same distribution as one candidate at a time."""
        deepest = float(np.max(limmag5))
        for _ in range(0, self.max_attempts, BATCH):
            cand = self._candidates(rng, BATCH, float(mjd[0]), float(mjd[-1]))
            for k in np.flatnonzero(cand["brightest"] - 0.3 <= deepest):  # dust only dims
                if not self._may_be_detected(cand, k, mjd, limmag5):
                    continue
                t = self.templates[cand["template"][k]]
                truth = {key: float(cand[key][k]) for key in TRUTH_KEYS}
                mag = self.light_curve(t, truth, mjd)
                if np.any(mag < limmag5):
                    return mag, {"template": t.name, "subtype": t.subtype, **truth}
        return None

    def _candidates(self, rng: np.random.Generator, n: int, mjd_first: float, mjd_last: float) -> dict:
        """`n` supernova parameter draws (arrays) and the brightest magnitude each could reach (no dust)."""
        template = np.minimum(np.searchsorted(self._template_cdf, rng.random(n), side="right"),
                              len(self.templates) - 1)
        u_z = rng.random(n)
        z = np.interp(u_z + template * _Z_CDF_STEP, self._flat_cdf, self._flat_support)
        peak = np.interp(z + template * _Z_STEP, self._flat_z, self._flat_peak)
        salt2 = self._salt2[template]
        stretch = _truncated_normals(rng, STRETCH_MEAN, STRETCH_SIGMA, 0.3, n)
        scale = _truncated_normals(rng, SCALE_MEAN, SCALE_SIGMA, 0.1, n)
        av = np.exp(rng.normal(LN_AV_MEAN, LN_AV_SIGMA, n))
        mean, sigma = self._abs_mean[template], self._abs_sigma[template]
        abs_mag = mean + sigma * rng.standard_normal(n)
        x1, c = rng.normal(0.0, 1.0, n), rng.normal(0.0, 0.1, n)
        # SALT2: stretch and colour are its own parameters
        stretch, scale, av = np.where(salt2, 1.0, stretch), np.where(salt2, 1.0, scale), np.where(salt2, 0.0, av)
        abs_mag = np.where(salt2, mean - SALT2_ALPHA * x1 + SALT2_BETA * c, abs_mag)
        x1, c = np.where(salt2, x1, np.nan), np.where(salt2, c, np.nan)
        explosion = rng.uniform(mjd_first, mjd_last, n)
        dm = np.interp(z, self._dm_z, self._dm)
        return {"template": template, "redshift": z, "stretch": stretch, "flux_scale": scale, "av_mag": av,
                "abs_mag": abs_mag, "explosion_mjd": explosion, "salt2_x1": x1, "salt2_c": c, "dm": dm,
                "brightest": peak + abs_mag + dm - 2.5 * np.log10(scale)}

    def light_curve(self, t: Template, truth: dict, mjd: np.ndarray, band=None) -> np.ndarray:
        """Observed AB magnitudes at `mjd` (inf before explosion) of template `t` with the parameters of a
        draw's `truth` (redshift, stretch, flux_scale, av_mag, abs_mag, explosion_mjd, salt2_x1, salt2_c)."""
        z, stretch = truth["redshift"], truth["stretch"]
        dm = float(np.interp(z, self._dm_z, self._dm))
        params = {"z": z, "t0": 0.0, "hostebv": truth["av_mag"] / R_V, "hostr_v": R_V,
                  t.amp_param: t.amp_ref * 10 ** (-0.4 * (truth["abs_mag"] + dm)) * truth["flux_scale"]}
        if t.amp_param == "x0":
            params.update(x1=truth["salt2_x1"], c=truth["salt2_c"])
        t.model.set(**params)
        t0 = truth["explosion_mjd"] - t.explosion_phase_d * (1 + z) * stretch
        mjd = np.asarray(mjd, dtype=float)
        mag = _band_mag(t.model, band or self.band, (mjd - t0) / stretch)
        return np.where(mjd < truth["explosion_mjd"], np.inf, mag)  # sncosmo would extrapolate the first phase


def _truncated_normals(rng: np.random.Generator, mean: float, sigma: float, lower: float, n: int) -> np.ndarray:
    """`n` draws of a normal truncated below at `lower` (rejection: redraw those at or below it)."""
    x = rng.normal(mean, sigma, n)
    low = x <= lower
    while low.any():
        x[low] = rng.normal(mean, sigma, int(low.sum()))
        low = x <= lower
    return x


def _source(sncosmo, name: str, version: str | None, data: Path):
    """A registry source from the template directory, with a clear error instead of a download attempt."""
    try:
        with _no_network(sncosmo):
            return sncosmo.get_source(name, version=version)
    except Exception as exc:
        raise FileNotFoundError(f"{data}: sncosmo source {name!r} is missing or unreadable there "
                                f"(run `fetch-templates` on a machine with internet): {exc}") from exc


def _registry_relpath(registry, name: str, version: str | None) -> str:
    """The data-directory path sncosmo's `registry` loads `name` (version None: the latest, as sncosmo picks)."""
    loaders = getattr(registry, "_loaders", None)
    if loaders is not None and version is None and (name, None) not in loaders:
        versions = [k[1] for k in loaders if k[0] == name and k[1] is not None]
        version = max(versions) if versions else None
    try:
        return str(loaders[(name, version)][1][0])
    except (TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"sncosmo does not say which file holds {name!r} (version {version}): cannot check it "
                         f"before use ({exc!r})") from exc


def _numeric_rows(path: Path, n_cols: int, header_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(values (rows, n_cols), 1-based line numbers) of a whitespace-separated text table; '#' starts a comment.
    With `header_ok` a first non-numeric line is a column header (as astropy's reader takes it). A line of the
    wrong length or with a non-number is an error naming the file, line, column and value."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable text file ({exc})") from exc
    if not any("#" in line for line in lines):  # fast path: a plain numeric table (the real files)
        line_no = np.array([n for n, line in enumerate(lines, start=1) if line.strip()])
        try:
            values = np.array(" ".join(lines).split(), dtype=float)
        except ValueError:
            values = None  # a header or a non-number: the line-by-line reading below names it
        if (values is not None and len(line_no) and values.size == n_cols * len(line_no)
                and all(len(lines[n - 1].split()) == n_cols for n in line_no)):
            return values.reshape(-1, n_cols), line_no
    numbers, line_no = [], []
    for n, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            row = [float(v) for v in fields]
        except ValueError:
            row = None
        if row is None or len(row) != n_cols:
            if header_ok and not numbers and row is None and len(fields) == n_cols:
                continue  # a header line such as 'wavelength transmission'
            for k, v in enumerate(fields, start=1):
                try:
                    float(v)
                except ValueError:
                    raise ValueError(f"{path}, line {n}, column {k}: {v!r} is not a number") from None
            raise ValueError(f"{path}, line {n}: {len(fields)} columns, expected {n_cols}: {line.strip()[:80]!r}")
        numbers.append(row)
        line_no.append(n)
    if not numbers:
        raise ValueError(f"{path}: no data rows")
    return np.array(numbers, dtype=float), np.array(line_no)


def _check_values(path: Path, what: str, values: np.ndarray, where, neg_tol: float | None,
                  abs_max: float | None = None, spikes: bool = False) -> None:
    """Refuse non-finite `values`, all-zero ones, (neg_tol) ones below -neg_tol x max, (abs_max) ones beyond
    it in absolute value and (spikes) isolated huge ones (`SED_SPIKE_FACTOR`). `where(i)` names the place of
    flat index i (line/column or row/column)."""
    flat = np.ravel(values)
    bad = np.flatnonzero(~np.isfinite(flat))
    if len(bad):
        raise ValueError(f"{path}, {where(bad[0])}: {what} {flat[bad[0]]} is not finite "
                         f"({len(bad)} such value{'s' * (len(bad) > 1)})")
    peak = float(flat.max())
    if neg_tol is not None and peak <= 0:
        raise ValueError(f"{path}: every {what} value is zero or negative (max {peak:g}): nothing to use")
    if neg_tol is not None:
        bad = np.flatnonzero(flat < -neg_tol * peak)
        if len(bad):
            raise ValueError(f"{path}, {where(bad[0])}: {what} {flat[bad[0]]:g} is negative (below -{neg_tol:g} x "
                             f"the maximum {peak:g}; {len(bad)} such value{'s' * (len(bad) > 1)})")
    if abs_max is not None:
        bad = np.flatnonzero(np.abs(flat) > abs_max)
        if len(bad):
            raise ValueError(f"{path}, {where(bad[0])}: {what} {flat[bad[0]]:g} is implausibly large "
                             f"(|value| > {abs_max:g})")
    if spikes:
        typical = float(np.percentile(np.abs(flat), 99))
        bad = np.flatnonzero(np.abs(flat) > SED_SPIKE_FACTOR * typical)
        if len(bad):
            raise ValueError(f"{path}, {where(bad[0])}: {what} {flat[bad[0]]:g} is more than {SED_SPIKE_FACTOR:g} x "
                             f"the file's 99th percentile {typical:g} ({len(bad)} such value{'s' * (len(bad) > 1)}): "
                             f"a corrupted value?")


def _check_sed_ascii(path: Path, neg_tol: float | None, abs_max: float | None = None) -> float:
    """Check a 'phase wavelength flux' SED file (SNANA/Pierel, Vincenzi, SALT2); its maximum flux. sncosmo
    reads it as a grid: each phase one block of lines, phases increasing, every block the first block's
    wavelengths, increasing."""
    rows, line_no = _numeric_rows(path, 3)
    _check_values(path, "phase/wavelength", rows[:, :2], lambda i: f"line {line_no[i // 2]}, column {i % 2 + 1}",
                  None)
    _check_values(path, "flux", rows[:, 2], lambda i: f"line {line_no[i]}, column 3", neg_tol, abs_max, spikes=True)
    phase, wave = rows[:, 0], rows[:, 1]
    bounds = np.r_[np.flatnonzero(np.r_[True, phase[1:] != phase[:-1]]), len(rows)]
    first = wave[bounds[0]:bounds[1]]
    down = np.flatnonzero(np.diff(first) <= 0)
    if len(down):
        raise ValueError(f"{path}, line {line_no[down[0] + 1]}: wavelength {first[down[0] + 1]:g} follows "
                         f"{first[down[0]]:g}; sncosmo needs increasing wavelengths")
    for prev, a, b in zip(np.r_[-1, bounds[:-2]], bounds[:-1], bounds[1:]):
        if prev >= 0 and phase[a] < phase[prev]:
            raise ValueError(f"{path}, line {line_no[a]}: phase {phase[a]:g} follows phase {phase[prev]:g}; sncosmo "
                             f"needs each phase's lines together, phases increasing")
        if not np.array_equal(wave[a:b], first):
            raise ValueError(f"{path}, lines {line_no[a]}-{line_no[b - 1]}: phase {phase[a]:g} has {b - a} wavelengths "
                             f"({wave[a]:g}-{wave[b - 1]:g} A) where phase {phase[0]:g} has {len(first)} ({first[0]:g}-"
                             f"{first[-1]:g} A); sncosmo needs one wavelength grid for every phase: a truncated file?")
    return float(rows[:, 2].max())


def _check_sed_fits(path: Path) -> None:
    """Check a FITS SED grid (Hsiao: primary HDU, rows = phases, columns = wavelengths)."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            flux = np.array(hdul[0].data, dtype=float)
    except Exception:  # unreadable: sncosmo's loader reports it when it reads the file
        return
    if flux.ndim != 2:
        return
    _check_values(path, "flux", flux, lambda i: f"HDU 0, row {i // flux.shape[1]} (phase index), column "
                  f"{i % flux.shape[1]} (wavelength index)", NEGATIVE_TOLERANCE, spikes=True)


def check_bandpass_file(path: Path) -> None:
    """Check a 'wavelength transmission' bandpass file: finite, not negative, a whole g band (see constants)."""
    rows, line_no = _numeric_rows(path, 2, header_ok=True)
    _check_values(path, "wavelength", rows[:, 0], lambda i: f"line {line_no[i]}, column 1", None)
    _check_values(path, "transmission", rows[:, 1], lambda i: f"line {line_no[i]}, column 2", NEGATIVE_TOLERANCE)
    wave, trans = rows.T
    peak = trans.max()
    half = wave[trans >= 0.5 * peak]
    lo, hi = G_HALF_MAX_COVERS_AA
    if trans[0] > BANDPASS_EDGE_FRACTION * peak or trans[-1] > BANDPASS_EDGE_FRACTION * peak \
            or half.min() > lo or half.max() < hi:
        raise ValueError(f"{path}: not a whole g band: lines {line_no[0]}-{line_no[-1]} span {wave[0]:g}-{wave[-1]:g} A, "
                         f"above half the peak {half.min():g}-{half.max():g} A (needs {lo:g}-{hi:g} A), transmission "
                         f"at the ends {trans[0] / peak:.3g} and {trans[-1] / peak:.3g} x the peak (needs <= "
                         f"{BANDPASS_EDGE_FRACTION:g}): a truncated file?")


def check_sncosmo_files(data: Path, ia_model: str = "hsiao", bandpass: str = "decam2014-g") -> None:
    """Check the template directory's SED and bandpass files that `SupernovaModel` will load through sncosmo,
    before sncosmo reads them: a non-finite, all-zero or negative SED, or a bad or truncated g bandpass, is a
    ValueError naming the file, line (row) and column and the value. Missing files are left to sncosmo's loader."""
    from sncosmo.bandpasses import _BANDPASSES
    from sncosmo.models import _SOURCES

    data = Path(data)
    if ia_model == "hsiao":
        path = data / _registry_relpath(_SOURCES, "hsiao", None)
        if path.is_file():
            _check_sed_fits(path)
    else:
        folder = data / _registry_relpath(_SOURCES, "salt2", "2.4")
        m0 = folder / "salt2_template_0.dat"
        m0_max = _check_sed_ascii(m0, SALT2_M0_NEGATIVE_TOLERANCE) if m0.is_file() else None
        m1 = folder / "salt2_template_1.dat"
        if m1.is_file():
            _check_sed_ascii(m1, None, None if m0_max is None else SALT2_M1_MAX_RATIO * m0_max)
    for name, _ in REAL_SN2:
        path = data / _registry_relpath(_SOURCES, name, None)
        if path.is_file():
            _check_sed_ascii(path, NEGATIVE_TOLERANCE)
    if bandpass != "decam2014-g":
        path = data / _registry_relpath(_BANDPASSES, bandpass, None)
        if path.is_file():
            check_bandpass_file(path)


class _no_network:
    """Make sncosmo fail fast instead of downloading into a user's template directory."""

    def __init__(self, sncosmo):
        self.sncosmo = sncosmo

    def __enter__(self):
        self.saved = self.sncosmo.conf.remote_timeout
        self.sncosmo.conf.remote_timeout = 0.001

    def __exit__(self, *exc):
        self.sncosmo.conf.remote_timeout = self.saved
        return False


@lru_cache(maxsize=4)
def load_model(templates_dir: str | None, depth_mag: float, ia_model: str = "hsiao",
               bandpass: str = "decam2014-g") -> SupernovaModel:
    """A cached `SupernovaModel` (building one tabulates peak magnitudes: ~1 s)."""
    return SupernovaModel(templates_dir, depth_mag, ia_model, bandpass)
