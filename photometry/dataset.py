"""`photometry DATASET.h5`: optimal photometry of every stamp of a simulated (or converted real) dataset.

Adds a `photometry/` group, arrays (N, T), NaN at padded epochs:
- `flux_adu`, `flux_err_adu`: optimal flux and its 1-sigma error (Naylor 1998), ADU;
- `lc_flux`, `lc_flux_err`: the same after the paper's eq. 4 scaling, 10^((zp_ref - zp) / 2.5) with zp_ref
  the sequence's first zero point: the inputs of the light-curve classifier;
- `dx_px`, `dy_px` (fitted position, 0 where forced), `sky_adu` (used), `fwhm_px` (used), `n_masked`;
- `first_detection` (N,) int16: first epoch whose flux exceeds the object's quiescent level by 5 sigma
  (-1: none), the real-data alert rule (`optimal.first_detection`).
Attributes record the options. The PSF is the dataset's own (`config`: psf, moffat_beta,
psf_fwhm_per_seeing, psf_fwhm_offset_arcsec: the FWHM expected from the logged seeing; root attribute
`pixel_scale_arcsec`). Per-epoch PSF jitter is unknown to an observer: `--fwhm fit` measures it.

The dataset is checked before any work (arrays, shapes, config, and the conditions at every valid epoch: a
NaN or zero gain, seeing or zero point would silently give NaN fluxes). The work happens on a copy
(`DATASET.h5.photometry-tmp`) that is renamed over the dataset at the end; an interrupted run resumes from
the last finished batch of the copy (as does one that failed, e.g. on a full disk).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from simulator.dataset import open_h5, zero_point_ref
from simulator.lock import exclusive
from simulator.settings import psf_fwhm_arcsec
from simulator.stopping import check as check_stop

from .optimal import BORDER_MIN_STAMP, OptimalPhotometry, first_detection, fit_fwhm, zero_point_scaling

PER_EPOCH = ("flux_adu", "flux_err_adu", "dx_px", "dy_px", "sky_adu", "fwhm_px", "n_masked")


class PhotometryError(ValueError):
    """A dataset photometry cannot work on (names the file, the dataset or attribute, and the value)."""


#: Per-epoch conditions the photometry reads (sky_adu only with `sky="log"`; seeing_arcsec, whose bound depends
#: on the config, in `check_conditions`): what a valid (mask True) epoch must hold, and the test. Padded
#: epochs hold NaN and are never read.
CONDITIONS = {
    "gain": ("a finite number > 0", lambda v: np.isfinite(v) & (v > 0)),
    "read_noise": ("a finite number >= 0", lambda v: np.isfinite(v) & (v >= 0)),
    "saturation": ("a number > 0", lambda v: v > 0),
    "zero_point": ("a finite number", np.isfinite),
    "sky_adu": ("a finite number", np.isfinite),
}


def _number(value, where: str, rule: str, ok) -> float:
    """`value` as a float if it is a real number passing `ok`, else a PhotometryError saying `where` and `rule`."""
    value = value.item() if isinstance(value, np.generic) else value  # an HDF5 attribute: shown as a number
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = None
    if x is None or isinstance(value, bool) or not ok(x):
        raise PhotometryError(f"{where} is {value!r}; expected {rule}")
    return x


def psf_options(f: h5py.File, path: Path) -> dict:
    """The dataset's PSF and pixel scale (root attributes `config` and `pixel_scale_arcsec`), checked."""
    if "config" not in f.attrs:
        raise PhotometryError(f"{path}: no 'config' attribute; not a stampseq dataset")
    try:
        cfg = json.loads(f.attrs["config"])
    except (TypeError, ValueError) as exc:
        raise PhotometryError(f"{path}: attribute 'config' is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise PhotometryError(f"{path}: attribute 'config' is {cfg!r}; expected a JSON object")
    scale = f.attrs.get("pixel_scale_arcsec")
    if scale is None:  # datasets made before the attribute existed
        from survey_params import make_sampler

        try:
            scale = make_sampler(cfg["survey"], cfg.get("conditions"), cfg["seeing_limit_arcsec"]).pixel_scale_arcsec
        except KeyError as exc:
            raise PhotometryError(f"{path}: no 'pixel_scale_arcsec' attribute, nor config {exc} to take it "
                                  "from") from None
        except ValueError as exc:  # an unknown survey, or its conditions logs
            raise PhotometryError(f"{path}: no 'pixel_scale_arcsec' attribute; its config's survey: {exc}") from None
    size = cfg.get("stamp_size", 21)
    if not isinstance(size, int) or isinstance(size, bool):
        raise PhotometryError(f"{path}: config 'stamp_size' is {size!r}; expected an integer")
    finite = np.isfinite
    psf = cfg.get("psf", "moffat")
    return {"psf": psf,  # the Moffat index matters (and is checked) only for a Moffat PSF, as simulate does
            "moffat_beta": _number(cfg.get("moffat_beta", 4.2), f"{path}: config 'moffat_beta'",
                                   "a finite number > 1.1 (a Moffat PSF)",
                                   lambda x: finite(x) and (x > 1.1 or psf != "moffat")),
            "fwhm_per_seeing": _number(cfg.get("psf_fwhm_per_seeing", 1.0), f"{path}: config 'psf_fwhm_per_seeing'",
                                       "a finite number > 0", lambda x: finite(x) and x > 0),
            "fwhm_offset_arcsec": _number(cfg.get("psf_fwhm_offset_arcsec", 0.0),
                                          f"{path}: config 'psf_fwhm_offset_arcsec'", "a finite number", finite),
            "pixel_scale_arcsec": _number(scale, f"{path}: attribute 'pixel_scale_arcsec'", "a finite number > 0",
                                          lambda x: finite(x) and x > 0),
            "stamp_size": size}


def require_arrays(f: h5py.File, path: Path, keys: list[str]) -> None:
    """Every dataset in `keys` present and an array of the right type: `mask` bool, the others numbers."""
    missing = [k for k in keys if k not in f]
    if missing:
        raise PhotometryError(f"{path}: missing dataset(s) {', '.join(missing)}")
    for k in keys:
        if not isinstance(f[k], h5py.Dataset):
            raise PhotometryError(f"{path}: '{k}' is a group; expected an array")
        dtype, expected = f[k].dtype, "bool" if k == "mask" else "numbers"
        if not (dtype == bool if k == "mask" else dtype.kind in "fiu"):
            raise PhotometryError(f"{path}: '{k}' has dtype {dtype}; expected {expected}")


def check_shapes(f: h5py.File, path: Path, keys: list[str], stamp_size: int) -> np.ndarray:
    """`stamps` (N, T, S, S) with N > 0 and S the config's stamp size, the other `keys` (N, T); returns the
    mask, refused if no epoch is valid (nothing to measure)."""
    shape = f["stamps"].shape
    if len(shape) != 4 or shape[2:] != (stamp_size, stamp_size):
        raise PhotometryError(f"{path}: 'stamps' has shape {shape}; expected (N, T, {stamp_size}, {stamp_size}) "
                              "(the config's stamp_size)")
    if shape[0] == 0:
        raise PhotometryError(f"{path}: holds no objects ('stamps' has shape {shape})")
    for k in keys:
        if k != "stamps" and f[k].shape != shape[:2]:
            raise PhotometryError(f"{path}: '{k}' has shape {f[k].shape}; expected {shape[:2]}")
    mask = f["mask"][()]
    if not mask.any():
        raise PhotometryError(f"{path}: no valid epochs ('mask' is all False)")
    return mask


def check_conditions(f: h5py.File, path: Path, names: list[str], mask: np.ndarray, opts: dict) -> None:
    """The conditions `names` usable at every valid epoch (`CONDITIONS`; the seeing must give a positive PSF
    FWHM): a NaN or zero there would silently give NaN fluxes, or a whole NaN light curve (eq. 4's reference)."""
    min_seeing = max(0.0, -opts["fwhm_offset_arcsec"] / opts["fwhm_per_seeing"])
    rules = {**CONDITIONS, "seeing_arcsec": (f"a finite number > {min_seeing:.3g} (a positive PSF FWHM)",
                                             lambda v: np.isfinite(v) & (v > min_seeing))}
    check_valid_epochs(f, path, {f"conditions/{name}": rules[name] for name in names}, mask)


def check_valid_epochs(f: h5py.File, path: Path, rules: dict, mask: np.ndarray) -> None:
    """Each (N, T) dataset of `rules` (key -> (what it must hold, test of the values)) passes its test at every
    valid epoch of `mask`, else a PhotometryError naming the dataset, the first bad row and epoch, the value."""
    for key, (rule, ok) in rules.items():
        v = f[key][()]
        bad = mask & ~ok(v)
        if bad.any():
            row, epoch = (int(i[0]) for i in np.nonzero(bad))
            raise PhotometryError(f"{path}: '{key}' is {v[row, epoch]!s} at row {row}, epoch {epoch} (a "
                                  f"valid epoch; {int(bad.sum())} bad valid epoch(s) in all); expected {rule}")


def _photometer(path: Path, opts: dict) -> OptimalPhotometry:
    """The photometry for the dataset's PSF and stamp size, or a PhotometryError naming the file."""
    try:
        return OptimalPhotometry(opts["stamp_size"], opts["psf"], opts["moffat_beta"])
    except ValueError as exc:  # an unknown psf, a stamp size it cannot render
        raise PhotometryError(f"{path}: config: {exc}") from None


def _source_id(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def run_photometry(path: str | Path, sky: str = "log", fwhm: str = "log", batch_objects: int = 128,
                   progress: bool = True) -> Path:
    """Measure every stamp of `path` and add the `photometry/` group (see the module docstring)."""
    path = Path(path)
    if sky not in ("log", "border") or fwhm not in ("log", "fit"):
        raise PhotometryError(f"sky must be 'log' or 'border' and fwhm 'log' or 'fit', got {sky!r}, {fwhm!r}")
    if batch_objects < 1:
        raise PhotometryError(f"batch_objects must be >= 1, got {batch_objects}")
    if not path.is_file():
        raise PhotometryError(f"{path}: {'is a directory, not a dataset' if path.is_dir() else 'dataset not found'}")
    names = ["seeing_arcsec", "gain", "read_noise", "saturation", "zero_point"] + (["sky_adu"] if sky == "log" else [])
    keys = ["stamps", "mask"] + [f"conditions/{k}" for k in names]
    with open_h5(path) as f:  # all checked before the copy: a file we cannot use leaves nothing behind
        require_arrays(f, path, keys)
        opts = psf_options(f, path)
        mask = check_shapes(f, path, keys, opts["stamp_size"])
        check_conditions(f, path, names, mask, opts)
        zp_ref = zero_point_ref(f, path, PhotometryError)  # eq. 4's reference, for lc_flux
    if sky == "border" and opts["stamp_size"] < BORDER_MIN_STAMP:
        raise PhotometryError(f"{path}: config: stamp_size {opts['stamp_size']} is too small to measure the sky "
                              f"on the stamp border (at least {BORDER_MIN_STAMP}); use the logged sky")
    op = _photometer(path, opts)
    # a second `photometry` on the dataset stops here (before it could overwrite the first's working copy)
    with exclusive(path.with_name(path.name + ".photometry-lock"), f"{path} (photometry)", remove=True):
        _measure(path, sky, fwhm, batch_objects, progress, op, opts, zp_ref)
    return path


def working_copy(path: str | Path) -> Path:
    """Where `run_photometry` measures `path` (a copy, renamed over it when done; kept by a stopped run)."""
    path = Path(path)
    return path.with_name(path.name + ".photometry-tmp")


def _measure(path: Path, sky: str, fwhm: str, batch_objects: int, progress: bool, op: OptimalPhotometry,
             opts: dict, zp_ref: np.ndarray | None) -> None:
    """`run_photometry` once the dataset is checked: measure on a working copy (resumable), rename it over."""
    tmp = working_copy(path)
    source = _source_id(path)
    options = json.dumps({"sky": sky, "fwhm": fwhm})
    resume = False
    if tmp.exists():
        try:
            with h5py.File(tmp, "r") as f:
                g = f.get("photometry")
                resume = g is not None and g.attrs.get("source") == source and g.attrs.get("options") == options
        except OSError:  # a copy cut short by a kill: start again
            resume = False
    if not resume:
        shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        n, t = f["mask"].shape
        if not resume:
            if "photometry" in f:
                del f["photometry"]
            g = f.create_group("photometry")
            for k in PER_EPOCH:
                g.create_dataset(k, shape=(n, t), dtype=np.float32, fillvalue=np.float32(np.nan),
                                 chunks=(min(64, n), t), compression="gzip", compression_opts=1, shuffle=True)
            g.attrs.update(source=source, options=options, done=0)
        g = f["photometry"]
        start = int(g.attrs["done"])
        bar = tqdm(total=n, initial=start, unit="obj", desc="photometry", disable=not progress)
        while start < n:
            stop = min(start + batch_objects, n)
            m = f["mask"][start:stop]
            stamps = f["stamps"][start:stop][m]
            cond = {k: f[f"conditions/{k}"][start:stop][m] for k in
                    ("seeing_arcsec", "gain", "read_noise", "saturation") + (("sky_adu",) if sky == "log" else ())}
            fwhm_px = psf_fwhm_arcsec(cond["seeing_arcsec"], opts["fwhm_per_seeing"],
                                      opts["fwhm_offset_arcsec"]) / opts["pixel_scale_arcsec"]
            sky_adu = cond.get("sky_adu")
            if fwhm == "fit":
                fwhm_px = fit_fwhm(op, stamps, fwhm_px, cond["gain"], cond["read_noise"], sky_adu, cond["saturation"])
            r = op.measure(stamps, fwhm_px, cond["gain"], cond["read_noise"], sky_adu, cond["saturation"])
            values = {"flux_adu": r.flux_adu, "flux_err_adu": r.flux_err_adu, "dx_px": r.dx_px, "dy_px": r.dy_px,
                      "sky_adu": r.sky_adu, "fwhm_px": fwhm_px, "n_masked": r.n_masked}
            for k, v in values.items():
                block = np.full(m.shape, np.nan, np.float32)
                block[m] = v
                g[k][start:stop] = block
            g.attrs["done"] = stop
            f.flush()
            bar.update(stop - start)
            start = stop
            check_stop()  # a stop signal: the batches done are kept in the working copy
        bar.close()
        mask = f["mask"][()]
        flux, err = g["flux_adu"][()], g["flux_err_adu"][()]
        scale = zero_point_scaling(f["conditions/zero_point"][()].astype(float), mask, zp_ref)
        for k, v in (("lc_flux", flux * scale), ("lc_flux_err", err * scale)):
            if k in g:
                del g[k]
            g.create_dataset(k, data=v.astype(np.float32), chunks=(min(64, n), t), compression="gzip",
                             compression_opts=1, shuffle=True)
        if "first_detection" in g:
            del g["first_detection"]
        g.create_dataset("first_detection", data=first_detection(flux, err, mask).astype(np.int16))
        g.attrs.update(method="Naylor 1998 optimal photometry", psf=opts["psf"], moffat_beta=opts["moffat_beta"],
                       fwhm_per_seeing=opts["fwhm_per_seeing"], fit_snr=op.fit_snr, detection_nsigma=5.0)
    os.replace(tmp, path)
