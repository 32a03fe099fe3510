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

Every dataset is checked before any work (`check_dataset`): `rcnn train`'s checks (`SequenceData`: arrays,
types, shapes, mask values, valid epochs first, labels in the class range), stamps of the config's size and
the per-epoch conditions at every valid epoch used (`photometry`'s checks), finite times and exposure times.
Objects with fewer than `MIN_EPOCHS` valid epochs have no features: they are left out of training and testing,
counted in the report (`objects_left_out`) and in its `mode`, as `rcnn evaluate` leaves out objects without a step.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from photometry.optimal import bad_pixels, zero_point_scaling
from simulator.dataset import UNLABELLED, class_names, open_h5, save_figure, write_text_atomic, zero_point_ref
from simulator.settings import psf_fwhm_arcsec
from simulator.stopping import check as check_stop

from . import metrics as M
from .config import TrainConfig
from .data import DatasetError, SequenceData
from .dmdt import asinh_mag
from .evaluate import DEFAULT_CLASS_MAP, draw_confusion, map_labels
from .train import check_report_out

FEATURES = ("median_mag", "amplitude_mag", "std_mag", "mad_mag", "skew", "kurtosis", "chi2_red", "beyond_1std",
            "max_brightening_sigma", "max_fading_sigma", "von_neumann", "ls_log_period_d", "ls_power",
            "slope_mag_per_d", "max_phase", "early_late_mag")
PERIOD_RANGE_D = (0.05, 10.0)
MIN_EPOCHS = 3  # valid epochs the features need (a reduced chi2, a von Neumann ratio, a period)
#: per-epoch conditions the aperture photometry reads, checked at valid epochs by photometry's rules (CONDITIONS)
PHOTOMETRY_CONDITIONS = ("seeing_arcsec", "gain", "read_noise", "saturation", "zero_point", "sky_adu")


def check_dataset(path: str | Path, max_epochs: int = 20) -> dict:
    """Refuse (DatasetError / PhotometryError, both ValueErrors naming the file, the array and the value) a
    dataset `aperture_light_curves` would crash on or silently misread; returns its `pixel_scale_arcsec` and
    `stamp_size` (config). `SequenceData`'s checks as for `rcnn train`, then `photometry`'s: stamps of the
    config's size, the conditions at every valid epoch among the first `max_epochs` (the seeing by the HiTS
    PSF relation the baseline uses); `mjd` finite and `exp_time_s` > 0 there too."""
    from photometry.dataset import check_conditions, check_shapes, check_valid_epochs, psf_options, require_arrays
    from simulator.settings import PSF_FWHM_OFFSET_ARCSEC, PSF_FWHM_PER_SEEING

    path = Path(path)
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < MIN_EPOCHS:
        raise ValueError(f"max_epochs must be an integer >= {MIN_EPOCHS} (the features need them), got {max_epochs!r}")
    if not path.exists():
        raise DatasetError(f"{path}: dataset not found")
    with open_h5(path) as f:
        opts = psf_options(f, path)
    SequenceData(path, TrainConfig(max_steps=max_epochs, n_w=1), stamp_size=opts["stamp_size"])
    keys = ["mjd"] + [f"conditions/{k}" for k in PHOTOMETRY_CONDITIONS + ("exp_time_s",)]
    with open_h5(path) as f:
        require_arrays(f, path, keys)
        mask = check_shapes(f, path, ["stamps", "mask"] + keys, opts["stamp_size"]).astype(bool)
        mask[:, max_epochs:] = False  # later epochs are never read
        relation = {"fwhm_per_seeing": PSF_FWHM_PER_SEEING, "fwhm_offset_arcsec": PSF_FWHM_OFFSET_ARCSEC}
        check_conditions(f, path, list(PHOTOMETRY_CONDITIONS), mask, relation)
        check_valid_epochs(f, path, {"mjd": ("a finite number", np.isfinite), "conditions/exp_time_s": (
            "a finite number > 0", lambda v: np.isfinite(v) & (v > 0))}, mask)
    return {k: opts[k] for k in ("pixel_scale_arcsec", "stamp_size")}


def aperture_light_curves(path: str | Path, max_epochs: int = 20, aperture_fwhm: float = 1.0,
                          chunk_objects: int = 4096, progress: bool = True, checked: dict | None = None) -> dict:
    """Aperture photometry of every valid epoch (first `max_epochs`) of a dataset: flux/err (eq. 4 scaled).
    Stamps are read `chunk_objects` objects at a time (a paper-scale set's stamps are tens of GB). The dataset
    is checked first (`check_dataset`) unless `checked` gives that check's result."""
    from tqdm.auto import tqdm

    if checked is None:
        checked = check_dataset(path, max_epochs)
    with open_h5(path) as f:
        t = min(f["mask"].shape[1], max_epochs)
        # valid epochs are packed first (checked): keep the first max_epochs of them
        mask = f["mask"][:, :t].astype(bool)  # 0/1 numbers allowed, as for `rcnn train`
        zero_point, exp_time = (f[f"conditions/{k}"][:, :t].astype(np.float64) for k in ("zero_point", "exp_time_s"))
        zp_ref = zero_point_ref(f, path)  # checked with the rest by `check_dataset`
        out = {"mjd": f["mjd"][:, :t], "mask": mask, "label": f["label"][()].astype(int), "classes": class_names(path),
               "split": f["split"][()]}
        scale = checked["pixel_scale_arcsec"]
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
    zs = zero_point_scaling(zero_point, mask, zp_ref)
    out["flux"], out["flux_err"] = flux * zs, err * zs
    first = np.argmax(mask, axis=1)
    rows = np.arange(n)
    # m = zp - 2.5 log10(ADU / exp_time): the offset that turns -2.5 log10(ADU) into a g magnitude
    out["mag_offset"] = ((zero_point[rows, first] if zp_ref is None else zp_ref)
                         + 2.5 * np.log10(exp_time[rows, first]))
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
        if v.sum() < MIN_EPOCHS:
            raise ValueError(f"object {k} has {int(v.sum())} usable epochs (valid, finite flux, positive error); "
                             f"light-curve features need {MIN_EPOCHS}")
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


def _load(path, max_epochs, checked: dict, progress: bool = True):
    """Features (of the objects kept), the light curves, and `keep`: the objects with >= MIN_EPOCHS valid
    epochs (the others are left out). A valid epoch the photometry could not measure is an error."""
    lc = aperture_light_curves(path, max_epochs, progress=progress, checked=checked)
    mask = lc["mask"]
    bad = mask & ~(np.isfinite(lc["flux"]) & np.isfinite(lc["flux_err"]) & (lc["flux_err"] > 0))
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise DatasetError(f"{path}: aperture photometry of object {i} at valid epoch {j} gave flux "
                           f"{lc['flux'][i, j]} +- {lc['flux_err'][i, j]} ADU ({int(bad.sum())} such epoch(s)); "
                           "check its stamps and conditions ('conditions/sky_adu', 'gain', 'read_noise')")
    keep = mask.sum(1) >= MIN_EPOCHS
    if not keep.any():
        raise DatasetError(f"{path}: no object has {MIN_EPOCHS} valid epochs (see 'mask'); the light-curve "
                           "features need them")
    x = light_curve_features(lc["flux"][keep], lc["flux_err"][keep], lc["mjd"][keep], mask[keep],
                             lc["mag_offset"][keep], progress=progress)
    return x, lc, keep


def run_baseline(data: str | Path, out_dir: str | Path, test: str | Path | None = None, cv: int | None = None,
                 class_map: dict | None = None, seed: int = 0, max_epochs: int = 20, n_trees: int = 500,
                 progress: bool = True) -> dict:
    """Train and test the random forest (see the module docstring); returns the metrics written."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold

    out_dir = Path(out_dir)
    check_report_out(out_dir, "report")
    if test is not None and cv is not None:
        raise ValueError("give at most one of --test and --cv")
    if test is None and getattr(class_map, "given", None):
        raise ValueError("--class-map maps the labels of --test's dataset to the training classes: give --test too")
    if cv is not None and (not isinstance(cv, (int, np.integer)) or isinstance(cv, bool) or cv < 2):
        raise ValueError(f"--cv {cv}: needs 2 <= K <= the smallest class's count")
    if not isinstance(n_trees, int) or isinstance(n_trees, bool) or n_trees < 1:
        raise ValueError(f"n_trees must be an integer >= 1, got {n_trees!r}")
    if UNLABELLED in class_names(data):  # before the photometry: nothing to learn from
        raise DatasetError(f"{data}: its objects were imported without labels; the forest trains on labelled ones")
    checked = {p: check_dataset(p, max_epochs) for p in ((data,) if test is None else (data, test))}  # before any work
    x, lc, keep = _load(data, max_epochs, checked[data], progress)
    classes, y = lc["classes"], lc["label"][keep]
    left_out = {str(data): int((~keep).sum())}
    forest = lambda: RandomForestClassifier(n_trees, class_weight="balanced", random_state=seed, n_jobs=-1)  # noqa: E731
    if test is not None:
        x_test, lc_test, keep_test = _load(test, max_epochs, checked[test], progress)
        left_out[str(test)] = int((~keep_test).sum())
        y_test = map_labels(lc_test["classes"], classes, DEFAULT_CLASS_MAP if class_map is None else class_map,
                            test)[lc_test["label"][keep_test]]
        model = forest().fit(x, y)
        pred, importances, mode = model.predict(x_test), model.feature_importances_, f"train {data}, test {test}"
    elif cv is not None:
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
        tr, te = lc["split"][keep] == 0, lc["split"][keep] == 2
        if not tr.any() or not te.any():
            raise ValueError(f"{data}: needs train and test splits of objects with >= {MIN_EPOCHS} valid epochs "
                             f"(or give --test or --cv)")
        model = forest().fit(x[tr], y[tr])
        y_test, pred, importances = y[te], model.predict(x[te]), model.feature_importances_
        mode = f"train split -> test split of {data}"
    if any(left_out.values()):
        mode += "; left out (< %d valid epochs): %s" % (MIN_EPOCHS, ", ".join(f"{n} of {p}" for p, n in left_out.items()))
    present = np.unique(y_test)
    recall = M.recall_per_class(y_test, pred, len(classes))
    report = {"mode": mode, "n_test": int(len(y_test)), "max_epochs": max_epochs, "classes": classes,
              "recall": {classes[c]: float(recall[c]) for c in present},
              "balanced_recall": float(np.mean(recall[present])),
              "accuracy": float(np.mean(pred == y_test)),
              "confusion": M.confusion(y_test, pred, len(classes)).tolist(),
              "feature_importance": dict(zip(FEATURES, np.round(importances, 4).tolist())),
              "min_valid_epochs": MIN_EPOCHS, "objects_left_out": left_out}
    out_dir.mkdir(parents=True, exist_ok=True)
    _figures(report, present, out_dir)
    write_text_atomic(out_dir / "metrics.json", M.to_json(report, indent=1))  # last: the report is complete
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
    save_figure(fig, out_dir / "confusion.png", dpi=110)
