"""CCD noise: sky, Poisson noise on everything, Gaussian read noise, saturation (section 2.3 of the paper).

In electrons: N_e ~ Poisson(gain * (image_adu + sky_adu)) + Normal(0, read_noise_e); back to ADU by
dividing by the gain; values above the CCD's saturation level are clipped to it. The variance per pixel
is therefore (image_adu + sky_adu)/gain + (read_noise_e/gain)^2 in ADU^2.
"""
from __future__ import annotations

import numpy as np


def add_ccd_noise(rng: np.random.Generator, image_adu: np.ndarray, sky_adu, gain, read_noise_e,
                  saturation_adu) -> np.ndarray:
    """Noisy stamps (float32 ADU, sky included) from noiseless `image_adu` (..., H, W).

    `sky_adu`, `gain`, `read_noise_e`, `saturation_adu` are scalars or arrays broadcasting against the
    leading axes (e.g. one value per epoch, shape (T,)). Tiny negative noiseless values (FFT ringing far
    from the source) are clipped to zero before drawing the Poisson counts.
    """
    expand = lambda v: np.asarray(v, dtype=np.float64)[..., None, None]  # noqa: E731
    gain = expand(gain)
    expected_e = np.maximum(image_adu + expand(sky_adu), 0.0) * gain
    electrons = rng.poisson(expected_e).astype(np.float64)
    electrons += rng.normal(0.0, 1.0, size=electrons.shape) * expand(read_noise_e)
    adu = electrons / gain
    return np.minimum(adu, expand(saturation_adu)).astype(np.float32)
