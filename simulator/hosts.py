"""Host galaxies: an exponential disk plus a de Vaucouleurs bulge with SDSS-like parameters.

Draws (per object, so the galaxy looks the same at every epoch):
- g magnitude: galaxy counts d log N/dm = `host_count_slope_dex` (SDSS g: Yasuda et al. 2001, AJ 122,
  1104) times the survey's erf cutoff at `host_mag_cut`, on [host_mag_min, host_mag_max];
- disk half-light radius: log-normal around a size-magnitude relation, 0.2 dex scatter (Shen et al.
  2003, MNRAS 343, 978); bulge radius 0.4-1.0 times the disk's;
- bulge fraction: Beta(0.4, 0.6), U-shaped like SDSS `fracDeV` (most galaxies disk- or bulge-dominated);
- axis ratios: disks are thin oblate spheroids (intrinsic q0 = `host_disk_thickness`) at random
  inclination, q = sqrt(cos^2 i + q0^2 sin^2 i) (Hubble 1926); bulges q ~ N(0.75, 0.15) clipped to
  [0.3, 1] (Padilla & Strauss 2008, MNRAS 388, 1321); one position angle for both components.
- a source on the host sits at a radius drawn from the disk's light (p(r) ~ r e^{-r/r_s}), sheared with
  the disk; the stamp stays centred on the source, so the galaxy centre is at minus that offset.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .magnitudes import exp_erf_sample
from .settings import SimConfig

EXP_HLR_OVER_SCALE = 1.6783469900166605  # half-light radius / scale length of an exponential disk


def _shear(q: float, angle: float) -> tuple[float, float]:
    g = (1.0 - q) / (1.0 + q)
    return g * np.cos(2 * angle), g * np.sin(2 * angle)


@lru_cache(maxsize=1)
def _distances():
    """(z grid, distance modulus, kpc per arcsec) in the Planck 2018 cosmology, for SN hosts."""
    from astropy.cosmology import Planck18

    z = np.linspace(0.005, 3.0, 600)
    return z, np.asarray(Planck18.distmod(z).value), np.asarray(Planck18.kpc_proper_per_arcmin(z).value) / 60.0


def draw_host(rng: np.random.Generator, cfg: SimConfig, pixel_scale_arcsec: float, centred: bool,
              redshift: float | None = None) -> dict:
    """One host galaxy: magnitude and `HostParams` fields (pixels). `centred`: the galaxy is the target.

    With a `redshift` (a supernova's), the host sits at that distance: absolute g magnitude
    ~ N(host_abs_mag_g, host_abs_mag_sigma) made apparent with the distance modulus, and a physical disk
    half-light radius (Shen et al. 2003 late types: log R50 = -0.4 x 0.21 M + const, 0.2 dex scatter) seen
    at the angular size the cosmology gives. No K-correction: hosts are sketched at g-band rest luminosity.
    """
    if redshift is None:
        mag = exp_erf_sample(rng.random(), cfg.host_count_slope_dex, cfg.host_mag_cut, cfg.host_mag_min,
                             cfg.host_mag_max)
        log_hlr = (np.log10(cfg.host_disk_hlr_arcsec_at_g20) + cfg.host_size_mag_slope_dex * (mag - 20.0)
                   + cfg.host_size_scatter_dex * rng.standard_normal())
    else:
        z_grid, dm, kpc_per_arcsec = _distances()
        abs_mag = rng.normal(cfg.host_abs_mag_g, cfg.host_abs_mag_sigma)
        mag = float(abs_mag + np.interp(redshift, z_grid, dm))
        log_r_kpc = (np.log10(cfg.host_disk_hlr_kpc) - 0.4 * 0.21 * (abs_mag - cfg.host_abs_mag_g)
                     + cfg.host_size_scatter_dex * rng.standard_normal())
        log_hlr = log_r_kpc - np.log10(np.interp(redshift, z_grid, kpc_per_arcsec))
    disk_hlr_px = float(np.clip(10 ** log_hlr, 0.2, 4.0)) / pixel_scale_arcsec
    bulge_hlr_px = disk_hlr_px * rng.uniform(0.4, 1.0)
    bulge_frac = rng.beta(0.4, 0.6)
    cos_i = rng.random()
    q0 = cfg.host_disk_thickness
    q_disk = np.sqrt(cos_i ** 2 + q0 ** 2 * (1.0 - cos_i ** 2))
    q_bulge = float(np.clip(rng.normal(0.75, 0.15), 0.3, 1.0))
    angle = rng.uniform(0.0, np.pi)
    disk_g1, disk_g2 = _shear(q_disk, angle)
    bulge_g1, bulge_g2 = _shear(q_bulge, angle)
    if centred:
        dx, dy = rng.uniform(-0.5, 0.5, 2)
    else:
        r = rng.gamma(2.0, disk_hlr_px / EXP_HLR_OVER_SCALE)
        phi = rng.uniform(0.0, 2 * np.pi)
        x, y = r * np.cos(phi), r * np.sin(phi)
        norm = 1.0 / np.sqrt(1.0 - disk_g1 ** 2 - disk_g2 ** 2)  # GalSim's shear matrix, applied to the offset
        sx = norm * ((1 + disk_g1) * x + disk_g2 * y)
        sy = norm * (disk_g2 * x + (1 - disk_g1) * y)
        dx, dy = -sx, -sy
    return {"mag": mag, "dx_px": float(dx), "dy_px": float(dy), "disk_hlr_px": disk_hlr_px,
            "bulge_hlr_px": float(bulge_hlr_px), "bulge_frac": float(bulge_frac), "disk_g1": float(disk_g1),
            "disk_g2": float(disk_g2), "bulge_g1": float(bulge_g1), "bulge_g2": float(bulge_g2)}
