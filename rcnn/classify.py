"""`rcnn classify RUN_DIR INPUT.h5 --out DIR`: class probabilities after every step of every object.

Writes `probabilities.csv` (one row per object and valid step: object, step, mjd of the step's last image,
predicted class, one column per class) and `probabilities.json` (per object: predicted class after the last
step and the per-step probabilities), and with `--figures N` the paper's Appendix B figure for the first N
objects: the light curve with its first 5-sigma detection, the probabilities vs time, the stamps.
For brokers the same is a Python call: `Classifier(run_dir).classify_arrays(...)`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from simulator.dataset import open_h5, save_figure, write_text_atomic

from .inference import Classifier, predict
from .metrics import to_json
from .train import check_report_out


def classify(run_dir: str | Path, data: str | Path, out_dir: str | Path, figures: int = 0,
             progress: bool = True) -> Path:
    """`rcnn classify`: per-step probabilities of every object of `data` in `out_dir` (CSV, JSON, figures)."""
    check_report_out(out_dir, "probabilities")
    clf = Classifier(run_dir)
    pred = predict(clf, data, split=None, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_h5(data) as f:
        mjd = f["mjd"][()]
        # real imports keep each object's own name (a broker's identifier): the JSON carries it
        object_names = list(f["truth/name"].asstr()[()]) if "truth/name" in f else None
    n_w = clf.cfg.n_w
    names = clf.class_names
    tmp = out_dir / "probabilities.csv.tmp"
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "step", "mjd", "predicted"] + [f"p_{c}" for c in names])
        for row, obj in enumerate(pred.index):
            for s in np.flatnonzero(pred.step_mask[row]):
                p = pred.probs[row, s]
                w.writerow([int(obj), int(s + 1), f"{mjd[obj, s + n_w - 1]:.5f}", names[int(p.argmax())]]
                           + [f"{x:.6f}" for x in p])
    tmp.replace(out_dir / "probabilities.csv")
    objects = []
    for row, obj in enumerate(pred.index):
        valid = np.flatnonzero(pred.step_mask[row])
        last = pred.probs[row, valid[-1]] if len(valid) else np.full(len(names), np.nan)
        objects.append({"object": int(obj), **({"name": object_names[obj]} if object_names else {}),
                        "predicted": names[int(np.nanargmax(last))] if len(valid) else None,
                        "probabilities": {c: [float(x) for x in pred.probs[row, valid, i]] for i, c in enumerate(names)}})
    pngs = [out_dir / f"object_{int(obj):06d}.png" for obj in pred.index[:figures]]
    for old in set(out_dir.glob("object_*.png")) - set(pngs):  # an earlier classify's into the same DIR
        old.unlink()
    for row, png in enumerate(pngs):
        appendix_b_figure(data, int(pred.index[row]), pred.probs[row], pred.step_mask[row], names, n_w, png)
    # last: its presence says the output is complete
    write_text_atomic(out_dir / "probabilities.json",
                      to_json({"classes": names, "run": str(run_dir), "objects": objects}))
    return out_dir


def appendix_b_figure(data: str | Path, obj: int, probs: np.ndarray, step_mask: np.ndarray, names: list[str],
                      n_w: int, png: Path) -> Path:
    """Light curve (photometry, if present) with the first detection, probabilities vs time, first stamps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open_h5(data) as f:
        mask = f["mask"][obj]
        t = f["mjd"][obj][mask]
        t0 = t[0]
        stamps = f["stamps"][obj][mask] - f["conditions/sky_adu"][obj][mask][:, None, None]
        flux = f["photometry/flux_adu"][obj][mask] if "photometry/flux_adu" in f else None
        err = f["photometry/flux_err_adu"][obj][mask] if flux is not None else None
        first = int(f["photometry/first_detection"][obj]) if "photometry/first_detection" in f else -1
    n_stamps = min(10, len(stamps))
    fig = plt.figure(figsize=(11, 6))
    grid = fig.add_gridspec(3, n_stamps, height_ratios=[1.2, 1.2, 0.8])
    ax = fig.add_subplot(grid[0, :])
    if flux is not None:
        ax.errorbar(t - t0, flux, err, fmt="o", ms=3)
        if first >= 0:
            ax.axvline(t[first] - t0, color="r", lw=0.8, label="first 5-sigma detection")
            ax.legend(fontsize=7)
    ax.set_ylabel("flux [ADU]")
    ax = fig.add_subplot(grid[1, :])
    valid = np.flatnonzero(step_mask)
    times = t[valid + n_w - 1] - t0
    for i, c in enumerate(names):
        ax.plot(times, probs[valid, i], marker="o", ms=3, label=c)
    ax.set_ylim(0, 1)
    ax.set_xlabel("days since the first image")
    ax.set_ylabel("probability")
    ax.legend(fontsize=6, ncol=4)
    for k in range(n_stamps):
        a = fig.add_subplot(grid[2, k])
        a.imshow(stamps[k], origin="lower", cmap="viridis")
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(f"{t[k] - t0:.1f} d", fontsize=6)
    fig.suptitle(f"object {obj}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, png, dpi=100)
