"""Batched, GalSim-exact rendering of noiseless stamps: point source + optional host galaxy, per-epoch PSF.

The stamp is the pixel-integrated image (profile convolved with the PSF and the unit pixel, sampled at
pixel centres), exactly what GalSim's `drawImage(method='auto')` computes. We build it in Fourier space
for a whole batch at once:

    F(k) = [flux_src L(k) e^{-i k.x_src} + flux_gal G(S_gal k) e^{-i k.x_gal}] P(S_psf k) sinc(kx/2pi) sinc(ky/2pi)

with L(k) = sinc(k.u len / 2pi) the trail of a source moving `len` pixels along u during the exposure
(a uniform line segment centred on x_src; 1 for a fixed source), P, G the tabulated transforms of `profiles.ktable`, S the shear matrices, and one inverse real FFT
per stamp on an `fft_size` grid (the folding period, large enough that wrapped-around wings are
negligible). Parity with GalSim's own `drawImage` is shown by `tests/test_render.py`.

All lengths are in pixels; the stamp centre is pixel (size//2, size//2) and positions are offsets from it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .profiles import PSF_MODELS, ktable


@dataclass
class Arrays:
    """A dataclass of equal-length arrays that can be indexed and concatenated."""

    def take(self, idx):
        return type(self)(**{f.name: np.asarray(getattr(self, f.name))[idx] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: list):
        return cls(**{f.name: np.concatenate([np.asarray(getattr(p, f.name)) for p in parts]) for f in fields(cls)})

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))


@dataclass
class HostParams(Arrays):
    """Host galaxies, one row per host, arrays of shape (H,). Lengths in pixels.

    The galaxy is an exponential disk plus a de Vaucouleurs bulge (`bulge_frac` of the flux), each with
    its own half-light radius and reduced shear (g1, g2) in GalSim's convention, centred at
    (`dx_px`, `dy_px`) from the stamp centre. Its shape is the same at every epoch of an object, so the
    renderer computes it once per host and scales it by each stamp's `host_flux_adu`.
    """

    dx_px: np.ndarray
    dy_px: np.ndarray
    disk_hlr_px: np.ndarray
    bulge_hlr_px: np.ndarray
    bulge_frac: np.ndarray
    disk_g1: np.ndarray
    disk_g2: np.ndarray
    bulge_g1: np.ndarray
    bulge_g2: np.ndarray


@dataclass
class StampParams(Arrays):
    """Per-stamp rendering inputs, arrays of shape (B,). Lengths in pixels, fluxes in ADU (sky excluded).

    `host_index` points into a `HostParams` table (-1: no host); `host_flux_adu` is that host's total
    flux in this stamp. PSF shear (g1, g2) follows GalSim's convention. A moving source trails `trail_px`
    pixels at angle `trail_angle_rad` from the x axis (0: fixed).
    """

    flux_adu: np.ndarray
    dx_px: np.ndarray
    dy_px: np.ndarray
    fwhm_px: np.ndarray
    psf_g1: np.ndarray
    psf_g2: np.ndarray
    host_index: np.ndarray
    host_flux_adu: np.ndarray
    trail_px: np.ndarray
    trail_angle_rad: np.ndarray

    @classmethod
    def point_sources(cls, flux_adu, fwhm_px, dx_px=0.0, dy_px=0.0) -> "StampParams":
        """Point sources only (no host, round PSF); convenience for tests and benchmarks."""
        flux_adu = np.atleast_1d(np.asarray(flux_adu, dtype=float))
        b = lambda v: np.broadcast_to(np.asarray(v, dtype=float), flux_adu.shape).copy()  # noqa: E731
        z = np.zeros(flux_adu.shape)
        return cls(flux_adu, b(dx_px), b(dy_px), b(fwhm_px), z, z.copy(), np.full(flux_adu.shape, -1), z.copy(),
                   z.copy(), z.copy())


def _shear_quadratic(g1, g2):
    """Coefficients (a, b, c) with |S k|^2 = a kx^2 + 2 b kx ky + c ky^2 for GalSim's shear matrix S."""
    g1 = np.asarray(g1, dtype=np.float64)
    g2 = np.asarray(g2, dtype=np.float64)
    norm = 1.0 / (1.0 - g1 ** 2 - g2 ** 2)
    a = ((1 + g1) ** 2 + g2 ** 2) * norm
    b = (g2 * (1 + g1) + g2 * (1 - g1)) * norm
    c = ((1 - g1) ** 2 + g2 ** 2) * norm
    return a, b, c


