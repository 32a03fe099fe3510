"""A look at a dataset: a printed table per class and a PNG of example stamp sequences and conditions."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .dataset import class_names, save_figure


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
    return save_figure(fig, png, dpi=110)


def plot_gallery(path: str | Path, png: str | Path, n_stamps: int = 10) -> Path:
    """Per class, one object's true light curve (with the 5-sigma limits and the alert) beside its first
    `n_stamps` sky-subtracted stamps on one colour scale (Carrasco-Davis et al. 2019, Figs. 2 and 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = class_names(path)
    with h5py.File(path, "r") as f:
        label = f["label"][()]
        mask = f["mask"][()]
        mag = f["truth/mag"][()]
        brightest = np.where(np.isfinite(mag), mag, np.inf).min(axis=1)
        host_mag = f["truth/host_mag"][()]
        brightest = np.where(np.isfinite(brightest), brightest, host_mag)  # galaxies: the host
        picks = []
        for c in range(len(names)):
            members = np.flatnonzero(label == c)
            if not len(members):
                continue
            # a clearly visible example (brighter than the class median) with the most epochs
            seen = members[~(brightest[members] > np.nanmedian(brightest[members]))]
            seen = seen if len(seen) else members
            picks.append(int(seen[np.argmax(mask[seen].sum(1))]))
        rows = {i: {k: f[k][i] for k in ("stamps", "mjd", "mask", "truth/mag", "conditions/limmag5",
                                         "conditions/sky_adu", "truth/alert_epoch", "truth/subtype")} for i in picks}
    fig = plt.figure(figsize=(2.6 + 1.1 * n_stamps, 1.25 * len(picks) + 0.4))
    grid = fig.add_gridspec(len(picks), n_stamps + 3, wspace=0.08, hspace=0.6)
    for r, i in enumerate(picks):
        d = rows[i]
        v = d["mask"]
        t = d["mjd"][v] - d["mjd"][v][0]
        ax = fig.add_subplot(grid[r, :3])
        mag = d["truth/mag"][v]
        ax.plot(t, np.where(np.isfinite(mag), mag, np.nan), "o-", ms=3, label="true g")
        ax.plot(t, d["conditions/limmag5"][v], "k_", ms=6, label="5-sigma limit")
        if d["truth/alert_epoch"] >= 0:
            ax.axvline(t[d["truth/alert_epoch"]], color="r", lw=0.8)
        if not np.isfinite(mag).any() and np.isfinite(host_mag[i]):
            ax.axhline(host_mag[i], color="C1", lw=1.0)
            ax.text(t[0], host_mag[i], " host galaxy g", fontsize=6, va="bottom", color="C1")
        ax.invert_yaxis()
        subtype = d["truth/subtype"].decode() if isinstance(d["truth/subtype"], bytes) else str(d["truth/subtype"])
        ax.set_title(f"{names[label[i]]} {subtype}".strip(), fontsize=8, loc="left")
        ax.tick_params(labelsize=6)
        if r == len(picks) - 1:
            ax.set_xlabel("days since first epoch", fontsize=7)
        seq = d["stamps"][v] - d["conditions/sky_adu"][v][:, None, None]
        lo, hi = np.percentile(seq[:n_stamps], [1, 99.7]) if len(seq) else (0, 1)
        for k in range(n_stamps):
            ax = fig.add_subplot(grid[r, 3 + k])
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(seq):
                ax.imshow(seq[k], origin="lower", cmap="viridis", vmin=lo, vmax=hi)
                ax.set_title(f"{t[k]:.1f} d", fontsize=6, color="r" if k == d["truth/alert_epoch"] else "k")
    return save_figure(fig, png, dpi=110, bbox_inches="tight")
