"""CCD noise: sky, Poisson noise on everything, Gaussian read noise, saturation (section 2.3 of the paper).

In electrons: N_e ~ Poisson(gain * (image_adu + sky_adu)) + Normal(0, read_noise_e); back to ADU by
dividing by the gain; values above the CCD's saturation level are clipped to it. The variance per pixel
is therefore (image_adu + sky_adu)/gain + (read_noise_e/gain)^2 in ADU^2.

Poisson sampling is exact and vectorised: one trial of Hörmann's PTRS (transformed rejection with
squeeze, 1993; the algorithm numpy's `Generator.poisson` uses for means >= 10) runs on every pixel at
once, and the ~12% of pixels it rejects, and means below 10, get numpy's own sampler. An accepted trial
of a rejection sampler is a draw from the target distribution, so every pixel is exactly Poisson. numpy
alone draws one pixel at a time (~33 ns per pixel here; the vectorised trial ~12 ns). Read noise comes
from Box-Muller pairs (`_box_muller`: ~3 ns per value after the uniforms, numpy's ziggurat ~9.5 ns).
Together the noise of a stamp went from ~22 to ~16 us.

Random streams: each stream (one per simulated object) draws, in this order, the trial's two uniforms
per pixel, its rejected pixels' counts and its read noise, so the result depends only on the stream and
its stamps, not on which other objects are noised in the same call.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln

#: Means below this use numpy's sampler directly (PTRS is built for larger ones; numpy switches there too).
PTRS_MIN_MEAN = 10.0
#: Pixels noised per vectorised pass (arrays stay in cache).
PASS_PIXELS = 1 << 15


def ptrs_trial(mean: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One PTRS trial per element (Hörmann 1993, as in numpy's `random_poisson_ptrs`): (count, accepted).

    `mean` >= 10; `u`, `v` independent uniforms on [0, 1). Arithmetic in place: this is the hot loop."""
    b = np.sqrt(mean)
    b *= 2.53
    b += 0.931
    a = b * 0.02483
    a -= 0.059
    vr = b - 2.0
    np.divide(-3.6224, vr, out=vr)
    vr += 0.9277
    u = u - 0.5
    us = np.abs(u)
    np.subtract(0.5, us, out=us)
    k = np.divide(a, us)
    k *= 2.0
    k += b
    k *= u
    k += mean
    k += 0.43
    np.floor(k, out=k)
    accepted = us >= 0.07
    accepted &= v <= vr  # the squeeze: most trials end here
    hard = np.flatnonzero(~accepted)
    m, kh, uh, vh, bh, ah = mean[hard], k[hard], us[hard], v[hard], b[hard], a[hard]
    inv_alpha = 1.1239 + 1.1328 / (bh - 3.4)
    with np.errstate(divide="ignore"):  # log(v = 0) = -inf: accepted, as in numpy
        ok = (kh >= 0) & ~((uh < 0.013) & (vh > uh))
        ok &= (np.log(vh) + np.log(inv_alpha) - np.log(ah / (uh * uh) + bh)
               <= -m + kh * np.log(m) - gammaln(kh + 1.0))
    accepted[hard] = ok
    return k, accepted


def add_ccd_noise(rng: np.random.Generator, image_adu: np.ndarray, sky_adu, gain, read_noise_e,
                  saturation_adu) -> np.ndarray:
    """Noisy stamps (float32 ADU, sky included) from noiseless `image_adu` (..., H, W), one random stream.

    `sky_adu`, `gain`, `read_noise_e`, `saturation_adu` are scalars or arrays broadcasting against the
    leading axes (e.g. one value per epoch, shape (T,)). Tiny negative noiseless values (FFT ringing far
    from the source) are clipped to zero before drawing the Poisson counts.
    """
    image = np.asarray(image_adu)
    lead = image.shape[:-2]
    per_stamp = lambda v: np.broadcast_to(np.asarray(v, np.float64), lead).reshape(-1)  # noqa: E731
    stamps = image.reshape((-1,) + image.shape[-2:])
    out = add_ccd_noise_streams([rng], stamps, [len(stamps)], per_stamp(sky_adu), per_stamp(gain),
                                per_stamp(read_noise_e), per_stamp(saturation_adu))
    return out.reshape(image.shape)


