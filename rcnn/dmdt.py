"""dm-dt images (Mahabal et al. 2017, arXiv:1709.06257): a light curve as the 2-D histogram of its pairwise
magnitude and time differences, normalised to the number of pairs, on semi-logarithmic bins.

Bins are the paper's: dt edges (days) [1/145, 2/145, 3/145, 4/145, 1/25, 2/25, 3/25, 1.5, 2.5, 3.5, 4.5,
5.5, 7, 10, 20, 30, 60, 90, 120, 240, 600, 960, 2000, 4000] and dm edges (mag) +-[0, 0.1, 0.2, 0.3, 0.5, 1,
1.5, 2, 2.5, 3, 5, 8]; pairs outside them are dropped. dm = m_later - m_earlier (positive: fading).
Magnitudes are asinh magnitudes (Lupton et al. 1999) of the eq. 4-scaled fluxes with softening = the flux
error, so faint and negative fluxes stay finite. For classification as data arrive, the image is recomputed
on every prefix: step k uses the images 0..k + n_w - 1, aligned with the recurrent models' steps.
"""
from __future__ import annotations

import numpy as np

DT_EDGES_D = np.array([1 / 145, 2 / 145, 3 / 145, 4 / 145, 1 / 25, 2 / 25, 3 / 25, 1.5, 2.5, 3.5, 4.5, 5.5, 7, 10,
                       20, 30, 60, 90, 120, 240, 600, 960, 2000, 4000])
_DM_POS = np.array([0.1, 0.2, 0.3, 0.5, 1, 1.5, 2, 2.5, 3, 5, 8])
DM_EDGES_MAG = np.concatenate([-_DM_POS[::-1], [0.0], _DM_POS])
SHAPE = (len(DM_EDGES_MAG) - 1, len(DT_EDGES_D) - 1)


def asinh_mag(flux: np.ndarray, flux_err: np.ndarray) -> np.ndarray:
    """Lupton et al. (1999) asinh magnitude with softening b = flux_err (zero point 0)."""
    b = np.maximum(np.abs(flux_err), 1e-12)
    return -2.5 / np.log(10) * (np.arcsinh(flux / (2 * b)) + np.log(b))


def dmdt_images(mag: np.ndarray, mjd: np.ndarray, mask: np.ndarray, n_w: int = 3) -> np.ndarray:
    """(N, T - n_w + 1, n_dm, n_dt) normalised dm-dt images of the prefixes ending at epochs n_w-1 .. T-1."""
    n, t = mag.shape
    i, j = np.triu_indices(t, k=1)                     # pairs i < j (epochs are in time order)
    valid = mask[:, i] & mask[:, j]
    dt = mjd[:, j] - mjd[:, i]
    dm = mag[:, j] - mag[:, i]
    bi = np.searchsorted(DM_EDGES_MAG, dm, side="right") - 1
    bj = np.searchsorted(DT_EDGES_D, dt, side="right") - 1
    inside = valid & (bi >= 0) & (bi < SHAPE[0]) & (bj >= 0) & (bj < SHAPE[1]) & np.isfinite(dm)
    counts = np.zeros((n, t, SHAPE[0] * SHAPE[1]), np.float32)   # pairs completed at epoch j
    rows, pairs = np.nonzero(inside)
    np.add.at(counts, (rows, j[pairs], bi[rows, pairs] * SHAPE[1] + bj[rows, pairs]), 1.0)
    cum = np.cumsum(counts, axis=1)[:, n_w - 1:]                  # prefixes ending at epoch n_w-1 .. T-1
    total = cum.sum(axis=2, keepdims=True)
    return (cum / np.maximum(total, 1.0)).reshape(n, t - n_w + 1, *SHAPE)
