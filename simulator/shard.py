"""Simulate a contiguous range of objects (a shard): draw, render in batches, add noise.

Object i has class `classes[i % C]` and its own random stream `SeedSequence(seed, spawn_key=(i,))`, so
its stamps do not depend on which shard or worker made it. Draw order per object is fixed: conditions,
light curve, window, host, per-epoch centring and PSF shear, orientation, zero-point error, PSF width
jitter, then noise. The draws are made object by object; the arithmetic on them for the whole shard at
once, element by element, so an object's values do not depend on the others.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from survey_params import ConditionsError, make_sampler
from survey_params.sampling import EPOCH_FIELDS

from .classes import MODELS, TRUTH_FLOATS, TRUTH_TEXT, load_models
from .flux import mag_to_adu
from .hosts import draw_host
from .noise import add_ccd_noise_streams
from .render import HostParams, Renderer, StampParams
from .settings import ALERT_CLASSES, SimConfig, psf_fwhm_arcsec
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
    check_psf_fwhm(cfg, sampler.best_seeing_arcsec(), sampler.pixel_scale_arcsec)
    renderer = Renderer(cfg.stamp_size, cfg.fft_size, cfg.host_fft_size, cfg.psf, cfg.moffat_beta)
    depth = cfg.sn_depth_mag
    if depth is None and "supernova" in cfg.classes:  # only supernovae need it: 300 condition draws
        depth = survey_depth(sampler)
    models = load_models(cfg, resolve_templates(cfg.templates), depth)
    return cfg, sampler, renderer, models


#: The narrowest PSF FWHM (pixels) at a survey's best seeing: the direct sums' terms grow as 1/FWHM and
#: their tables as its square (FWHM 0.5 px: 264 terms; 0.004 px took 24 GB and minutes).
MIN_PSF_FWHM_PX = 0.5


def check_psf_fwhm(cfg: SimConfig, seeing_arcsec: float, pixel_scale_arcsec: float) -> None:
    """A ValueError unless the PSF FWHM is at least `MIN_PSF_FWHM_PX` at `seeing_arcsec`, the survey's best (it
    grows with the seeing, as psf_fwhm_per_seeing > 0; the per-epoch scatter is a factor near 1)."""
    fwhm = psf_fwhm_arcsec(seeing_arcsec, cfg.psf_fwhm_per_seeing, cfg.psf_fwhm_offset_arcsec)
    least = MIN_PSF_FWHM_PX * pixel_scale_arcsec
    if not fwhm >= least:
        raise ValueError(f"psf_fwhm_per_seeing x seeing + psf_fwhm_offset_arcsec (the PSF FWHM) must be >= "
                         f"{MIN_PSF_FWHM_PX:g} px = {least:.4g}\" at the survey's best seeing, {seeing_arcsec:g}\", got "
                         f"{cfg.psf_fwhm_per_seeing:g} x {seeing_arcsec:g} + {cfg.psf_fwhm_offset_arcsec:g} = {fwhm:.4g}\"")


def survey_depth(sampler, n_objects: int = 300) -> float:
    """The deepest 5-sigma limit among `n_objects` objects' epochs (a fixed draw: part of the survey, not
    of a dataset's randomness); bounds the redshifts worth drawing supernovae at."""
    rng = np.random.default_rng(0)  # one stream: the objects draw from it in turn
    depths = [np.max(c.limmag5[c.mask]) for c in sampler.draw_many([rng] * n_objects) if c.mask.any()]
    if not depths:
        raise ConditionsError(f"none of {n_objects} objects drawn has an epoch within the seeing limit "
                              f"({sampler.seeing_limit_arcsec}\"): raise seeing_limit_arcsec")
    return float(max(depths))


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
    """One object's random draws (the arithmetic on them is done for the whole shard afterwards)."""

    rng: np.random.Generator  # its stream, kept for the noise
    label: int
    full: object  # ObjectConditions of all its epochs
    full_mag: np.ndarray
    window: np.ndarray  # the epochs (indices into `full`) of its sequence, in time order
    truth: dict
    host: dict | None
    offsets: np.ndarray  # (2, T): centring dx, dy
    psf_shear: np.ndarray | None  # (2, T): g1, g2
    rotation: int
    mirror: bool
    zp_error: np.ndarray | None  # (T,)
    fwhm_jitter: np.ndarray | None  # (T,): log of the PSF FWHM's per-epoch factor


