"""Batched, GalSim-exact rendering of noiseless stamps: point source + optional host galaxy, per-epoch PSF.

The stamp is the pixel-integrated image (profile convolved with the PSF and the unit pixel, sampled at
pixel centres), exactly what GalSim's `drawImage(method='auto')` computes. We build it in Fourier space
for a whole batch at once:

    F(k) = [flux_src L(k) e^{-i k.x_src} + flux_gal G(S_gal k) e^{-i k.x_gal}] P(S_psf k) sinc(kx/2pi) sinc(ky/2pi)

with L(k) = sinc(k.u len / 2pi) the trail of a source moving `len` pixels along u during the exposure
(a uniform line segment centred on x_src; 1 for a fixed source), P, G the tabulated transforms of `profiles.ktable`, S the shear matrices, and one inverse real FFT
per stamp on an `fft_size` grid (the folding period, large enough that wrapped-around wings are
negligible; trails longer than fft_size - stamp_size get a larger grid, `trail_grid_size`).

Most stamps are a fixed point source under a round PSF (no host, no trail, no PSF shear). Their F is a
flux times P(|k| fwhm) sinc(kx/2pi) sinc(ky/2pi), even in each axis, times separable phases, so the
pixel values of the N-periodic image are a real matrix product (`_DirectSum`), with no FFT and no
complex arrays:

    img(Y, X) = flux / N^2  sum_{l, j >= 0} w_l cos(k_l (Y - dy)) pix(k_l) P(|(k_j, k_l)| fwhm) pix(k_j) w_j cos(k_j (X - dx))

k_j = 2 pi j / N, w_0 = 1, w_j = 2. Running j past the Nyquist frequency (j > N/2) adds the aliased
power that pixel sampling folds in, which the FFT drops: the sum stops where P is negligible, so small
PSFs (FWHM < 3 px, HiTS's best seeing) are exact too. Stamps with a host galaxy take the FFT unless
their PSF is that narrow; then the host is a direct sum too (`_DirectHostSum`: sines and cosines, as a
sheared galaxy is only point-symmetric). Parity with GalSim's own `drawImage` is shown by
`tests/test_render.py`.

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


def _sheared_kmod(kx2, kxy, ky2, g1, g2) -> np.ndarray:
    """|S k| on a grid (kx^2, kx ky, ky^2 arrays) for each row's shear (g1, g2), shape (B,) + grid."""
    a, b, c = (x.astype(np.float32)[:, None, None] for x in _shear_quadratic(g1, g2))
    return np.sqrt(a * kx2 + (2 * b) * kxy + c * ky2)


def _galaxy_transform(kmod, hosts: "HostParams", disk_table, bulge_table) -> np.ndarray:
    """Unit-flux, centred Fourier transforms of the bulge + disk hosts, given `kmod(g1, g2)` -> |S k| on a
    grid; shape (H,) + grid."""
    kd = kmod(hosts.disk_g1, hosts.disk_g2) * np.asarray(hosts.disk_hlr_px, np.float32)[:, None, None]
    kb = kmod(hosts.bulge_g1, hosts.bulge_g2) * np.asarray(hosts.bulge_hlr_px, np.float32)[:, None, None]
    bf = np.asarray(hosts.bulge_frac, np.float32)[:, None, None]
    return (1 - bf) * disk_table(kd) + bf * bulge_table(kb)


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
        return _sheared_kmod(self.kx2, self.kxy, self.ky2, g1, g2)

    def phase(self, dx, dy) -> np.ndarray:
        """e^{-i (kx dx + ky dy)}, separable, shape (B, N, M)."""
        ex = np.exp(-1j * (self.kx[None, :] * np.asarray(dx, np.float32)[:, None])).astype(np.complex64)
        ey = np.exp(-1j * (self.ky[None, :] * np.asarray(dy, np.float32)[:, None])).astype(np.complex64)
        return ey[:, :, None] * ex[:, None, :]


#: Fourier terms of the direct sum where the unit-flux PSF transform is below this are left out.
DIRECT_SUM_EPS = 1e-6
#: Stamps with a host go through the direct sums (not the FFT) when the PSF transform at the pixel
#: Nyquist frequency exceeds this: the FFT misses about that fraction of the peak in aliased power.
ALIASING_EPS = 5e-4
#: Stamps per batch of the direct host sums: their (2J+1) x (J+1) grids stay in cache.
HOST_BATCH = 16
#: Trailed stamps too long for their configured FFT grid get one larger by a multiple of this (px), so that
#: few grid sizes are made.
TRAIL_GRID_STEP_PX = 32


