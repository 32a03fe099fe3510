"""A run's training curves, `RUN_DIR/training.png`: what `metrics.jsonl` holds, as people would rather read it.

Three panels against the iteration: the training loss (mean over each evaluation interval) and the
validation loss, with the kept (lowest validation loss) checkpoint marked; the validation accuracy (at each
sequence's last valid step); the training throughput in sequences/s per interval. `rcnn train` redraws it
after every evaluation, so a running or killed job's figure is current to its last evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIGURE = "training.png"
METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path, torn_tail: bool = False) -> list[dict]:
    """The evaluations logged in `run_dir/metrics.jsonl`, in order (empty if none yet). `torn_tail`: skip an
    unterminated last line (a kill in the middle of its append; every complete row ends with a newline)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    text = path.read_text()
    if torn_tail and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not JSON ({exc})") from None
        missing = {"step", "train_loss", "val_loss"} - set(row)
        if missing:
            raise ValueError(f"{path}: line {n} lacks {sorted(missing)}")
        out.append(row)
    return out


def kept_evaluation(rows: list[dict]) -> dict | None:
    """The evaluation whose checkpoint `checkpoints/best` holds, by `rcnn train`'s rule: an evaluation
    replaces the kept one when its validation loss is below the kept loss as stored (float32); None if no
    loss was finite."""
    kept, kept_loss = None, np.float32(np.inf)
    for row in rows:
        if row["val_loss"] < float(kept_loss):
            kept, kept_loss = row, np.float32(row["val_loss"])
    return kept


def draw_training_curves(run_dir: str | Path, title: str | None = None):
    """The figure of `run_dir`'s training curves (a matplotlib Figure), or None before the first evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return None
    step = [r["step"] for r in rows]
    best = kept_evaluation(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    ax = axes[0]
    ax.plot(step, [r["train_loss"] for r in rows], marker="o", ms=3, label="training (interval mean)")
    ax.plot(step, [r["val_loss"] for r in rows], marker="o", ms=3, label="validation")
    if best is not None:
        ax.axvline(best["step"], color="0.5", ls="--", lw=0.8, label=f"kept checkpoint (step {best['step']})")
    ax.set_ylabel("loss (summed over steps)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(step, [r.get("val_accuracy", float("nan")) for r in rows], marker="o", ms=3)
    if best is not None:
        ax.axvline(best["step"], color="0.5", ls="--", lw=0.8)
    ax.set_ylabel("validation accuracy (last step)")
    ax.set_ylim(0, 1.02)
    ax = axes[2]
    ax.plot(step, [r.get("seq_per_s", float("nan")) for r in rows], marker="o", ms=3)
    ax.set_ylabel("training sequences/s")
    ax.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.suptitle(title or str(run_dir), fontsize=9)
    fig.tight_layout()
    return fig


def write_training_figure(run_dir: str | Path, title: str | None = None) -> Path | None:
    """`run_dir/training.png` (re)drawn from `metrics.jsonl`, written under a temporary name and renamed, so a
    kill mid-write leaves the previous figure; None (nothing written) before the first evaluation."""
    from simulator.dataset import save_figure

    fig = draw_training_curves(run_dir, title)
    if fig is None:
        return None
    return save_figure(fig, Path(run_dir) / FIGURE, dpi=100)


__all__ = ["FIGURE", "METRICS", "draw_training_curves", "kept_evaluation", "read_metrics", "write_training_figure"]