def split_of(cfg: SimConfig, within_class_index: np.ndarray) -> np.ndarray:
    """0 train / 1 validation / 2 test: the first fractions of each class's objects, in index order. The
    cumulative fractions are rounded (half up), so a fraction of 0 gets no object (rounding each part on its
    own, with Python's half-to-even, gave 0.5/0.5/0 of 5 objects a test object)."""
    n = cfg.n_per_class
    n_train = int(np.floor(n * cfg.split_fractions[0] + 0.5))
    n_train_val = int(np.floor(n * sum(cfg.split_fractions[:2]) + 0.5))
    j = np.asarray(within_class_index)
    return np.where(j < n_train, 0, np.where(j < n_train_val, 1, 2)).astype(np.uint8)


def simulate_shard(cfg_json: str, start: int, stop: int) -> dict:
    """Arrays for objects start..stop-1, keyed by dataset path (see `simulator.dataset`).

    Each object's random draws come first, one object after the other; the arithmetic on them (windows,
    fluxes, PSF widths, the output arrays) is then done for all objects at once, element by element."""
    cfg, sampler, renderer, models = _setup(cfg_json)
    T, S = n_epochs(cfg), cfg.stamp_size
    scale = sampler.pixel_scale_arcsec
    rngs = [object_rng(cfg.seed, i) for i in range(start, stop)]
    first_conditions = sampler.draw_many(rngs)  # each object's first draw, all at once
    draws = [_draw_object(i, rng, first, cfg, sampler, models, T, scale)
             for i, rng, first in zip(range(start, stop), rngs, first_conditions)]
    n = stop - start

    # each object's window of its epochs, packed first into T slots
    slot_epoch = np.full((n, T), -1)
    for o, d in enumerate(draws):
        slot_epoch[o, :len(d.window)] = d.window
    mask = slot_epoch >= 0
    owner, epoch = np.nonzero(mask)  # one row per stamp, objects in order, epochs in order
    taken = slot_epoch[owner, epoch]

    def windowed(values: list, fill: float) -> np.ndarray:  # per-object arrays over all epochs -> (n, T)
        out = np.full((n, T), fill)
        out[owner, epoch] = np.stack(values)[owner, taken]
        return out

    cond = {k: windowed([getattr(d.full, k) for d in draws], np.nan) for k in ("mjd",) + EPOCH_FIELDS}
    mag = windowed([d.full_mag for d in draws], np.inf)
    stacked = lambda name, default: np.stack([default if getattr(d, name) is None else getattr(d, name)  # noqa: E731
                                              for d in draws])
    offsets = np.stack([d.offsets for d in draws])
    psf_shear = stacked("psf_shear", np.zeros((2, T)))
    zp_error = stacked("zp_error", np.zeros(T))
    fwhm_arcsec = psf_fwhm_arcsec(cond["seeing_arcsec"], cfg.psf_fwhm_per_seeing, cfg.psf_fwhm_offset_arcsec)
    if cfg.psf_fwhm_scatter > 0:
        fwhm_arcsec = fwhm_arcsec * np.exp(stacked("fwhm_jitter", None))
    camera = {k: np.array([getattr(d.full, k) for d in draws]) for k in ("gain", "read_noise", "saturation")}

    # rendering inputs, one row per stamp
    hosts_of = [d.host for d in draws]
    host_rows = [h for h in hosts_of if h is not None]
    has_host = np.array([h is not None for h in hosts_of])
    host_index = np.cumsum(has_host) - 1  # row in `host_rows`, where there is a host
    host_mag = np.array([np.nan if h is None else h["mag"] for h in hosts_of])
    trail_arcsec = np.array([d.truth.get("trail_arcsec", 0.0) for d in draws])
    trail_angle = np.array([d.truth.get("trail_angle_rad", 0.0) for d in draws])
    zp_true = cond["zero_point"][owner, epoch] + zp_error[owner, epoch]
    exp_time = cond["exp_time_s"][owner, epoch]
    stamp_mag = mag[owner, epoch]
    with np.errstate(invalid="ignore"):  # no host: its NaN magnitude is replaced by 0 ADU below
        host_flux = mag_to_adu(host_mag[owner], zp_true, exp_time)
    params = StampParams(
        flux_adu=mag_to_adu(stamp_mag, zp_true, exp_time),
        dx_px=offsets[owner, 0, epoch], dy_px=offsets[owner, 1, epoch], fwhm_px=fwhm_arcsec[owner, epoch] / scale,
        psf_g1=psf_shear[owner, 0, epoch], psf_g2=psf_shear[owner, 1, epoch],
        host_index=np.where(has_host, host_index, -1)[owner],
        host_flux_adu=np.where(has_host[owner], host_flux, 0.0),
        trail_px=np.where(np.isfinite(stamp_mag), (trail_arcsec / scale)[owner], 0.0),
        trail_angle_rad=trail_angle[owner])
    hosts = (HostParams(**{k: np.array([h[k] for h in host_rows]) for k in HOST_FIELDS}) if host_rows else None)
    noiseless = renderer.render(params, hosts)

    # orientation of each object's stamps, applied before the noise (drawn in the rotated pixel order)
    turn = np.array([d.rotation for d in draws])[owner]
    flip = np.array([d.mirror for d in draws])[owner]
    for r in range(4):
        for m in (False, True):
            rows = np.flatnonzero((turn == r) & (flip == m))
            if len(rows) and (r or m):
                oriented = np.rot90(noiseless[rows], r, axes=(1, 2))
                noiseless[rows] = oriented[:, :, ::-1] if m else oriented
    noisy = add_ccd_noise_streams([d.rng for d in draws], noiseless, mask.sum(axis=1), cond["sky_adu"][owner, epoch],
                                  camera["gain"][owner], camera["read_noise"][owner], camera["saturation"][owner])
    return _output(cfg, start, stop, T, S, scale, draws, mask, owner, epoch, noisy, cond, mag, camera, offsets,
                   zp_error, fwhm_arcsec)


