"""Magnitude <-> counts: eq. 1 of Carrasco-Davis et al. (2019), the one conversion used everywhere.

m = zero_point - 2.5 log10(ADU / exp_time_s)  <=>  ADU = exp_time_s * 10**(0.4 (zero_point - m)).
An infinite magnitude (no source) gives zero ADU.
"""
from __future__ import annotations

import numpy as np


def mag_to_adu(mag, zero_point, exp_time_s):
    """Total source counts in ADU for AB magnitude `mag` (inf -> 0)."""
    with np.errstate(over="ignore"):
        return np.asarray(exp_time_s) * np.power(10.0, 0.4 * (np.asarray(zero_point) - np.asarray(mag)))


def adu_to_mag(flux_adu, zero_point, exp_time_s):
    """AB magnitude of a source with `flux_adu` total counts (non-positive flux -> inf)."""
    flux_adu = np.asarray(flux_adu, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.asarray(zero_point) - 2.5 * np.log10(flux_adu / np.asarray(exp_time_s))
    return np.where(flux_adu > 0, mag, np.inf)
