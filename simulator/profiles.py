"""Radial profiles in Fourier space, tabulated once from GalSim, and their GalSim reference objects.

Every profile used by the renderer is circular before shearing, so its Fourier transform is a 1-D
function of q = |k| * size. `ktable` tabulates that function from GalSim's own `kValue` for a unit-size
profile (PSFs: size = FWHM; galaxy components: size = half-light radius), so the batched renderer and
GalSim agree on the profile by construction, and the parity tests check everything else (pixel response,
shear, offsets, folding).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import galsim
import numpy as np

PSF_MODELS = ("moffat", "kolmogorov")
#: GalSim accuracy for reference images: tighter than its defaults so that it is a fair reference.
REFERENCE_GSPARAMS = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-6)


def galsim_profile(kind: str, size: float, beta: float = 2.5, gsparams=None) -> galsim.GSObject:
    """The GalSim object of unit flux for `kind` with `size` (FWHM for PSFs, half-light radius otherwise)."""
    if kind == "moffat":
        return galsim.Moffat(beta=beta, fwhm=size, gsparams=gsparams)
    if kind == "kolmogorov":
        return galsim.Kolmogorov(fwhm=size, gsparams=gsparams)
    if kind == "exponential":
        return galsim.Exponential(half_light_radius=size, gsparams=gsparams)
    if kind == "devaucouleurs":
        return galsim.DeVaucouleurs(half_light_radius=size, gsparams=gsparams)
    raise ValueError(f"unknown profile {kind!r}; known: moffat, kolmogorov, exponential, devaucouleurs")


@dataclass(frozen=True)
class KTable:
    """F(q) on a uniform grid q = 0, dq, ..., q_max (q = |k| size, k in radians per unit length)."""

    dq: float
    values: np.ndarray

    @cached_property
    def _lerp(self) -> tuple[np.ndarray, np.ndarray]:
        """(value, slope) per cell; the last cell is 0 with slope 0, so clipping q there gives zero."""
        v = np.asarray(self.values)
        return np.append(v[:-1], 0).astype(v.dtype), np.append(np.diff(v), 0).astype(v.dtype)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """Linear interpolation; zero beyond the table (where every tabulated profile is negligible)."""
        value, slope = self._lerp
        x = np.minimum(q * (1.0 / self.dq), len(value) - 1).astype(q.dtype, copy=False)
        i = x.astype(np.intp)
        return np.take(value, i) + (x - np.trunc(x)) * np.take(slope, i)


@lru_cache(maxsize=None)
def ktable(kind: str, beta: float = 2.5) -> KTable:
    """Tabulated Fourier transform of the unit-size, unit-flux profile `kind`."""
    q_max, dq = (60.0, 0.004) if kind in PSF_MODELS else (400.0, 0.01)
    obj = galsim_profile(kind, 1.0, beta)
    q = np.arange(0.0, q_max + dq, dq)
    if kind == "exponential":  # analytic: (1 + (k r0)^2)^-3/2 with r0 = hlr / 1.6783469900166605
        values = (1.0 + (q / 1.6783469900166605) ** 2) ** -1.5
    else:  # GalSim's kValue along the kx axis, drawn in one call (same values as obj.kValue(q, 0))
        kimage = galsim.ImageCD(2 * len(q) - 1, 1, scale=dq)  # bounds -n+1..n-1: column n-1 is k = 0
        obj.drawKImage(image=kimage)
        values = kimage.array[0, len(q) - 1:].real
    return KTable(dq=dq, values=values.astype(np.float32))