def check_magnitudes(i: int, cname: str, mag: np.ndarray, cond) -> None:
    """A ValueError naming object `i` and its class unless its model's magnitudes are finite or +inf (no
    source) at every valid epoch: a NaN would render as an empty stamp, -inf as an infinite flux."""
    bad = np.flatnonzero(cond.mask & ~(np.isfinite(mag) | (mag == np.inf)))
    if len(bad):
        raise ValueError(f"object {i}: the {cname} model gave magnitude {mag[bad[0]]} at epoch {bad[0]} (MJD "
                         f"{cond.mjd[bad[0]]:.5f}), {len(bad)} such valid epoch(s); magnitudes must be finite "
                         f"or +inf (no source)")


def _draw_object(i: int, rng: np.random.Generator, first, cfg: SimConfig, sampler, models, T: int,
                 scale: float) -> _Drawn:
    """Object i's random draws, in the order of the module docstring (`first`: its first conditions)."""
    label = i % len(cfg.classes)
    cname = cfg.classes[label]
    for attempt in range(MAX_CONDITION_DRAWS):
        full = sampler.draw(rng) if attempt else first
        if not full.mask.any():  # every epoch over the seeing limit: draw again
            continue
        drawn = MODELS[cname](rng, full, cfg, models)
        if drawn is not None:
            break
    else:
        raise ConditionsError(f"object {i}: no {cname} detectable in {MAX_CONDITION_DRAWS} draws of conditions; "
                              f"is the survey too shallow for it, or seeing_limit_arcsec ({cfg.seeing_limit_arcsec}) "
                              f"too tight?")
    full_mag, truth = drawn
    check_magnitudes(i, cname, full_mag, full)
    window, alert = choose_window(rng, cname, full_mag, full, cfg, T)
    truth.update(alert_epoch=alert, window_start=int(window[0]))  # valid epochs are packed first
    frac = cfg.host_fraction_supernova if cname == "supernova" else cfg.host_fraction_other
    has_host = cname == "galaxy" or rng.random() < frac
    host = (draw_host(rng, cfg, scale, centred=cname == "galaxy", redshift=truth.get("redshift"))
            if has_host else None)
    offsets = rng.uniform(-0.5, 0.5, (2, T))
    psf_shear = rng.normal(0.0, cfg.psf_shear_rms, (2, T)) if cfg.psf_shear_rms > 0 else None
    rotation, mirror = int(rng.integers(4)), bool(rng.integers(2))
    zp_error = rng.normal(0.0, cfg.zero_point_error_mag, T) if cfg.zero_point_error_mag > 0 else None
    fwhm_jitter = rng.normal(0.0, cfg.psf_fwhm_scatter, T) if cfg.psf_fwhm_scatter > 0 else None
    return _Drawn(rng, label, full, full_mag, window, truth, host, offsets, psf_shear, rotation, mirror, zp_error,
                  fwhm_jitter)


