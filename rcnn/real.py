"""`rcnn import-real`: real labelled stamp sequences -> the simulator's HDF5 layout, so every tool works on both.

Input: the interchange layout of `../shared/hits2015/README.md` (`real_dev.npz`: frames of object k at
`offsets[k]:offsets[k+1]`, per-frame conditions, NaN where no log record matched). Per object:
- g-band frames only (`filter_code` 0), in time order;
- missing conditions are estimated and flagged (`conditions/estimated`): sky from the stamp's sigma-clipped
  border; zero point, seeing, airmass, exposure time from the other objects' frames of the same field and
  HiTS epoch (the same exposure), else the object's own median; limmag5 from the others by the simulator's
  formula;
- gain, read noise, saturation: the camera table's medians (lowest saturation): a stamp does not say its CCD;
- optimal photometry of every frame (`photometry/` group as `photometry DATASET.h5` writes it);
- supernova sequences start 5 images before the first 5-sigma detection, other classes at their first
  epoch (Carrasco-Davis et al. 2019, sec. 4). `split` is 2 (test) for all objects.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from photometry.optimal import OptimalPhotometry, bad_pixels, border_sky, first_detection, fit_fwhm, zero_point_scaling
from photometry.real import G_FILTER_CODE, HITS_GAIN, HITS_READ_NOISE, HITS_SATURATION
from simulator.dataset import write_arrays
from survey_params.limits import limiting_magnitude

CONDITIONS = ("exp_time_s", "seeing_arcsec", "airmass", "sky_adu", "zero_point", "limmag5")
SUPERNOVA_NAMES = ("SN", "supernova")
PRE_ALERT_EPOCHS = 5


class ImportError_(ValueError):
    """A real file that cannot be imported (names the file, array and value)."""


def _fill(values: np.ndarray, field: np.ndarray, epoch: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaNs filled from frames of the same (field, epoch), else the owner's median; returns (values, filled)."""
    out = values.copy()
    missing = ~np.isfinite(out)
    for i in np.flatnonzero(missing):
        same = (field == field[i]) & (epoch == epoch[i]) & np.isfinite(values)
        pool = values[same] if same.any() else values[(owner == owner[i]) & np.isfinite(values)]
        if pool.size:
            out[i] = np.median(pool)
    return out, missing & np.isfinite(out)


