"""Simulate a contiguous range of objects (a shard): draw, render in batches, add noise.

Object i has class `classes[i % C]` and its own random stream `SeedSequence(seed, spawn_key=(i,))`, so
its stamps do not depend on which shard or worker made it. Draw order per object is fixed: conditions,
light curve, host, per-epoch centring and PSF shear, orientation, then noise.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from survey_params import make_sampler
from survey_params.sampling import EPOCH_FIELDS

from .classes import model_for
from .flux import mag_to_adu
from .hosts import draw_host
from .noise import add_ccd_noise
from .render import HostParams, Renderer, StampParams
from .settings import SimConfig

HOST_FIELDS = ("dx_px", "dy_px", "disk_hlr_px", "bulge_hlr_px", "bulge_frac", "disk_g1", "disk_g2",
               "bulge_g1", "bulge_g2")


def object_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of object `index` in a run with `seed`."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(index,))))


@lru_cache(maxsize=4)
def _setup(cfg_json: str):
    cfg = SimConfig(**json.loads(cfg_json))
    sampler = make_sampler(cfg.survey, cfg.conditions, cfg.seeing_limit_arcsec, cfg.max_epochs)
    renderer = Renderer(cfg.stamp_size, cfg.fft_size, cfg.host_fft_size, cfg.psf, cfg.moffat_beta)
    return cfg, sampler, renderer


def n_epochs(cfg: SimConfig) -> int:
    """Epoch axis length T of a dataset made with `cfg`."""
    return _setup(cfg.content_json())[1].n_epochs


def split_of(cfg: SimConfig, within_class_index: np.ndarray) -> np.ndarray:
    """0 train / 1 validation / 2 test: the first fractions of each class's objects, in index order."""
    n = cfg.n_per_class
    n_train = int(round(n * cfg.split_fractions[0]))
    n_val = int(round(n * cfg.split_fractions[1]))
    j = np.asarray(within_class_index)
    return np.where(j < n_train, 0, np.where(j < n_train + n_val, 1, 2)).astype(np.uint8)


def simulate_shard(cfg_json: str, start: int, stop: int) -> dict:
    """Arrays for objects start..stop-1, keyed by dataset path (see `simulator.dataset`)."""
    cfg, sampler, renderer = _setup(cfg_json)
    n_cls = len(cfg.classes)
    T, S = sampler.n_epochs, cfg.stamp_size
    scale = sampler.pixel_scale_arcsec
    draws, host_rows, stamp_parts = [], [], []
    for i in range(start, stop):
        rng = object_rng(cfg.seed, i)
        label = i % n_cls
        cname = cfg.classes[label]
        cond = sampler.draw(rng)
        mag, truth = model_for(cname)(rng, cond, cfg)
        frac = cfg.host_fraction_supernova if cname == "supernova" else cfg.host_fraction_other
        has_host = cname == "galaxy" or rng.random() < frac
        host = draw_host(rng, cfg, scale, centred=cname == "galaxy") if has_host else None
        dx, dy = rng.uniform(-0.5, 0.5, (2, T))
        psf_g1, psf_g2 = (rng.normal(0.0, cfg.psf_shear_rms, (2, T)) if cfg.psf_shear_rms > 0 else np.zeros((2, T)))
        rotation, mirror = int(rng.integers(4)), bool(rng.integers(2))
        valid = np.flatnonzero(cond.mask)
        host_index = -1
        if host is not None:
            host_index = len(host_rows)
            host_rows.append(host)
        stamp_parts.append(StampParams(
            flux_adu=np.nan_to_num(mag_to_adu(mag[valid], cond.zero_point[valid], cond.exp_time_s[valid])),
            dx_px=dx[valid], dy_px=dy[valid], fwhm_px=cond.seeing_arcsec[valid] * cfg.psf_fwhm_per_seeing / scale,
            psf_g1=psf_g1[valid], psf_g2=psf_g2[valid], host_index=np.full(len(valid), host_index),
            host_flux_adu=(mag_to_adu(host["mag"], cond.zero_point[valid], cond.exp_time_s[valid])
                           if host is not None else np.zeros(len(valid)))))
        draws.append((rng, label, cname, cond, mag, truth, host, dx, dy, rotation, mirror, valid))
    hosts = (HostParams(**{k: np.array([h[k] for h in host_rows]) for k in HOST_FIELDS}) if host_rows else None)
    noiseless = renderer.render(StampParams.concatenate(stamp_parts), hosts)

    n = stop - start
    out = {
        "stamps": np.zeros((n, T, S, S), np.float32),
        "mjd": np.full((n, T), np.nan),
        "mask": np.zeros((n, T), bool),
        "label": np.zeros(n, np.int16),
        "split": split_of(cfg, np.arange(start, stop) // n_cls),
        "truth/mag": np.full((n, T), np.inf, np.float32),
        "truth/has_host": np.zeros(n, bool),
        "truth/host_mag": np.full(n, np.nan, np.float32),
        "truth/field": np.empty(n, dtype=object),
        "truth/ccd": np.zeros(n, np.int32),
        "truth/object_index": np.arange(start, stop, dtype=np.int64),
        "truth/dx_px": np.full((n, T), np.nan, np.float32),
        "truth/dy_px": np.full((n, T), np.nan, np.float32),
        "truth/rotation": np.zeros(n, np.uint8),
        "truth/mirror": np.zeros(n, bool),
        "truth/class_mean_mag": np.full(n, np.nan, np.float32),
        "truth/asteroid_epoch": np.full(n, -1, np.int16),
    }
    for k in EPOCH_FIELDS:
        out[f"conditions/{k}"] = np.full((n, T), np.nan, np.float32)
    for k in ("gain", "read_noise", "saturation"):
        out[f"conditions/{k}"] = np.full((n, T), np.nan, np.float32)
    for k in HOST_FIELDS:
        out[f"truth/host/{k}"] = np.full(n, np.nan, np.float32)

    offset = 0
    for o, (rng, label, cname, cond, mag, truth, host, dx, dy, rotation, mirror, valid) in enumerate(draws):
        nv = len(valid)
        clean = np.zeros((T, S, S), np.float32)
        clean[valid] = noiseless[offset:offset + nv]
        offset += nv
        clean = np.rot90(clean, rotation, axes=(1, 2))
        if mirror:
            clean = clean[:, :, ::-1]
        noisy = add_ccd_noise(rng, clean[valid], cond.sky_adu[valid], cond.gain, cond.read_noise, cond.saturation)
        out["stamps"][o, valid] = noisy
        out["mjd"][o] = cond.mjd
        out["mask"][o] = cond.mask
        out["label"][o] = label
        out["truth/mag"][o] = mag
        out["truth/has_host"][o] = host is not None
        out["truth/field"][o] = cond.field
        out["truth/ccd"][o] = cond.ccd
        out["truth/dx_px"][o, valid] = dx[valid]
        out["truth/dy_px"][o, valid] = dy[valid]
        out["truth/rotation"][o] = rotation
        out["truth/mirror"][o] = mirror
        out["truth/class_mean_mag"][o] = truth.get("mean_mag", np.nan)
        out["truth/asteroid_epoch"][o] = truth.get("epoch", -1)
        for k in EPOCH_FIELDS:
            out[f"conditions/{k}"][o] = getattr(cond, k)
        for k in ("gain", "read_noise", "saturation"):
            out[f"conditions/{k}"][o, valid] = getattr(cond, k)
        if host is not None:
            out["truth/host_mag"][o] = host["mag"]
            for k in HOST_FIELDS:
                out[f"truth/host/{k}"][o] = host[k]
    return out