def add_ccd_noise_streams(rngs: Sequence[np.random.Generator], image_adu: np.ndarray, counts: Sequence[int],
                          sky_adu: np.ndarray, gain: np.ndarray, read_noise_e: np.ndarray,
                          saturation_adu: np.ndarray) -> np.ndarray:
    """Noisy stamps (float32 ADU) from noiseless `image_adu` (S, H, W): the first counts[0] stamps with
    rngs[0], the next counts[1] with rngs[1], ...; the other arguments are per stamp, shape (S,)."""
    image = np.asarray(image_adu)
    n_pix = image.shape[1] * image.shape[2]
    out = np.empty(image.shape, np.float32)
    first = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    group = 0
    while group < len(rngs):  # whole streams per pass, about PASS_PIXELS pixels
        last = int(np.searchsorted(first, first[group] + max(PASS_PIXELS // n_pix, 1), side="right")) - 1
        last = min(max(last, group + 1), len(rngs))
        a, b = first[group], first[last]
        out[a:b] = _noise_pass(rngs[group:last], image[a:b], np.diff(first[group:last + 1]), sky_adu[a:b],
                               gain[a:b], read_noise_e[a:b], saturation_adu[a:b])
        group = last
    return out


def _noise_pass(rngs, image, counts, sky, gain, read_noise, saturation) -> np.ndarray:
    """`add_ccd_noise_streams` for a few whole streams (arrays small enough to stay in cache)."""
    n_pix = image.shape[1] * image.shape[2]
    per_pixel = lambda v: np.repeat(np.asarray(v, np.float64), n_pix)  # noqa: E731
    g = per_pixel(gain)
    mean = np.maximum(image.reshape(-1) + per_pixel(sky), 0.0) * g
    size = len(mean)
    bounds = np.concatenate([[0], np.cumsum(counts) * n_pix])  # pixels of each stream
    normals = np.concatenate([[0], np.cumsum((np.diff(bounds) + 1) // 2 * 2)])  # an even number each
    u, v, w = np.empty(size), np.empty(size), np.empty(normals[-1])
    for rng, lo, hi in zip(rngs, bounds[:-1], bounds[1:]):
        rng.random(out=u[lo:hi])
        rng.random(out=v[lo:hi])
    electrons, accepted = ptrs_trial(np.maximum(mean, PTRS_MIN_MEAN), u, v)
    accepted &= mean >= PTRS_MIN_MEAN
    for rng, lo, hi, zlo, zhi in zip(rngs, bounds[:-1], bounds[1:], normals[:-1], normals[1:]):
        redo = lo + np.flatnonzero(~accepted[lo:hi])
        electrons[redo] = rng.poisson(mean[redo])
        rng.random(out=w[zlo:zhi])
    z = _box_muller(w)
    if normals[-1] != size:  # streams with an odd number of pixels leave one normal unused
        z = z[np.arange(size) + np.repeat(normals[:-1] - bounds[:-1], np.diff(bounds))]
    z *= per_pixel(read_noise)
    z += electrons
    z /= g
    np.minimum(z, per_pixel(saturation), out=z)
    return z.reshape(image.shape).astype(np.float32)


def _box_muller(w: np.ndarray) -> np.ndarray:
    """Standard normals from uniforms `w` (even length), two per consecutive pair (Box and Muller 1958):
    the radius in float64 (tails to 8.6 sigma), the angle's cosine and sine in float32 (numpy's float64
    ones cost 15 ns each; float32 moves a value by < 1e-6 of the radius, < 1e-5 sigma)."""
    pairs = w.reshape(-1, 2)
    radius = np.sqrt(-2.0 * np.log1p(-pairs[:, 0]))
    angle = (2.0 * np.pi * pairs[:, 1]).astype(np.float32)
    z = np.empty_like(pairs)
    np.multiply(radius, np.cos(angle), out=z[:, 0])
    np.multiply(radius, np.sin(angle), out=z[:, 1])
    return z.reshape(-1)
