"""Magnitude distributions: an exponential number density times an erf cutoff.

p(m) ~ 10^(slope m) * f(m), f(m) = erfc(m - m_cut) / 2 = (1 - erf(m - m_cut)) / 2 on [m_min, m_max]
(Carrasco-Davis et al. 2019, section 2.2: f = 0.5 at m_cut; their printed "1 - erf(m - m_cut)/2" would never
fall below 0.5). Computed as erfc: 1 - erf rounds to 0 beyond ~6 mag past the cutoff.
Sampled by inverting the tabulated CDF, so one uniform draw gives one magnitude. `exp_erf_sample` keeps
one table per law (0.002 mag steps out to 35) and only interpolates per draw: the simulator's hot path.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import erfc

_STEP_MAG, _FAINTEST_MAG = 0.002, 35.0


def exp_erf_quantile(u, slope_dex: float, m_cut: float, m_min, m_max, n_grid: int = 2001):
    """Magnitudes at cumulative probabilities `u` for the exponential x erf-cutoff density."""
    u = np.asarray(u, dtype=float)
    m_min, m_max = np.broadcast_arrays(np.asarray(m_min, dtype=float), np.asarray(m_max, dtype=float))
    if (m_max <= m_min).any():
        raise ValueError(f"magnitude range is empty: [{m_min.min()}, {m_max.min()}]")
    t = np.linspace(0.0, 1.0, n_grid)
    grid = m_min[..., None] + (m_max - m_min)[..., None] * t
    pdf = 10.0 ** (slope_dex * (grid - m_cut)) * 0.5 * erfc(grid - m_cut)
    cdf = np.concatenate([np.zeros(grid.shape[:-1] + (1,)),
                          np.cumsum(0.5 * (pdf[..., 1:] + pdf[..., :-1]), axis=-1)], axis=-1)
    cdf /= cdf[..., -1:]
    if grid.ndim == 1:
        return np.interp(u, cdf, grid)
    return np.array([np.interp(ui, ci, gi) for ui, ci, gi in zip(np.broadcast_to(u, grid.shape[:-1]), cdf, grid)])


@lru_cache(maxsize=32)
def _law_table(slope_dex: float, m_cut: float, m_min: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(m_min, _FAINTEST_MAG + _STEP_MAG, _STEP_MAG)
    pdf = 10.0 ** (slope_dex * (grid - m_cut)) * 0.5 * erfc(grid - m_cut)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * _STEP_MAG)])
    return grid, cdf


def exp_erf_sample(u: float, slope_dex: float, m_cut: float, m_min: float, m_max: float) -> float:
    """One magnitude at cumulative probability `u` of the law on [m_min, m_max] (m_max <= 35), from a cached
    table of the law's CDF from m_min: the same distribution as `exp_erf_quantile`, a few microseconds."""
    if not m_min < m_max <= _FAINTEST_MAG:
        raise ValueError(f"magnitude range must satisfy m_min < m_max <= {_FAINTEST_MAG}: [{m_min}, {m_max}]")
    grid, cdf = _law_table(float(slope_dex), float(m_cut), float(m_min))
    total = float(np.interp(m_max, grid, cdf))
    if not 0.0 < total < np.inf:  # (NaN fails too)  # the table's end (35 mag) would be returned for every draw
        raise ValueError(f"the magnitude law (slope {slope_dex} dex/mag, cutoff {m_cut}) has no probability on "
                         f"[{m_min}, {m_max}] that floats can hold; bring the cutoff nearer the range")
    return float(np.interp(u * total, cdf, grid))
