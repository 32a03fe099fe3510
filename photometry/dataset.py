"""`photometry DATASET.h5`: optimal photometry of every stamp of a simulated (or converted real) dataset.

Adds a `photometry/` group, arrays (N, T), NaN at padded epochs:
- `flux_adu`, `flux_err_adu`: optimal flux and its 1-sigma error (Naylor 1998), ADU;
- `lc_flux`, `lc_flux_err`: the same after the paper's eq. 4 scaling, 10^((zp_ref - zp) / 2.5) with zp_ref
  the sequence's first zero point: the inputs of the light-curve classifier;
- `dx_px`, `dy_px` (fitted position, 0 where forced), `sky_adu` (used), `fwhm_px` (used), `n_masked`;
- `first_detection` (N,) int16: first epoch with flux > 5 sigma (-1: none), the real-data alert rule.
Attributes record the options. The PSF is the dataset's own (`config`: psf, moffat_beta,
psf_fwhm_per_seeing, psf_fwhm_offset_arcsec: the FWHM expected from the logged seeing; root attribute
`pixel_scale_arcsec`). Per-epoch PSF jitter is unknown to an observer: `--fwhm fit` measures it.

The work happens on a copy (`DATASET.h5.photometry-tmp`) that is renamed over the dataset at the end;
an interrupted run resumes from the last finished batch of the copy.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from simulator.dataset import open_h5
from simulator.lock import exclusive
from simulator.settings import psf_fwhm_arcsec
from simulator.stopping import check as check_stop

from .optimal import OptimalPhotometry, first_detection, fit_fwhm, zero_point_scaling

PER_EPOCH = ("flux_adu", "flux_err_adu", "dx_px", "dy_px", "sky_adu", "fwhm_px", "n_masked")


class PhotometryError(ValueError):
    """A dataset photometry cannot work on (names the file and what is missing)."""


def _psf_options(f: h5py.File, path: Path) -> dict:
    try:
        cfg = json.loads(f.attrs["config"])
    except KeyError:
        raise PhotometryError(f"{path}: no 'config' attribute; not a stampseq dataset") from None
    scale = f.attrs.get("pixel_scale_arcsec")
    if scale is None:  # datasets made before the attribute existed
        from survey_params import make_sampler

        scale = make_sampler(cfg["survey"], cfg.get("conditions"), cfg["seeing_limit_arcsec"]).pixel_scale_arcsec
    return {"psf": cfg.get("psf", "moffat"), "moffat_beta": float(cfg.get("moffat_beta", 4.2)),
            "fwhm_per_seeing": float(cfg.get("psf_fwhm_per_seeing", 1.0)),
            "fwhm_offset_arcsec": float(cfg.get("psf_fwhm_offset_arcsec", 0.0)), "pixel_scale_arcsec": float(scale),
            "stamp_size": int(cfg.get("stamp_size", 21))}


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
    if not path.exists():
        raise PhotometryError(f"{path}: dataset not found")
    with open_h5(path) as f:  # checked before the copy: a file we cannot use leaves nothing behind
        for key in ("stamps", "mask", "conditions/seeing_arcsec", "conditions/gain"):
            if key not in f:
                raise PhotometryError(f"{path}: dataset '{key}' is missing")
        opts = _psf_options(f, path)
    # a second `photometry` on the dataset stops here (before it could overwrite the first's working copy)
    with exclusive(path.with_name(path.name + ".photometry-lock"), f"{path} (photometry)", remove=True):
        _measure(path, sky, fwhm, batch_objects, progress, opts)
    return path


def working_copy(path: str | Path) -> Path:
    """Where `run_photometry` measures `path` (a copy, renamed over it when done; kept by a stopped run)."""
    path = Path(path)
    return path.with_name(path.name + ".photometry-tmp")


def _measure(path: Path, sky: str, fwhm: str, batch_objects: int, progress: bool, opts: dict) -> None:
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
        op = OptimalPhotometry(opts["stamp_size"], opts["psf"], opts["moffat_beta"])
        start = int(g.attrs["done"])
        bar = tqdm(total=n, initial=start, unit="obj", desc="photometry", disable=not progress)
        while start < n:
            stop = min(start + batch_objects, n)
            m = f["mask"][start:stop]
            stamps = f["stamps"][start:stop][m]
            cond = {k: f[f"conditions/{k}"][start:stop][m] for k in
                    ("seeing_arcsec", "sky_adu", "gain", "read_noise", "saturation")}
            fwhm_px = psf_fwhm_arcsec(cond["seeing_arcsec"], opts["fwhm_per_seeing"],
                                      opts["fwhm_offset_arcsec"]) / opts["pixel_scale_arcsec"]
            sky_adu = cond["sky_adu"] if sky == "log" else None
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
        scale = zero_point_scaling(f["conditions/zero_point"][()].astype(float), mask)
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
