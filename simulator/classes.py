"""Light-curve models by class: the true g magnitude of an object's point source at each of its epochs.

A class model is `(rng, conditions, cfg, models) -> (mag (n_epochs,), truth) | None`: `inf` means no point
source at that epoch (padded epochs are always `inf`); `truth` holds any of `TRUTH_FLOATS`/`TRUTH_TEXT`;
None means these conditions cannot host the class (a supernova never detectable in a shallow field) and the
caller draws new ones. `models` holds the per-process template models of `load_models`.

Magnitudes of non-variable stars, eclipsing binaries, Cepheids and asteroids follow the exponential x erf
law of Carrasco-Davis et al. (2019, sec. 2.2) with m_cut = 22.8, RR Lyrae with m_cut = 21.5; for variable
stars it gives the phase-averaged (pulsators) or out-of-eclipse (binaries) magnitude. Supernova magnitudes
follow from their physics (`simulator.supernova`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from survey_params import ObjectConditions

from . import supernova
from .magnitudes import exp_erf_sample
from .settings import SimConfig

#: Per-object float truth stored under `truth/` (NaN where a class has no such quantity).
TRUTH_FLOATS = ("class_mean_mag", "period_d", "amplitude_mag", "epoch_mjd", "trail_arcsec", "trail_angle_rad",
                "rate_deg_per_day") + supernova.TRUTH_KEYS
#: Per-object text truth: light-curve template and subtype (SN type Ia/IIP/IIL, RRab/RRc, ...).
TRUTH_TEXT = ("template", "subtype")


def _star_mag(rng: np.random.Generator, cond: ObjectConditions, cfg: SimConfig, m_cut: float | None = None,
              mag_max: float | None = None) -> float:
    """A stellar magnitude; the faint end follows the object's depth (mean + nsigma std of limmag5)."""
    lim = cond.limmag5[cond.mask]
    depth = float(lim.mean() + cfg.star_depth_nsigma * lim.std())
    upper = depth if mag_max is None else min(depth, mag_max)
    upper = max(upper, cfg.star_mag_min + 0.5)
    cut = cfg.star_mag_cut if m_cut is None else m_cut
    return exp_erf_sample(rng.random(), cfg.star_count_slope_dex, cut, cfg.star_mag_min, upper)


def nonvariable(rng, cond: ObjectConditions, cfg: SimConfig, models: dict):
    """A star of constant brightness."""
    m = _star_mag(rng, cond, cfg)
    return np.where(cond.mask, m, np.inf), {"class_mean_mag": m}


def galaxy(rng, cond: ObjectConditions, cfg: SimConfig, models: dict):
    """A galaxy alone: no point source (the host galaxy is the object)."""
    return np.full(len(cond.mask), np.inf), {}


def asteroid(rng, cond: ObjectConditions, cfg: SimConfig, models: dict):
    """A moving object seen at one epoch only, brighter than that epoch's 5-sigma limit, trailed (None when
    no epoch is deeper than the brightest star magnitude).

    Its apparent rate is log-normal around `asteroid_rate_deg_per_day` (main-belt asteroids near opposition
    move ~0.25 deg/day; Jedicke et al. 2002, Asteroids III, 71), so in an exposure of T seconds it trails
    rate x T: ~0.9" (3.3 px) in HiTS's 86 s. The direction is random.
    """
    # an epoch where a star can be brighter than the 5-sigma limit (clouded-out exposures reach ~15 mag)
    valid = np.flatnonzero(cond.mask & (cond.limmag5 > cfg.star_mag_min + 0.5))
    if not len(valid):
        return None
    epoch = int(valid[rng.integers(len(valid))])
    m = _star_mag(rng, cond, cfg, mag_max=float(cond.limmag5[epoch]))
    rate = cfg.asteroid_rate_deg_per_day * 10 ** rng.normal(0.0, cfg.asteroid_rate_scatter_dex)
    mag = np.full(len(cond.mask), np.inf)
    mag[epoch] = m
    return mag, {"class_mean_mag": m, "rate_deg_per_day": rate, "trail_angle_rad": rng.uniform(0, np.pi),
                 "trail_arcsec": rate * 3600.0 / 86400.0 * cond.exp_time_s[epoch]}


def _periodic(key: str, m_cut_attr: str) -> Callable:
    def model(rng, cond: ObjectConditions, cfg: SimConfig, models: dict):
        m = _star_mag(rng, cond, cfg, m_cut=getattr(cfg, m_cut_attr))
        params = models[key].draw(rng)
        mag = np.full(len(cond.mask), np.inf)
        mag[cond.mask] = m + models[key].delta_mag(params, cond.mjd[cond.mask])
        truth = {k: v for k, v in params.items() if not k.startswith("_")}
        return mag, {"class_mean_mag": m, **truth}
    model.__doc__ = f"A {key} star: magnitude law with m_cut = cfg.{m_cut_attr}, light curve from `simulator.{key}`."
    return model


def supernova_lc(rng, cond: ObjectConditions, cfg: SimConfig, models: dict):
    """A supernova detected at least once in these epochs (None if the field is too shallow for any)."""
    v = cond.mask
    drawn = models["supernova"].draw(rng, cond.mjd[v], cond.limmag5[v])
    if drawn is None:
        return None
    mag = np.full(len(v), np.inf)
    mag[v] = drawn[0]
    return mag, drawn[1]


MODELS: dict[str, Callable] = {
    "supernova": supernova_lc,
    "rrlyrae": _periodic("rrlyrae", "rrlyrae_mag_cut"),
    "cepheid": _periodic("cepheid", "star_mag_cut"),
    "eclipsing_binary": _periodic("eclipsing", "star_mag_cut"),
    "nonvariable": nonvariable,
    "galaxy": galaxy,
    "asteroid": asteroid,
}


def load_models(cfg: SimConfig, templates_dir, depth_mag: float | None) -> dict:
    """The template models the configured classes need (embedded defaults when `templates_dir` is None);
    `depth_mag` (the survey's depth) is needed when supernovae are simulated."""
    import importlib

    models = {}
    for cname, key, module in (("rrlyrae", "rrlyrae", "rrlyrae"), ("cepheid", "cepheid", "cepheid"),
                               ("eclipsing_binary", "eclipsing", "eclipsing")):
        if cname in cfg.classes:  # import only what is simulated
            models[key] = importlib.import_module(f"simulator.{module}").load_model(templates_dir)
    if "supernova" in cfg.classes:
        models["supernova"] = supernova.load_model(None if templates_dir is None else str(templates_dir),
                                                   round(depth_mag, 3), cfg.sn_ia_model, cfg.bandpass)
    return models
