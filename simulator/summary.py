"""A look at a dataset: a printed table per class and a PNG of example stamp sequences and conditions."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .dataset import class_names


def summarize(path: str | Path) -> str:
    """One line per class: objects, split counts, valid epochs, host fraction, median magnitude."""
    names = class_names(path)
    with h5py.File(path, "r") as f:
        label, split, mask = f["label"][()], f["split"][()], f["mask"][()]
        has_host, mag = f["truth/has_host"][()], f["truth/mag"][()]
        seeing = f["conditions/seeing_arcsec"][()]
        n, t = mask.shape
        lines = [f"{path}: {n} objects x {t} epochs, survey {f.attrs['survey']}, seed {f.attrs['seed']}, "
                 f"median seeing {np.nanmedian(seeing):.2f}\""]
    lines.append(f"{'class':<18}{'N':>6}{'train/val/test':>16}{'epochs':>8}{'host':>7}{'med mag':>9}")
    for c, name in enumerate(names):
        sel = label == c
        counts = "/".join(str(int(((split == s) & sel).sum())) for s in range(3))
        finite = mag[sel][np.isfinite(mag[sel])]
        med = f"{np.median(finite):.2f}" if finite.size else "-"
        lines.append(f"{name:<18}{int(sel.sum()):>6}{counts:>16}{mask[sel].sum(1).mean():>8.1f}"
                     f"{has_host[sel].mean():>7.2f}{med:>9}")
    return "\n".join(lines)


def plot_summary(path: str | Path, png: str | Path, n_epochs: int = 8) -> Path:
    """Example sequences (one object per class, sky-subtracted, first `n_epochs`) and condition histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = class_names(path)
    with h5py.File(path, "r") as f:
        label = f["label"][()]
        first = [int(np.flatnonzero(label == c)[0]) for c in range(len(names)) if (label == c).any()]
        stamps = f["stamps"][sorted(first)]
        order = {i: k for k, i in enumerate(sorted(first))}
        sky = f["conditions/sky_adu"][()]
        seeing = f["conditions/seeing_arcsec"][()]
        mjd = f["mjd"][()]
    fig = plt.figure(figsize=(1.4 * n_epochs, 1.5 * len(first) + 2.6))
    grid = fig.add_gridspec(len(first) + 1, n_epochs, height_ratios=[1] * len(first) + [1.6])
    for row, i in enumerate(first):
        seq = stamps[order[i]] - sky[i][:, None, None]
        for t in range(n_epochs):
            ax = fig.add_subplot(grid[row, t])
            if t < len(seq) and np.isfinite(sky[i, t]):
                ax.imshow(seq[t], origin="lower", cmap="viridis")
                ax.set_title(f"{mjd[i, t] - np.nanmin(mjd):.2f} d", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_ylabel(names[label[i]], fontsize=8)
    half = n_epochs // 2
    ax = fig.add_subplot(grid[-1, :half])
    ax.hist(seeing[np.isfinite(seeing)], bins=30)
    ax.set_xlabel("seeing FWHM [arcsec]")
    ax = fig.add_subplot(grid[-1, half:])
    ax.hist(sky[np.isfinite(sky)], bins=30)
    ax.set_xlabel("sky [ADU]")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