def trail_grid_size(n: int, stamp_size: int, trail_px) -> np.ndarray:
    """FFT grid size (px) for stamps trailed `trail_px` whose configured grid is `n`.

    The image is n-periodic: a trail's copy one period away comes trail/2 nearer the stamp than a point
    source's, and a trail longer than the grid crosses the stamp again (at 6 deg/day a HiTS stamp was 42% of
    its peak off). The grid is kept while the copy stays n/2 from the stamp's edge (trail <= n - stamp_size,
    27 px by default: HiTS's asteroids reach 18 px in 5,000; the wrapped light is then < 7e-4 of the peak at
    the widest HiTS PSF, 11 px), and grown in `TRAIL_GRID_STEP_PX` steps to keep that distance beyond it."""
    need = np.asarray(trail_px, np.float64) / 2 + (n + stamp_size) / 2
    steps = np.ceil(np.maximum(need - n, 0.0) / TRAIL_GRID_STEP_PX)
    return (n + TRAIL_GRID_STEP_PX * steps).astype(int)


class _DirectSum:
    """Round-PSF point sources as a direct real Fourier sum (module docstring), folding period `n`.

    Each stamp sums j = 0..J with J set by its own FWHM (the smallest multiple of 8 past which the PSF
    transform stays below `DIRECT_SUM_EPS`), so a stamp's values do not depend on its batch."""

    def __init__(self, n: int, stamp_size: int, psf_table):
        self.n, self.psf_table = n, psf_table
        above = np.flatnonzero(np.abs(psf_table.values) > DIRECT_SUM_EPS)
        self.q_cut = (above[-1] + 1) * psf_table.dq  # the PSF transform is negligible beyond q_cut
        self.offsets = (np.arange(stamp_size) - stamp_size // 2).astype(np.float32)  # Y or X of each row
        self._levels: dict = {}

    def terms(self, fwhm_px: np.ndarray) -> np.ndarray:
        """J of each stamp: the highest frequency index its sum needs."""
        j = np.ceil(self.q_cut / np.asarray(fwhm_px, np.float64) * self.n / (2 * np.pi))
        return (8 * np.ceil(j / 8)).astype(int)

    def _level(self, n_terms: int):
        if n_terms not in self._levels:
            k = (2 * np.pi / self.n * np.arange(n_terms + 1)).astype(np.float32)
            weight = np.where(np.arange(n_terms + 1) == 0, 1.0, 2.0) * np.sinc(k / (2 * np.pi))
            kabs = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
            unique, inverse = np.unique(kabs, return_inverse=True)
            self._levels[n_terms] = (k, weight.astype(np.float32), unique, inverse.reshape(kabs.shape))
        return self._levels[n_terms]

    def render(self, n_terms: int, flux_adu, dx_px, dy_px, fwhm_px, box_px: float = 0.0) -> np.ndarray:
        """Stamps (B, size, size) float32 of sources that all use `n_terms` (see `terms`)."""
        k, weight, unique, inverse = self._level(n_terms)
        if box_px > 0:  # uniform position within a box: one more separable sinc per axis
            weight = weight * np.sinc(k * box_px / (2 * np.pi)).astype(np.float32)

        def axis(shift):  # (B, size, J+1): w_j pix(k_j) cos(k_j (offset - shift))
            return weight * np.cos(k * (self.offsets[None, :, None] - np.asarray(shift, np.float32)[:, None, None]))

        fwhm = np.asarray(fwhm_px, np.float32)
        psf = np.take(self.psf_table(unique[None, :] * fwhm[:, None]), inverse, axis=1)  # C order for matmul
        rows = axis(dy_px) * (np.asarray(flux_adu, np.float32) / self.n ** 2)[:, None, None]
        return np.matmul(np.matmul(rows, psf), axis(dx_px).transpose(0, 2, 1))


class _DirectHostSum(_DirectSum):
    """Host galaxies under a round PSF as a direct real Fourier sum, folding period `n`.

    The host's transform E(k) = G(S k) P(|k| fwhm) pix(kx) pix(ky) is real and even under k -> -k
    (sheared, but point-symmetric), though not in each axis, so with u = (X - dx_host, Y - dy_host)

        img(Y, X) = flux / N^2  sum_{l = -J..J} sum_{j = 0..J} w_j E(k_j, k_l) [cos(k_l u_y) cos(k_j u_x) - sin(k_l u_y) sin(k_j u_x)]

    (w_0 = 1, w_j = 2): four small matmuls per stamp. J comes from the PSF as for point sources. Slower
    than the FFT, so the renderer uses it only where the FFT's cut at Nyquist would show: PSFs narrower
    than `fwhm_below_px` (transform above `ALIASING_EPS` at the Nyquist frequency)."""

    def __init__(self, n: int, stamp_size: int, psf_table, disk_table, bulge_table):
        super().__init__(n, stamp_size, psf_table)
        self.disk_table, self.bulge_table = disk_table, bulge_table
        above = np.flatnonzero(np.abs(psf_table.values) > ALIASING_EPS)
        self.fwhm_below_px = (above[-1] + 1) * psf_table.dq / np.pi  # P(pi fwhm) < ALIASING_EPS above it
        self._half: dict = {}

    def _half_plane(self, n_terms: int):
        """ky (2J+1,); kx^2, kx ky, ky^2 on the (ky, kx) grid; |k| there as unique values and inverse;
        pix(ky). The kx axis (0..J) and its weights w_j pix(k_j) are the point-source sum's (`_level`)."""
        if n_terms not in self._half:
            kx = self._level(n_terms)[0]
            ky = (2 * np.pi / self.n * np.arange(-n_terms, n_terms + 1)).astype(np.float32)
            shape = (len(ky), len(kx))
            kx2, ky2 = np.broadcast_to(kx[None, :] ** 2, shape), np.broadcast_to(ky[:, None] ** 2, shape)
            kxy = ky[:, None] * kx[None, :]
            unique, inverse = np.unique(np.sqrt(kx2 + ky2), return_inverse=True)
            pix_y = np.sinc(ky / (2 * np.pi)).astype(np.float32)
            self._half[n_terms] = (ky, kx2, kxy, ky2, unique, inverse.reshape(shape), pix_y)
        return self._half[n_terms]

    def shapes(self, n_terms: int, hosts: HostParams) -> np.ndarray:
        """Unit-flux host transforms G(S k) on the half-plane of `n_terms`, shape (H, 2J+1, J+1)."""
        _, kx2, kxy, ky2, *_ = self._half_plane(n_terms)
        return _galaxy_transform(lambda g1, g2: _sheared_kmod(kx2, kxy, ky2, g1, g2), hosts, self.disk_table,
                                 self.bulge_table)

    def render_hosts(self, n_terms: int, shapes: np.ndarray, flux_adu, dx_px, dy_px, fwhm_px) -> np.ndarray:
        """The host part (B, size, size) of stamps using `n_terms`, given each stamp's host shape (B, ...)."""
        kx, w_x, *_ = self._level(n_terms)
        ky, _, _, _, unique, inverse, pix_y = self._half_plane(n_terms)
        fwhm = np.asarray(fwhm_px, np.float32)
        e = np.take(self.psf_table(unique[None, :] * fwhm[:, None]), inverse, axis=1)  # C order for matmul
        e *= shapes
        uy = self.offsets[None, :, None] - np.asarray(dy_px, np.float32)[:, None, None]
        ux = self.offsets[None, :, None] - np.asarray(dx_px, np.float32)[:, None, None]
        scale = pix_y * (np.asarray(flux_adu, np.float32) / self.n ** 2)[:, None, None]  # (B, 1, 2J+1)
        cy, sy = scale * np.cos(ky * uy), scale * np.sin(ky * uy)
        cx, sx = (w_x * np.cos(kx * ux)).transpose(0, 2, 1), (w_x * np.sin(kx * ux)).transpose(0, 2, 1)
        return np.matmul(np.matmul(cy, e), cx) - np.matmul(np.matmul(sy, e), sx)


class Renderer:
    """Renders batches of noiseless stamps; construct once, call `render` many times."""

    def __init__(self, stamp_size: int = 21, fft_size: int = 48, host_fft_size: int = 64, psf: str = "moffat",
                 moffat_beta: float = 2.5, batch_size: int = 128):
        if psf not in PSF_MODELS:
            raise ValueError(f"psf must be one of {PSF_MODELS}, got {psf!r}")
        if stamp_size < 3 or stamp_size % 2 != 1 or min(fft_size, host_fft_size) < 2 * stamp_size:
            raise ValueError(f"stamp_size must be odd and >= 3, and FFT sizes >= 2*stamp_size; got {stamp_size}, "
                             f"{fft_size}, {host_fft_size}")
        self.stamp_size, self.batch_size = stamp_size, batch_size
        self.psf_table = ktable(psf, float(moffat_beta))
        self.disk_table = ktable("exponential")
        self.bulge_table = ktable("devaucouleurs")
        self._grids: dict[int, _Grid] = {}  # by size: the configured two, and long trails' larger ones
        self._point_grid, self._host_grid = self._grid(fft_size), self._grid(host_fft_size)
        self._direct = _DirectSum(fft_size, stamp_size, self.psf_table)
        self._direct_host = _DirectHostSum(host_fft_size, stamp_size, self.psf_table, self.disk_table,
                                           self.bulge_table)

    def host_shapes(self, hosts: HostParams, grid: "_Grid | None" = None) -> np.ndarray:
        """Unit-flux Fourier transforms of the host galaxies at their positions, shape (H, N, M)."""
        grid = grid or self._host_grid
        gal = _galaxy_transform(grid.kmod, hosts, self.disk_table, self.bulge_table)
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
            psf = np.take(self.psf_table(grid.kabs_unique[None, :] * fwhm[:, None]), grid.kabs_inverse, axis=1)
        f *= psf * grid.pixel
        img = np.fft.irfft2(f, s=(grid.n, grid.n))
        return img[:, grid.crop][:, :, grid.crop].astype(np.float32)

    def render(self, params: StampParams, hosts: HostParams | None = None, box_px: float = 0.0) -> np.ndarray:
        """Noiseless stamps (B, size, size) in ADU, float32. `box_px` > 0 averages each stamp over positions
        uniform within a box_px-wide square (photometry's template for an unknown sub-pixel position).

        Fixed sources under a round PSF go through the direct sums, grouped by their number of terms: all
        point sources, and those with a host when the PSF is narrower than the FFT's aliasing threshold
        (the host added by `_add_direct_hosts`). The others go through the FFT on the point-source grid,
        or the host grid when they have a host, either grown for long trails (`trail_grid_size`). Each group
        is computed in batches (`batch_size`, smaller on grown grids; direct host sums `HOST_BATCH`). A
        stamp's values do not depend on the batch.
        """
        host_index = np.asarray(params.host_index)
        if hosts is None and (host_index >= 0).any():
            raise ValueError("stamps refer to host galaxies (host_index >= 0) but no HostParams were given")
        out = np.empty((len(params), self.stamp_size, self.stamp_size), dtype=np.float32)
        simple = (np.asarray(params.trail_px) <= 0) & (np.asarray(params.psf_g1) == 0) & (np.asarray(params.psf_g2) == 0)
        simple &= (host_index < 0) | (np.asarray(params.fwhm_px) < self._direct_host.fwhm_below_px)
        n_terms = self._direct.terms(params.fwhm_px)
        for level in np.unique(n_terms[simple]):
            rows = np.flatnonzero(simple & (n_terms == level))
            for start in range(0, len(rows), self.batch_size):
                sel = rows[start:start + self.batch_size]
                out[sel] = self._direct.render(level, *(np.asarray(getattr(params, f))[sel] for f in
                                                        ("flux_adu", "dx_px", "dy_px", "fwhm_px")), box_px)
        self._add_direct_hosts(params, hosts, simple & (host_index >= 0), out)
        for base, rows in ((self._point_grid.n, np.flatnonzero(~simple & (host_index < 0))),
                           (self._host_grid.n, np.flatnonzero(~simple & (host_index >= 0)))):
            sizes = trail_grid_size(base, self.stamp_size, np.asarray(params.trail_px)[rows])
            for n in np.unique(sizes):
                grid = self._grid(int(n))
                batch = max(1, self.batch_size * base ** 2 // grid.n ** 2)  # the same memory on larger grids
                same = rows[sizes == n]
                for start in range(0, len(same), batch):
                    sel = same[start:start + batch]
                    out[sel] = self._render_chunk(params.take(sel), hosts, grid, box_px)
        return out

    def _grid(self, n: int) -> _Grid:
        """The FFT grid of size n (made once)."""
        if n not in self._grids:
            self._grids[n] = _Grid(n, self.stamp_size)
        return self._grids[n]

    def _add_direct_hosts(self, params: StampParams, hosts: HostParams | None, chosen: np.ndarray,
                          out: np.ndarray) -> None:
        """Add the host galaxies of the `chosen` stamps (round PSF, direct sums) to `out`."""
        host_index = np.asarray(params.host_index)
        n_terms = self._direct_host.terms(params.fwhm_px)
        for level in np.unique(n_terms[chosen]):
            rows = np.flatnonzero(chosen & (n_terms == level))
            used, inverse = np.unique(host_index[rows], return_inverse=True)
            shapes = self._direct_host.shapes(level, hosts.take(used))
            x, y = np.asarray(hosts.dx_px)[used][inverse], np.asarray(hosts.dy_px)[used][inverse]
            for start in range(0, len(rows), HOST_BATCH):
                part = slice(start, start + HOST_BATCH)
                sel = rows[part]
                out[sel] += self._direct_host.render_hosts(level, shapes[inverse[part]],
                                                           np.asarray(params.host_flux_adu)[sel], x[part], y[part],
                                                           np.asarray(params.fwhm_px)[sel])
