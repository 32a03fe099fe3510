"""Light-curve models by class: each gives the true source magnitude at every epoch of an object.

A model is a function `(rng, conditions, cfg) -> (mag (T,), truth dict)`; `inf` means no point source
at that epoch, and padded epochs (mask False) are always `inf`. The renderer takes any such sequence,
so new classes plug in by registering a function in `MODELS`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from survey_params import ObjectConditions

from .magnitudes import exp_erf_quantile
from .settings import SimConfig


def _star_mag(rng: np.random.Generator, cond: ObjectConditions, cfg: SimConfig, mag_max: float | None = None) -> float:
    """A stellar magnitude; the faint end follows the object's depth (mean + nsigma std of limmag5)."""
    lim = cond.limmag5[cond.mask]
    depth = float(lim.mean() + cfg.star_depth_nsigma * lim.std())
    upper = depth if mag_max is None else min(depth, mag_max)
    upper = max(upper, cfg.star_mag_min + 0.5)
    return float(exp_erf_quantile(rng.random(), cfg.star_count_slope_dex, cfg.star_mag_cut, cfg.star_mag_min, upper))


def nonvariable(rng, cond: ObjectConditions, cfg: SimConfig):
    """A star of constant brightness."""
    m = _star_mag(rng, cond, cfg)
    return np.where(cond.mask, m, np.inf), {"mean_mag": m}


def galaxy(rng, cond: ObjectConditions, cfg: SimConfig):
    """A galaxy alone: no point source (the host galaxy is the object)."""
    return np.full(len(cond.mask), np.inf), {}


def asteroid(rng, cond: ObjectConditions, cfg: SimConfig):
    """A moving object seen at one epoch only, brighter than that epoch's 5-sigma limit."""
    valid = np.flatnonzero(cond.mask)
    epoch = int(valid[rng.integers(len(valid))])
    m = _star_mag(rng, cond, cfg, mag_max=float(cond.limmag5[epoch]))
    mag = np.full(len(cond.mask), np.inf)
    mag[epoch] = m
    return mag, {"mean_mag": m, "epoch": epoch}


MODELS: dict[str, Callable] = {"nonvariable": nonvariable, "galaxy": galaxy, "asteroid": asteroid}


def model_for(name: str) -> Callable:
    if name not in MODELS:
        raise NotImplementedError(f"class {name!r} has no light-curve model yet; implemented: {', '.join(MODELS)}")
    return MODELS[name]