class _Grid:
    """Wave numbers, pixel response and crop indices of one FFT grid of size n (the folding period)."""

    def __init__(self, n: int, stamp_size: int):
        self.n = n
        kx = (2 * np.pi * np.fft.rfftfreq(n)).astype(np.float32)
        ky = (2 * np.pi * np.fft.fftfreq(n)).astype(np.float32)
        self.kx, self.ky = kx, ky
        self.kx2 = np.broadcast_to(kx[None, :] ** 2, (n, len(kx))).astype(np.float32)
        self.ky2 = np.broadcast_to(ky[:, None] ** 2, (n, len(kx))).astype(np.float32)
        self.kxy = (kx[None, :] * ky[:, None]).astype(np.float32)
        # |k| takes few distinct values on the grid: round PSFs are evaluated there and gathered.
        kabs = np.sqrt(self.kx2 + self.ky2)
        self.kabs_unique, inverse = np.unique(kabs, return_inverse=True)
        self.kabs_inverse = inverse.reshape(kabs.shape)
        self.pixel = (np.sinc(kx / (2 * np.pi))[None, :] * np.sinc(ky / (2 * np.pi))[:, None]).astype(np.float32)
        self.crop = (np.arange(stamp_size) - stamp_size // 2) % n

    def kmod(self, g1, g2) -> np.ndarray:
        """|S k| on the grid for each stamp's shear, shape (B, N, M)."""
        a, b, c = (x.astype(np.float32)[:, None, None] for x in _shear_quadratic(g1, g2))
        return np.sqrt(a * self.kx2 + (2 * b) * self.kxy + c * self.ky2)

    def phase(self, dx, dy) -> np.ndarray:
        """e^{-i (kx dx + ky dy)}, separable, shape (B, N, M)."""
        ex = np.exp(-1j * (self.kx[None, :] * np.asarray(dx, np.float32)[:, None])).astype(np.complex64)
        ey = np.exp(-1j * (self.ky[None, :] * np.asarray(dy, np.float32)[:, None])).astype(np.complex64)
        return ey[:, :, None] * ex[:, None, :]


class Renderer:
    """Renders batches of noiseless stamps; construct once, call `render` many times."""

    def __init__(self, stamp_size: int = 21, fft_size: int = 48, host_fft_size: int = 64, psf: str = "moffat",
                 moffat_beta: float = 2.5, batch_size: int = 512):
        if psf not in PSF_MODELS:
            raise ValueError(f"psf must be one of {PSF_MODELS}, got {psf!r}")
        if stamp_size % 2 != 1 or min(fft_size, host_fft_size) < 2 * stamp_size:
            raise ValueError(f"stamp_size must be odd and FFT sizes >= 2*stamp_size; got {stamp_size}, "
                             f"{fft_size}, {host_fft_size}")
        self.stamp_size, self.batch_size = stamp_size, batch_size
        self.psf_table = ktable(psf, float(moffat_beta))
        self.disk_table = ktable("exponential")
        self.bulge_table = ktable("devaucouleurs")
        self._point_grid = _Grid(fft_size, stamp_size)
        self._host_grid = self._point_grid if host_fft_size == fft_size else _Grid(host_fft_size, stamp_size)

    def host_shapes(self, hosts: HostParams, grid: "_Grid | None" = None) -> np.ndarray:
        """Unit-flux Fourier transforms of the host galaxies at their positions, shape (H, N, M)."""
        grid = grid or self._host_grid
        kd = grid.kmod(hosts.disk_g1, hosts.disk_g2) * np.asarray(hosts.disk_hlr_px, np.float32)[:, None, None]
        kb = grid.kmod(hosts.bulge_g1, hosts.bulge_g2) * np.asarray(hosts.bulge_hlr_px, np.float32)[:, None, None]
        bf = np.asarray(hosts.bulge_frac, np.float32)[:, None, None]
        gal = (1 - bf) * self.disk_table(kd) + bf * self.bulge_table(kb)
        return gal * grid.phase(hosts.dx_px, hosts.dy_px)

    def _render_chunk(self, p: StampParams, hosts: HostParams | None, grid: _Grid, box_px: float = 0.0) -> np.ndarray:
        f = grid.phase(p.dx_px, p.dy_px)
        if box_px > 0:  # a source whose position is uniform within a box_px square: its expected image
            f *= (np.sinc(grid.kx * box_px / (2 * np.pi))[None, :] * np.sinc(grid.ky * box_px / (2 * np.pi))[:, None]
                  ).astype(np.float32)
        f *= np.asarray(p.flux_adu, np.float32)[:, None, None]
        moving = np.flatnonzero(np.asarray(p.trail_px) > 0)
        if len(moving):
            angle = np.asarray(p.trail_angle_rad, np.float32)[moving, None, None]
            k_along = grid.kx[None, None, :] * np.cos(angle) + grid.ky[None, :, None] * np.sin(angle)
            trail = np.asarray(p.trail_px, np.float32)[moving, None, None]
            f[moving] *= np.sinc(k_along * trail / (2 * np.pi)).astype(np.float32)
        with_host = np.flatnonzero(np.asarray(p.host_index) >= 0)
        if len(with_host):
            used, inverse = np.unique(np.asarray(p.host_index)[with_host], return_inverse=True)
            shapes = self.host_shapes(hosts.take(used), grid)
            f[with_host] += shapes[inverse] * np.asarray(p.host_flux_adu, np.float32)[with_host, None, None]
        g1, g2 = np.asarray(p.psf_g1), np.asarray(p.psf_g2)
        fwhm = np.asarray(p.fwhm_px, np.float32)
        if g1.any() or g2.any():
            psf = self.psf_table(grid.kmod(g1, g2) * fwhm[:, None, None])
        else:
            psf = self.psf_table(grid.kabs_unique[None, :] * fwhm[:, None])[:, grid.kabs_inverse]
        f *= psf * grid.pixel
        img = np.fft.irfft2(f, s=(grid.n, grid.n))
        return img[:, grid.crop][:, :, grid.crop].astype(np.float32)

    def render(self, params: StampParams, hosts: HostParams | None = None, box_px: float = 0.0) -> np.ndarray:
        """Noiseless stamps (B, size, size) in ADU, float32. `box_px` > 0 averages each stamp over positions
        uniform within a box_px-wide square (photometry's template for an unknown sub-pixel position).

        Stamps without a host use the smaller point-source grid, those with one the host grid; each
        group is computed in batches of `batch_size`. A stamp's values do not depend on the batch.
        """
        host_index = np.asarray(params.host_index)
        if hosts is None and (host_index >= 0).any():
            raise ValueError("stamps refer to host galaxies (host_index >= 0) but no HostParams were given")
        out = np.empty((len(params), self.stamp_size, self.stamp_size), dtype=np.float32)
        for grid, rows in ((self._point_grid, np.flatnonzero(host_index < 0)),
                           (self._host_grid, np.flatnonzero(host_index >= 0))):
            for start in range(0, len(rows), self.batch_size):
                sel = rows[start:start + self.batch_size]
                out[sel] = self._render_chunk(params.take(sel), hosts, grid, box_px)
        return out
