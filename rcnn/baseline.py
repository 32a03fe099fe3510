"""`rcnn baseline`: a random forest on aperture-photometry light-curve features, the bar a stamp model must beat.

Issue 6's second bar: a plain random forest trained on a few real labelled HiTS objects reaches about 0.9
balanced recall on real data, so a simulation-trained RCNN that does not beat it has not earned its keep.
Per object, on its first `max_epochs` valid epochs (the RCNN's N_d cap):
- photometry: photutils' exact circular-aperture weights (radius `aperture_fwhm` x the PSF FWHM expected
  from the epoch's logged seeing, `simulator.settings.psf_fwhm_arcsec`)
  on the sky-subtracted stamp, masked pixels (saturated, sentinels) set to the sky, error from sky, source,
  gain and read noise; fluxes scaled to the first epoch's zero point (eq. 4);
- features (`FEATURES`): brightness, amplitude and spread of asinh magnitudes (Lupton et al. 1999), skew,
  kurtosis, reduced chi2 about the weighted mean, largest brightening/fading in sigma, von Neumann ratio,
  Lomb-Scargle period and power (astropy), linear trend, where the maximum falls, early-late difference.
Modes: train on one dataset and test on another (`--test`, e.g. simulated -> real, labels mapped as in
`rcnn evaluate`), or stratified K-fold cross-validation on one labelled set (`--cv K`, e.g. the 40 real
objects), or by default the simulated dataset's train -> test split. Writes `metrics.json` (`recall`,
`balanced_recall`, confusion, feature importances) and `confusion.png` (with the importances).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from photometry.optimal import bad_pixels, zero_point_scaling
from simulator.dataset import UNLABELLED, class_names, open_h5, write_text_atomic
from simulator.settings import psf_fwhm_arcsec
from simulator.stopping import check as check_stop

from . import metrics as M
from .data import DatasetError
from .dmdt import asinh_mag
from .evaluate import DEFAULT_CLASS_MAP, draw_confusion, map_labels

FEATURES = ("median_mag", "amplitude_mag", "std_mag", "mad_mag", "skew", "kurtosis", "chi2_red", "beyond_1std",
            "max_brightening_sigma", "max_fading_sigma", "von_neumann", "ls_log_period_d", "ls_power",
            "slope_mag_per_d", "max_phase", "early_late_mag")
PERIOD_RANGE_D = (0.05, 10.0)


def aperture_light_curves(path: str | Path, max_epochs: int = 20, aperture_fwhm: float = 1.0,
                          chunk_objects: int = 4096, progress: bool = True) -> dict:
    """Aperture photometry of every valid epoch (first `max_epochs`) of a dataset: flux/err (eq. 4 scaled).
    Stamps are read `chunk_objects` objects at a time (a paper-scale set's stamps are tens of GB)."""
    from tqdm.auto import tqdm

    if not Path(path).exists():
        raise DatasetError(f"{path}: dataset not found")
    with open_h5(path) as f:
        for key in ("stamps", "mask", "mjd", "label", "conditions/sky_adu", "conditions/zero_point",
                    "conditions/seeing_arcsec", "conditions/exp_time_s", "conditions/gain",
                    "conditions/read_noise", "conditions/saturation"):
            if key not in f:
                raise DatasetError(f"{path}: missing dataset '{key}'")
        t = min(f["mask"].shape[1], max_epochs)
        # valid epochs are packed first: keep the first max_epochs of them
        mask = f["mask"][:, :t]
        zero_point, exp_time = (f[f"conditions/{k}"][:, :t].astype(np.float64) for k in ("zero_point", "exp_time_s"))
        out = {"mjd": f["mjd"][:, :t], "mask": mask, "label": f["label"][()].astype(int), "classes": class_names(path),
               "split": f["split"][()] if "split" in f else np.zeros(len(mask), np.uint8)}
        scale = float(f.attrs.get("pixel_scale_arcsec", 0.27))
        n = len(mask)
        flux, err = np.full(mask.shape, np.nan), np.full(mask.shape, np.nan)
        with tqdm(total=n, unit="obj", desc="aperture photometry", leave=False, disable=not progress) as bar:
            for lo in range(0, n, chunk_objects):
                i, j = np.nonzero(mask[lo:lo + chunk_objects])
                stamps = f["stamps"][lo:lo + chunk_objects, :t][i, j].astype(np.float64)
                cond = {k: f[f"conditions/{k}"][lo:lo + chunk_objects, :t][i, j].astype(np.float64)
                        for k in ("sky_adu", "seeing_arcsec", "gain", "read_noise", "saturation")}
                fwhm_px = psf_fwhm_arcsec(cond["seeing_arcsec"]) / scale  # the HiTS relation, for real and simulated
                flux[lo + i, j], err[lo + i, j] = aperture_flux(stamps, cond["sky_adu"], aperture_fwhm * fwhm_px,
                                                                cond["gain"], cond["read_noise"], cond["saturation"])
                bar.update(min(chunk_objects, n - lo))
                check_stop()
    zs = zero_point_scaling(zero_point, mask)
    out["flux"], out["flux_err"] = flux * zs, err * zs
    first = np.argmax(mask, axis=1)
    rows = np.arange(n)
    # m = zp - 2.5 log10(ADU / exp_time): the offset that turns -2.5 log10(ADU) into a g magnitude
    out["mag_offset"] = zero_point[rows, first] + 2.5 * np.log10(exp_time[rows, first])
    return out


def aperture_flux(stamps, sky_adu, radius_px, gain, read_noise, saturation) -> tuple[np.ndarray, np.ndarray]:
    """Centred circular-aperture flux (ADU, sky subtracted) and its error for stamps (M, S, S).

    photutils' exact pixel-overlap weights, radius rounded to 0.1 px; masked pixels (sentinels, saturation)
    count as sky. Variance per pixel: (sky + source) / gain + (read_noise / gain)^2, in ADU^2."""
    from photutils.aperture import CircularAperture

    stamps = np.asarray(stamps, np.float64)
    s = stamps.shape[-1]
    sky = np.asarray(sky_adu, np.float64)[:, None, None]
    diff = np.where(bad_pixels(stamps, saturation), 0.0, stamps - sky)
    radius = np.round(np.asarray(radius_px, np.float64), 1)
    weights = {r: CircularAperture(((s - 1) / 2, (s - 1) / 2), r).to_mask(method="exact").to_image((s, s))
               for r in np.unique(radius)}
    w = np.stack([weights[r] for r in radius])
    gain, rn = (np.asarray(v, np.float64)[:, None, None] for v in (gain, read_noise))
    var_pix = (sky + np.clip(diff, 0, None)) / gain + (rn / gain) ** 2
    return (w * diff).sum((1, 2)), np.sqrt((w ** 2 * var_pix).sum((1, 2)))


def light_curve_features(flux, flux_err, mjd, mask, mag_offset, progress: bool = False) -> np.ndarray:
    """(N, len(FEATURES)) features of eq. 4 scaled light curves; mag_offset turns asinh mags into g mags."""
    from astropy.timeseries import LombScargle
    from scipy import stats
    from tqdm.auto import tqdm

    out = np.zeros((len(flux), len(FEATURES)))
    for k in tqdm(range(len(flux)), unit="obj", desc="light-curve features", leave=False, disable=not progress):
        check_stop()
        v = mask[k] & np.isfinite(flux[k]) & np.isfinite(flux_err[k]) & (flux_err[k] > 0)
        if v.sum() < 3:
            raise DatasetError(f"object {k} has {int(v.sum())} valid epochs; light-curve features need 3")
        f, e, t = flux[k, v], flux_err[k, v], mjd[k, v]
        m = asinh_mag(f, np.median(e))
        me = 1.0857 * e / np.hypot(np.abs(f), 2 * np.median(e))
        w = 1 / e ** 2
        mean = (w * f).sum() / w.sum()
        med = np.median(m)
        sd = m.std() if m.std() > 0 else 1e-6
        freq = np.linspace(1 / PERIOD_RANGE_D[1], 1 / PERIOD_RANGE_D[0], 4000)
        power = LombScargle(t, m, me).power(freq)
        best = int(np.argmax(power))
        slope = np.polyfit(t - t[0], m, 1)[0] if np.ptp(t) > 0 else 0.0
        third = max(len(m) // 3, 1)
        out[k] = (med + mag_offset[k], np.percentile(m, 95) - np.percentile(m, 5), sd,
                  np.median(np.abs(m - med)), stats.skew(m), stats.kurtosis(m),
                  ((f - mean) ** 2 * w).sum() / (len(f) - 1), np.mean(np.abs(m - m.mean()) > sd),
                  ((f - np.median(f)) / e).max(), -((f - np.median(f)) / e).min(),
                  np.mean(np.diff(m) ** 2) / sd ** 2, np.log10(1 / freq[best]), power[best], slope,
                  (t[np.argmin(m)] - t[0]) / max(np.ptp(t), 1e-6), np.median(m[-third:]) - np.median(m[:third]))
    return out


def _load(path, max_epochs, progress: bool = True):
    lc = aperture_light_curves(path, max_epochs, progress=progress)
    x = light_curve_features(lc["flux"], lc["flux_err"], lc["mjd"], lc["mask"], lc["mag_offset"], progress=progress)
    return x, lc


def run_baseline(data: str | Path, out_dir: str | Path, test: str | Path | None = None, cv: int | None = None,
                 class_map: dict | None = None, seed: int = 0, max_epochs: int = 20, n_trees: int = 500,
                 progress: bool = True) -> dict:
    """Train and test the random forest (see the module docstring); returns the metrics written."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold

    out_dir = Path(out_dir)
    if UNLABELLED in class_names(data):  # before the photometry: nothing to learn from
        raise DatasetError(f"{data}: its objects were imported without labels; the forest trains on labelled ones")
    x, lc = _load(data, max_epochs, progress)
    classes, y = lc["classes"], lc["label"]
    forest = lambda: RandomForestClassifier(n_trees, class_weight="balanced", random_state=seed, n_jobs=-1)  # noqa: E731
    if test is not None:
        x_test, lc_test = _load(test, max_epochs, progress)
        y_test = map_labels(lc_test["classes"], classes, DEFAULT_CLASS_MAP if class_map is None else class_map,
                            test)[lc_test["label"]]
        model = forest().fit(x, y)
        pred, importances, mode = model.predict(x_test), model.feature_importances_, f"train {data}, test {test}"
    elif cv:
        counts = np.bincount(y, minlength=len(classes))
        if cv < 2 or cv > counts[counts > 0].min():
            raise ValueError(f"--cv {cv}: needs 2 <= K <= the smallest class's count ({counts[counts > 0].min()})")
        y_test, pred, imps = y, np.zeros_like(y), []
        for tr, te in StratifiedKFold(cv, shuffle=True, random_state=seed).split(x, y):
            model = forest().fit(x[tr], y[tr])
            pred[te] = model.predict(x[te])
            imps.append(model.feature_importances_)
        importances, mode = np.mean(imps, 0), f"{cv}-fold cross-validation on {data}"
    else:
        tr, te = lc["split"] == 0, lc["split"] == 2
        if not tr.any() or not te.any():
            raise ValueError(f"{data}: needs train and test splits (or give --test or --cv)")
        model = forest().fit(x[tr], y[tr])
        y_test, pred, importances = y[te], model.predict(x[te]), model.feature_importances_
        mode = f"train split -> test split of {data}"
    present = np.unique(y_test)
    recall = M.recall_per_class(y_test, pred, len(classes))
    report = {"mode": mode, "n_test": int(len(y_test)), "max_epochs": max_epochs, "classes": classes,
              "recall": {classes[c]: float(recall[c]) for c in present},
              "balanced_recall": float(np.mean(recall[present])),
              "accuracy": float(np.mean(pred == y_test)),
              "confusion": M.confusion(y_test, pred, len(classes)).tolist(),
              "feature_importance": dict(zip(FEATURES, np.round(importances, 4).tolist()))}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.json", json.dumps(report, indent=1))
    _figures(report, present, out_dir)
    return report


def _figures(report: dict, present: np.ndarray, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.4))
    draw_confusion(ax, report["confusion"], present, report["classes"],
                   f"random forest, balanced recall {report['balanced_recall']:.2f}")
    imp = report["feature_importance"]
    order = sorted(imp, key=imp.get)
    bx.barh(range(len(order)), [imp[k] for k in order])
    bx.set_yticks(range(len(order)), order, fontsize=7)
    bx.set_xlabel("importance (mean decrease in impurity)")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=110)
    plt.close(fig)
