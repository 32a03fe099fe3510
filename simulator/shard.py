"""Simulate a contiguous range of objects (a shard): draw, render in batches, add noise.

Object i has class `classes[i % C]` and its own random stream `SeedSequence(seed, spawn_key=(i,))`, so
its stamps do not depend on which shard or worker made it. Draw order per object is fixed: conditions,
light curve, window, host, per-epoch centring and PSF shear, orientation, zero-point error, then noise.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from survey_params import make_sampler
from survey_params.sampling import EPOCH_FIELDS

from .classes import ALERT_CLASSES, MODELS, TRUTH_FLOATS, TRUTH_TEXT, load_models
from .flux import mag_to_adu
from .hosts import draw_host
from .noise import add_ccd_noise_streams
from .render import HostParams, Renderer, StampParams
from .settings import SimConfig, psf_fwhm_arcsec
from .templates import resolve_templates

HOST_FIELDS = ("dx_px", "dy_px", "disk_hlr_px", "bulge_hlr_px", "bulge_frac", "disk_g1", "disk_g2",
               "bulge_g1", "bulge_g2")


def object_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of object `index` in a run with `seed`."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(index,))))


@lru_cache(maxsize=4)
def _setup(cfg_json: str):
    cfg = SimConfig(**json.loads(cfg_json))
    sampler = make_sampler(cfg.survey, cfg.conditions, cfg.seeing_limit_arcsec)
    renderer = Renderer(cfg.stamp_size, cfg.fft_size, cfg.host_fft_size, cfg.psf, cfg.moffat_beta)
    depth = cfg.sn_depth_mag
    if depth is None and "supernova" in cfg.classes:  # only supernovae need it: 300 condition draws
        depth = survey_depth(sampler)
    models = load_models(cfg, resolve_templates(cfg.templates), depth)
    return cfg, sampler, renderer, models


def survey_depth(sampler, n_objects: int = 300) -> float:
    """The deepest 5-sigma limit among `n_objects` objects' epochs (a fixed draw: part of the survey, not
    of a dataset's randomness); bounds the redshifts worth drawing supernovae at."""
    rng = np.random.default_rng(0)  # one stream: the objects draw from it in turn
    return float(max(np.max(c.limmag5[c.mask]) for c in sampler.draw_many([rng] * n_objects)))


def n_epochs(cfg: SimConfig) -> int:
    """Epoch axis length T of a dataset made with `cfg`: N_d's cap, or the survey's longest sequence."""
    longest = _setup(cfg.content_json())[1].n_epochs
    return longest if cfg.max_epochs is None else min(longest, cfg.max_epochs)


def pixel_scale_arcsec(cfg: SimConfig) -> float:
    """The survey's pixel scale (stored with each dataset: photometry needs the PSF in pixels)."""
    return float(_setup(cfg.content_json())[1].pixel_scale_arcsec)


def choose_window(rng: np.random.Generator, cname: str, mag: np.ndarray, cond, cfg: SimConfig, n_dates: int):
    """(epoch indices of the object's sequence, alert position in it or -1), Carrasco-Davis et al. sec. 3.1.

    Supernovae and asteroids: the alert is the first epoch brighter than the 5-sigma limit, and the
    sequence starts `pre_alert_epochs` before it (or at the first epoch). Other classes start at a random
    epoch that leaves at least `min_dates` epochs. At most `n_dates` epochs are kept."""
    valid = np.flatnonzero(cond.mask)
    alert = -1
    if cname in ALERT_CLASSES:
        detected = np.flatnonzero(mag[valid] < cond.limmag5[valid])
        if not len(detected):
            raise AssertionError(f"{cname} model returned an undetectable object")  # models guarantee detection
        first = int(detected[0])
        start = max(first - cfg.pre_alert_epochs, 0)
        alert = first - start
    else:
        start = int(rng.integers(max(len(valid) - cfg.min_dates, 0) + 1))
    return valid[start:start + n_dates], alert


MAX_CONDITION_DRAWS = 100


class _Drawn(NamedTuple):
    """One object's draws, kept from its set-up until its stamps get noise (with the same `rng`)."""

    rng: np.random.Generator
    label: int
    cond: object  # ObjectConditions of the window
    mag: np.ndarray
    truth: dict
    host: dict | None
    dx: np.ndarray
    dy: np.ndarray
    rotation: int
    mirror: bool
    valid: np.ndarray
    zp_error: np.ndarray
    fwhm_arcsec: np.ndarray