def import_real(path: str | Path, out: str | Path, camera_csv: str | Path | None = None,
                pixel_scale_arcsec: float = 0.27, fwhm_per_seeing: float = 0.81) -> Path:
    """Convert a real stamp file to a dataset (see the module docstring); returns `out`."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as d:
        need = ("stamps", "offsets", "mjd", "label", "class_names", "field", "hits_epoch", "filter_code") + CONDITIONS
        missing = [k for k in need if k not in d]
        if missing:
            raise ImportError_(f"{path}: missing array(s) {', '.join(missing)} (expected the real_dev.npz layout)")
        a = {k: d[k] for k in need + tuple(k for k in ("name",) if k in d)}
    offsets = a["offsets"]
    n_obj = len(a["label"])
    if len(offsets) != n_obj + 1 or offsets[-1] != len(a["stamps"]):
        raise ImportError_(f"{path}: 'offsets' has {len(offsets)} entries ending at {offsets[-1]}; expected "
                           f"{n_obj + 1} ending at {len(a['stamps'])}")
    if a["stamps"].ndim != 3:
        raise ImportError_(f"{path}: 'stamps' has shape {a['stamps'].shape}; expected (frames, S, S)")
    gain, rn, sat = HITS_GAIN, HITS_READ_NOISE, HITS_SATURATION
    if camera_csv is not None:
        cam = np.genfromtxt(camera_csv, delimiter=",", names=True)
        gain, rn, sat = float(np.median(cam["gain"])), float(np.median(cam["read_noise"])), float(cam["saturation"].min())
    owner = np.repeat(np.arange(n_obj), np.diff(offsets))
    field = a["field"][owner]
    g = a["filter_code"] == G_FILTER_CODE
    stamps = a["stamps"].astype(np.float64)
    cond, estimated = {}, np.zeros(len(stamps), bool)
    bad = bad_pixels(stamps, sat)
    sky_border = border_sky(stamps, bad)
    cond["sky_adu"] = np.where(np.isfinite(a["sky_adu"]), a["sky_adu"], sky_border)
    estimated |= ~np.isfinite(a["sky_adu"])
    for k in ("zero_point", "seeing_arcsec", "airmass", "exp_time_s"):
        cond[k], filled = _fill(np.where(g, a[k], np.nan), field, a["hits_epoch"], owner)
        estimated |= filled
    lim_formula = limiting_magnitude(cond["seeing_arcsec"], cond["sky_adu"], cond["zero_point"], cond["exp_time_s"],
                                     gain, rn, pixel_scale_arcsec)
    cond["limmag5"] = np.where(np.isfinite(a["limmag5"]), a["limmag5"], lim_formula)
    estimated |= ~np.isfinite(a["limmag5"])
    usable = g & np.all([np.isfinite(cond[k]) for k in CONDITIONS], axis=0)
    # photometry of every usable frame
    op = OptimalPhotometry(stamps.shape[-1], "moffat", 4.2)
    u = np.flatnonzero(usable)
    fwhm = fit_fwhm(op, stamps[u], cond["seeing_arcsec"][u] * fwhm_per_seeing / pixel_scale_arcsec, gain, rn,
                    cond["sky_adu"][u], sat)
    phot = op.measure(stamps[u], fwhm, gain, rn, cond["sky_adu"][u], sat)
    flux = np.full(len(stamps), np.nan)
    err = np.full(len(stamps), np.nan)
    flux[u], err[u] = phot.flux_adu, phot.flux_err_adu
    # per object: usable g frames in time order, window from the alert for supernovae
    class_names = [str(c) for c in a["class_names"]]
    rows = []
    for k in range(n_obj):
        frames = np.arange(offsets[k], offsets[k + 1])
        frames = frames[usable[frames]]
        frames = frames[np.argsort(a["mjd"][frames], kind="stable")]
        start = 0
        if class_names[a["label"][k]] in SUPERNOVA_NAMES:
            det = first_detection(flux[frames][None], err[frames][None], np.ones((1, len(frames)), bool))[0]
            start = max(int(det) - PRE_ALERT_EPOCHS, 0) if det >= 0 else 0
        rows.append(frames[start:])
    t = max(len(r) for r in rows)
    s = stamps.shape[-1]
    arrays = {"stamps": np.zeros((n_obj, t, s, s), np.float32), "mjd": np.full((n_obj, t), np.nan),
              "mask": np.zeros((n_obj, t), bool), "label": a["label"].astype(np.int16), "split": np.full(n_obj, 2, np.uint8),
              "conditions/estimated": np.zeros((n_obj, t), bool), "photometry/flux_adu": np.full((n_obj, t), np.nan, np.float32),
              "photometry/flux_err_adu": np.full((n_obj, t), np.nan, np.float32),
              "truth/field": np.array([str(f) for f in a["field"]], dtype=object),
              "truth/object_index": np.arange(n_obj, dtype=np.int64)}
    if "name" in a:
        arrays["truth/name"] = np.array([str(x) for x in a["name"]], dtype=object)
    for key in CONDITIONS + ("gain", "read_noise", "saturation"):
        arrays[f"conditions/{key}"] = np.full((n_obj, t), np.nan, np.float32)
    for k, frames in enumerate(rows):
        n = len(frames)
        arrays["stamps"][k, :n] = np.where(np.isfinite(stamps[frames]), stamps[frames], -9999.0)
        arrays["mjd"][k, :n] = a["mjd"][frames]
        arrays["mask"][k, :n] = True
        arrays["conditions/estimated"][k, :n] = estimated[frames]
        arrays["photometry/flux_adu"][k, :n] = flux[frames]
        arrays["photometry/flux_err_adu"][k, :n] = err[frames]
        for key in CONDITIONS:
            arrays[f"conditions/{key}"][k, :n] = cond[key][frames]
        for key, v in (("gain", gain), ("read_noise", rn), ("saturation", sat)):
            arrays[f"conditions/{key}"][k, :n] = v
    scale = zero_point_scaling(arrays["conditions/zero_point"].astype(float), arrays["mask"])
    arrays["photometry/lc_flux"] = (arrays["photometry/flux_adu"] * scale).astype(np.float32)
    arrays["photometry/lc_flux_err"] = (arrays["photometry/flux_err_adu"] * scale).astype(np.float32)
    arrays["photometry/first_detection"] = first_detection(arrays["photometry/flux_adu"], arrays["photometry/flux_err_adu"],
                                                           arrays["mask"]).astype(np.int16)
    attrs = {"survey": "hits", "source": str(path), "format_version": 1, "pixel_scale_arcsec": pixel_scale_arcsec,
             "config": "{}", "class_names": str(class_names)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_arrays(out, arrays, attrs, class_names)
    return out
