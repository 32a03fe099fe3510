"""Photometry of real survey stamps: the HiTS `real_dev.npz` layout (see ../shared/hits2015/README.md).

Real frames come with raw pixels (sentinels, saturation) and conditions that may be missing, so: only
g-band frames with finite seeing, zero point and exposure time are measured; the sky is the logged one
where finite, else the stamp's sigma-clipped border; the PSF FWHM is fitted per frame for bright sources
(`fit_fwhm`) starting from the FWHM the logged seeing implies (`simulator.settings.psf_fwhm_arcsec`, the
relation the simulator renders, fitted on real HiTS stars by benchmarks/compare_real.py). Gain, read noise
and saturation are per CCD in the survey's camera table, but a stamp does not say its CCD: the camera
medians are used (saturation: the lowest).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.settings import psf_fwhm_arcsec

from .optimal import OptimalPhotometry, fit_fwhm

G_FILTER_CODE = 0
#: Camera medians of the HiTS 2015 DECam CCDs (../shared/hits2015/camera.csv), used without a camera table.
HITS_GAIN, HITS_READ_NOISE, HITS_SATURATION = 4.0, 6.5, 33000.0


@dataclass
class RealLightCurves:
    """Per-frame photometry of a real stamp file; frames of object k are `offsets[k]:offsets[k+1]`."""

    flux_adu: np.ndarray      # NaN where the frame was not measured (non-g band, missing conditions)
    flux_err_adu: np.ndarray
    mag: np.ndarray           # zero_point - 2.5 log10(flux / exp_time), NaN where flux <= 0
    fwhm_px: np.ndarray
    measured: np.ndarray      # bool
    offsets: np.ndarray
    label: np.ndarray
    class_names: list[str]


def _required(data, name: str, path: Path):
    if name not in data:
        raise ValueError(f"{path}: array '{name}' is missing (expected the real_dev.npz layout)")
    return data[name]


def camera_medians(camera_csv: str | Path | None) -> tuple[float, float, float]:
    """(gain, read noise, saturation) for stamps of unknown CCD: the camera table's medians and its lowest
    saturation, or the HiTS 2015 values without a table."""
    if camera_csv is None:
        return HITS_GAIN, HITS_READ_NOISE, HITS_SATURATION
    from survey_params.hits_logs import read_camera_csv

    cam = read_camera_csv(camera_csv)
    return float(np.median(cam["gain"])), float(np.median(cam["read_noise"])), float(cam["saturation"].min())


def measure_frames(stamps: np.ndarray, seeing_arcsec: np.ndarray, sky_adu: np.ndarray | None, gain: float,
                   read_noise: float, saturation: float, pixel_scale_arcsec: float = 0.27,
                   moffat_beta: float = 4.2):
    """(Photometry, fitted FWHM px) of real frames: FWHM fitted from the seeing's expected FWHM, then measured."""
    op = OptimalPhotometry(stamps.shape[-1], "moffat", moffat_beta)
    fwhm = fit_fwhm(op, stamps, psf_fwhm_arcsec(np.asarray(seeing_arcsec, float)) / pixel_scale_arcsec, gain,
                    read_noise, sky_adu, saturation)
    return op.measure(stamps, fwhm, gain, read_noise, sky_adu, saturation), fwhm


def measure_real(path: str | Path, camera_csv: str | Path | None = None, pixel_scale_arcsec: float = 0.27,
                 moffat_beta: float = 4.2) -> RealLightCurves:
    """Optimal photometry of every g-band frame of a real stamp file (no pickles are loaded)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: _required(data, k, path) for k in ("stamps", "offsets", "label", "class_names", "filter_code",
                                                           "exp_time_s", "seeing_arcsec", "sky_adu", "zero_point")}
    gain, rn, sat = camera_medians(camera_csv)
    stamps = arrays["stamps"].astype(float)
    ok = ((arrays["filter_code"] == G_FILTER_CODE) & np.isfinite(arrays["seeing_arcsec"])
          & np.isfinite(arrays["zero_point"]) & np.isfinite(arrays["exp_time_s"]))
    sky = arrays["sky_adu"][ok]
    r, fwhm = measure_frames(stamps[ok], arrays["seeing_arcsec"][ok], None if np.isnan(sky).any() else sky, gain, rn,
                             sat, pixel_scale_arcsec, moffat_beta)
    n = len(stamps)
    out = {k: np.full(n, np.nan) for k in ("flux_adu", "flux_err_adu", "mag", "fwhm_px")}
    out["flux_adu"][ok], out["flux_err_adu"][ok], out["fwhm_px"][ok] = r.flux_adu, r.flux_err_adu, fwhm
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = arrays["zero_point"][ok] - 2.5 * np.log10(r.flux_adu / arrays["exp_time_s"][ok])
    out["mag"][ok] = np.where(r.flux_adu > 0, mag, np.nan)
    return RealLightCurves(measured=ok, offsets=arrays["offsets"], label=arrays["label"],
                           class_names=[str(c) for c in arrays["class_names"]], **out)