def split_of(cfg: SimConfig, within_class_index: np.ndarray) -> np.ndarray:
    """0 train / 1 validation / 2 test: the first fractions of each class's objects, in index order."""
    n = cfg.n_per_class
    n_train = int(round(n * cfg.split_fractions[0]))
    n_val = int(round(n * cfg.split_fractions[1]))
    j = np.asarray(within_class_index)
    return np.where(j < n_train, 0, np.where(j < n_train + n_val, 1, 2)).astype(np.uint8)


def simulate_shard(cfg_json: str, start: int, stop: int) -> dict:
    """Arrays for objects start..stop-1, keyed by dataset path (see `simulator.dataset`)."""
    cfg, sampler, renderer, models = _setup(cfg_json)
    n_cls = len(cfg.classes)
    T, S = n_epochs(cfg), cfg.stamp_size
    scale = sampler.pixel_scale_arcsec
    draws, host_rows, stamp_parts = [], [], []
    rngs = [object_rng(cfg.seed, i) for i in range(start, stop)]
    first_conditions = sampler.draw_many(rngs)  # each object's first draw, all at once
    for i, rng, first in zip(range(start, stop), rngs, first_conditions):
        label = i % n_cls
        cname = cfg.classes[label]
        for attempt in range(MAX_CONDITION_DRAWS):
            full = sampler.draw(rng) if attempt else first
            drawn = MODELS[cname](rng, full, cfg, models)
            if drawn is not None:
                break
        else:
            raise RuntimeError(f"object {i}: no {cname} detectable in {MAX_CONDITION_DRAWS} draws of conditions; "
                               "is the survey too shallow?")
        full_mag, truth = drawn
        window, alert = choose_window(rng, cname, full_mag, full, cfg, T)
        cond = full.window(window, T)
        mag = np.full(T, np.inf)
        mag[:len(window)] = full_mag[window]
        truth.update(alert_epoch=alert, window_start=int(window[0]))  # valid epochs are packed first
        frac = cfg.host_fraction_supernova if cname == "supernova" else cfg.host_fraction_other
        has_host = cname == "galaxy" or rng.random() < frac
        host = (draw_host(rng, cfg, scale, centred=cname == "galaxy", redshift=truth.get("redshift"))
                if has_host else None)
        dx, dy = rng.uniform(-0.5, 0.5, (2, T))
        psf_g1, psf_g2 = (rng.normal(0.0, cfg.psf_shear_rms, (2, T)) if cfg.psf_shear_rms > 0 else np.zeros((2, T)))
        rotation, mirror = int(rng.integers(4)), bool(rng.integers(2))
        zp_error = rng.normal(0.0, cfg.zero_point_error_mag, T) if cfg.zero_point_error_mag > 0 else np.zeros(T)
        fwhm_arcsec = psf_fwhm_arcsec(cond.seeing_arcsec, cfg.psf_fwhm_per_seeing, cfg.psf_fwhm_offset_arcsec)
        if cfg.psf_fwhm_scatter > 0:
            fwhm_arcsec = fwhm_arcsec * np.exp(rng.normal(0.0, cfg.psf_fwhm_scatter, T))
        valid = np.flatnonzero(cond.mask)
        zp_true = cond.zero_point[valid] + zp_error[valid]
        trail_px = np.where(np.isfinite(mag[valid]), truth.get("trail_arcsec", 0.0) / scale, 0.0)
        host_index = -1
        if host is not None:
            host_index = len(host_rows)
            host_rows.append(host)
        stamp_parts.append(StampParams(
            flux_adu=np.nan_to_num(mag_to_adu(mag[valid], zp_true, cond.exp_time_s[valid])),
            dx_px=dx[valid], dy_px=dy[valid], fwhm_px=fwhm_arcsec[valid] / scale,
            psf_g1=psf_g1[valid], psf_g2=psf_g2[valid], host_index=np.full(len(valid), host_index),
            host_flux_adu=(mag_to_adu(host["mag"], zp_true, cond.exp_time_s[valid])
                           if host is not None else np.zeros(len(valid))),
            trail_px=trail_px, trail_angle_rad=np.full(len(valid), truth.get("trail_angle_rad", 0.0))))
        draws.append(_Drawn(rng, label, cond, mag, truth, host, dx, dy, rotation, mirror, valid, zp_error, fwhm_arcsec))
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
        "truth/zero_point_error_mag": np.full((n, T), np.nan, np.float32),
        "truth/psf_fwhm_arcsec": np.full((n, T), np.nan, np.float32),
        "truth/rotation": np.zeros(n, np.uint8),
        "truth/mirror": np.zeros(n, bool),
        "truth/alert_epoch": np.full(n, -1, np.int16),
        "truth/window_start": np.zeros(n, np.int16),
        # contextual inputs (GOTO): what a broker knows beside the stamps, from catalogues and the pointing
        "context/has_host": np.zeros(n, np.uint8),
        "context/host_distance_arcsec": np.full(n, np.nan, np.float32),
        "context/galactic_latitude_deg": np.full(n, np.nan, np.float32),
    }
    for k in TRUTH_FLOATS:
        out[f"truth/{k}"] = np.full(n, np.nan)
    for k in TRUTH_TEXT:
        out[f"truth/{k}"] = np.full(n, "", dtype=object)
    for k in EPOCH_FIELDS:
        out[f"conditions/{k}"] = np.full((n, T), np.nan, np.float32)
    for k in ("gain", "read_noise", "saturation"):
        out[f"conditions/{k}"] = np.full((n, T), np.nan, np.float32)
    for k in HOST_FIELDS:
        out[f"truth/host/{k}"] = np.full(n, np.nan, np.float32)

    # orientation of each object's stamps, applied before the noise (drawn in the rotated pixel order)
    counts = np.array([len(d.valid) for d in draws])
    owner = np.repeat(np.arange(n), counts)  # object of each rendered stamp
    epoch = np.concatenate([d.valid for d in draws])
    turn = np.array([d.rotation for d in draws])[owner]
    flip = np.array([d.mirror for d in draws])[owner]
    for r in range(4):
        for m in (False, True):
            rows = np.flatnonzero((turn == r) & (flip == m))
            if len(rows) and (r or m):
                oriented = np.rot90(noiseless[rows], r, axes=(1, 2))
                noiseless[rows] = oriented[:, :, ::-1] if m else oriented
    conds = [d.cond for d in draws]
    camera = {k: np.array([getattr(c, k) for c in conds])[owner] for k in ("gain", "read_noise", "saturation")}
    noisy = add_ccd_noise_streams([d.rng for d in draws], noiseless, counts,
                                  np.concatenate([d.cond.sky_adu[d.valid] for d in draws]), camera["gain"],
                                  camera["read_noise"], camera["saturation"])
    out["stamps"][owner, epoch] = noisy
    for k in ("gain", "read_noise", "saturation"):  # per CCD: stored at the valid epochs
        out[f"conditions/{k}"][owner, epoch] = camera[k]
    for key, name in (("truth/dx_px", "dx"), ("truth/dy_px", "dy"), ("truth/zero_point_error_mag", "zp_error"),
                      ("truth/psf_fwhm_arcsec", "fwhm_arcsec")):
        out[key][owner, epoch] = np.concatenate([getattr(d, name)[d.valid] for d in draws])
    out["mjd"][:] = [c.mjd for c in conds]
    out["mask"][:] = [c.mask for c in conds]
    out["label"][:] = [d.label for d in draws]
    out["truth/mag"][:] = [d.mag for d in draws]
    out["truth/has_host"][:] = [d.host is not None for d in draws]
    out["truth/field"][:] = [c.field for c in conds]
    out["truth/ccd"][:] = [c.ccd for c in conds]
    out["truth/rotation"][:] = [d.rotation for d in draws]
    out["truth/mirror"][:] = [d.mirror for d in draws]
    out["context/galactic_latitude_deg"][:] = [c.galactic_latitude_deg for c in conds]
    for k in EPOCH_FIELDS:
        out[f"conditions/{k}"][:] = [getattr(c, k) for c in conds]
    for o, (truth, host) in enumerate((d.truth, d.host) for d in draws):
        out["truth/alert_epoch"][o] = truth["alert_epoch"]
        out["truth/window_start"][o] = truth["window_start"]
        for k in TRUTH_FLOATS + TRUTH_TEXT:
            if k in truth:
                out[f"truth/{k}"][o] = truth[k]
        if host is not None:
            out["context/has_host"][o] = 1
            out["context/host_distance_arcsec"][o] = np.hypot(host["dx_px"], host["dy_px"]) * scale
            out["truth/host_mag"][o] = host["mag"]
            for k in HOST_FIELDS:
                out[f"truth/host/{k}"][o] = host[k]
    return out
