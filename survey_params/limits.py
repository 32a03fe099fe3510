"""Point-source depth from observing conditions: the 5-sigma limiting magnitude.

One relation, used wherever a depth is needed and the log lacks one: optimal (PSF-weighted) photometry
of a point source with a Gaussian PSF of the given FWHM has a noise-equivalent area
NEA = 4 pi sigma^2 pixels; the 5-sigma flux F solves F = 5 sqrt(F/gain + NEA * var_pix) with
var_pix = sky_adu/gain + (read_noise/gain)^2 (ADU^2), and m5 = zero_point - 2.5 log10(F / exp_time_s).
"""
from __future__ import annotations

import numpy as np

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def limiting_magnitude(seeing_arcsec, sky_adu, zero_point, exp_time_s, gain, read_noise_e,
                       pixel_scale_arcsec: float, nsigma: float = 5.0):
    """`nsigma` point-source limiting magnitude (AB mag) for the given conditions (arrays broadcast)."""
    sigma_px = np.asarray(seeing_arcsec) * FWHM_TO_SIGMA / pixel_scale_arcsec
    nea_px = 4.0 * np.pi * sigma_px ** 2
    gain = np.asarray(gain, dtype=float)
    var_pix_adu2 = np.asarray(sky_adu) / gain + (np.asarray(read_noise_e) / gain) ** 2
    a = nsigma ** 2 / gain
    flux_adu = 0.5 * (a + np.sqrt(a ** 2 + 4.0 * nsigma ** 2 * nea_px * var_pix_adu2))
    return np.asarray(zero_point) - 2.5 * np.log10(flux_adu / np.asarray(exp_time_s))