def _output(cfg, start, stop, T, S, scale, draws, mask, owner, epoch, noisy, cond, mag, camera, offsets, zp_error,
            fwhm_arcsec) -> dict:
    """The shard's arrays under their dataset paths."""
    n = stop - start
    out = {
        "stamps": np.zeros((n, T, S, S), np.float32),
        "mjd": cond["mjd"],
        "mask": mask,
        "label": np.array([d.label for d in draws], np.int16),
        "split": split_of(cfg, np.arange(start, stop) // len(cfg.classes)),
        "truth/mag": mag.astype(np.float32),
        "truth/has_host": np.array([d.host is not None for d in draws]),
        "truth/host_mag": np.full(n, np.nan, np.float32),
        "truth/field": np.array([d.full.field for d in draws], dtype=object),
        "truth/ccd": np.array([d.full.ccd for d in draws], np.int32),
        "truth/object_index": np.arange(start, stop, dtype=np.int64),
        "truth/rotation": np.array([d.rotation for d in draws], np.uint8),
        "truth/mirror": np.array([d.mirror for d in draws], bool),
        "truth/alert_epoch": np.array([d.truth["alert_epoch"] for d in draws], np.int16),
        "truth/window_start": np.array([d.truth["window_start"] for d in draws], np.int16),
        # contextual inputs (GOTO): what a broker knows beside the stamps, from catalogues and the pointing
        "context/has_host": np.zeros(n, np.uint8),
        "context/host_distance_arcsec": np.full(n, np.nan, np.float32),
        "context/galactic_latitude_deg": np.array([d.full.galactic_latitude_deg for d in draws], np.float32),
    }
    out["stamps"][owner, epoch] = noisy
    for key, values in (("truth/dx_px", offsets[:, 0]), ("truth/dy_px", offsets[:, 1]),
                        ("truth/zero_point_error_mag", zp_error), ("truth/psf_fwhm_arcsec", fwhm_arcsec)):
        out[key] = np.full((n, T), np.nan, np.float32)
        out[key][owner, epoch] = values[owner, epoch]
    for k in EPOCH_FIELDS:
        out[f"conditions/{k}"] = cond[k].astype(np.float32)
    out["conditions/zero_point_ref"] = np.array([d.full.zero_point_ref for d in draws], np.float32)  # eq. 4's
    for k in ("gain", "read_noise", "saturation"):  # per CCD: stored at the valid epochs
        out[f"conditions/{k}"] = np.full((n, T), np.nan, np.float32)
        out[f"conditions/{k}"][owner, epoch] = camera[k][owner]
    for k in TRUTH_FLOATS:
        out[f"truth/{k}"] = np.array([d.truth.get(k, np.nan) for d in draws], np.float64)
    for k in TRUTH_TEXT:
        out[f"truth/{k}"] = np.array([d.truth.get(k, "") for d in draws], dtype=object)
    for k in HOST_FIELDS:
        out[f"truth/host/{k}"] = np.full(n, np.nan, np.float32)
    for o, host in enumerate(d.host for d in draws):
        if host is not None:
            out["context/has_host"][o] = 1
            out["context/host_distance_arcsec"][o] = np.hypot(host["dx_px"], host["dy_px"]) * scale
            out["truth/host_mag"][o] = host["mag"]
            for k in HOST_FIELDS:
                out[f"truth/host/{k}"][o] = host[k]
    return out
