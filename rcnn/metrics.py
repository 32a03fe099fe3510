"""Classification metrics from per-step probabilities (pure NumPy, so they can be checked by hand).

`probs` (N, S, C) are class probabilities after each step, `step_mask` (N, S) marks valid steps, `labels`
(N,) true classes. "At step k" uses each sequence's prediction after k steps, or after its last valid step
if it has fewer (an object is classified with all it has, as the paper's curves do); "last" is step S.
"""
from __future__ import annotations

import json

import numpy as np


def to_json(obj, indent: int | None = None) -> str:
    """`obj` as strict JSON: NaN and infinities (a class absent from a bin, an object without a step) as
    null, since JSON has no NaN and most parsers (browsers', Go's, Java's) refuse Python's `NaN`."""
    def clean(x):
        if isinstance(x, float):
            return x if np.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def at_step(probs: np.ndarray, step_mask: np.ndarray, k: int) -> np.ndarray:
    """Probabilities (N, C) after min(k, n_valid) steps (k counts from 1)."""
    n_valid = step_mask.sum(axis=1)
    idx = np.clip(np.minimum(k, n_valid) - 1, 0, probs.shape[1] - 1)
    return probs[np.arange(len(probs)), idx]


def recall_by_label(probs: np.ndarray, step_mask: np.ndarray, labels: np.ndarray, mapping: np.ndarray,
                    k: int) -> dict[int, float]:
    """Recall of each dataset label at step k: the fraction of its objects predicted as the class it maps
    to (`mapping[label]`), so that two labels mapped to one class each get their own."""
    hit = at_step(probs, step_mask, k).argmax(1) == mapping[labels]
    return {int(i): float(hit[labels == i].mean()) for i in np.unique(labels)}


def confusion(labels: np.ndarray, pred: np.ndarray, n_classes: int, normalise: bool = True) -> np.ndarray:
    """Rows: true class, columns: predicted; normalised per true class (rows sum to 1) unless told not to."""
    m = np.zeros((n_classes, n_classes))
    np.add.at(m, (labels, pred), 1)
    if normalise:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return m


def recall_per_class(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class (NaN for classes absent from `labels`)."""
    m = confusion(labels, pred, n_classes, normalise=False)
    support = m.sum(axis=1)
    return np.where(support > 0, np.diag(m) / np.maximum(support, 1), np.nan)


def f1_per_class(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 = 2 P R / (P + R) per class (TAO-Net's figure); NaN where the class is absent from both."""
    m = confusion(labels, pred, n_classes, normalise=False)
    tp = np.diag(m)
    denom = m.sum(axis=0) + m.sum(axis=1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def roc_auc_ovr(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (GOTO), by the rank statistic with ties averaged; NaN if a class has
    no positives or no negatives."""
    from scipy.stats import rankdata

    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = labels == c
        n_pos, n_neg = pos.sum(), (~pos).sum()
        if n_pos and n_neg:
            ranks = rankdata(scores[:, c])
            out[c] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def hand_till_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Multi-class AUC of Hand & Till (2001, Mach. Learn. 45, 171), as GOTO reports it: the mean over class
    pairs (i, j) of (A(i|j) + A(j|i)) / 2, A(i|j) the AUC of score i separating class i from class j."""
    from scipy.stats import rankdata

    present = [c for c in range(scores.shape[1]) if (labels == c).any()]
    pairs = []
    for a_i, i in enumerate(present):
        for j in present[a_i + 1:]:
            sel = (labels == i) | (labels == j)
            a = []
            for pos, s in ((i, scores[sel, i]), (j, scores[sel, j])):
                is_pos = labels[sel] == pos
                n1, n0 = is_pos.sum(), (~is_pos).sum()
                ranks = rankdata(s)
                a.append((ranks[is_pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
            pairs.append(0.5 * (a[0] + a[1]))
    return float(np.mean(pairs)) if pairs else float("nan")


def accuracy_vs_step(probs: np.ndarray, step_mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy after k = 1..S steps."""
    return np.array([(at_step(probs, step_mask, k).argmax(1) == labels).mean() for k in range(1, probs.shape[1] + 1)])


def recall_vs_step(probs: np.ndarray, step_mask: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(S, C) recall of each class after k steps."""
    return np.array([recall_per_class(labels, at_step(probs, step_mask, k).argmax(1), n_classes)
                     for k in range(1, probs.shape[1] + 1)])


def accuracy_vs_magnitude(probs, step_mask, labels, mags, bins, steps=(1, 5, 10, 20)) -> dict:
    """Accuracy per magnitude bin after each of `steps` (the paper's Fig. 5, right); NaN for empty bins. Bins
    are [lo, hi) as `np.digitize` puts them: an object on an inner edge counts in the bin above, one on the last
    edge or outside in none. The keys are the steps used: a step beyond the S there are is S (20 with 18 steps
    is 18), repeats once."""
    which = np.digitize(mags, bins) - 1
    out = {}
    for k in dict.fromkeys(min(k, probs.shape[1]) for k in steps):
        correct = at_step(probs, step_mask, k).argmax(1) == labels
        out[k] = [float(correct[which == b].mean()) if (which == b).any() else float("nan") for b in range(len(bins) - 1)]
    return out


def summary(probs: np.ndarray, step_mask: np.ndarray, labels: np.ndarray, class_names: list[str],
            last_step: int | None = None) -> dict:
    """The headline numbers at the last step (at most `last_step`): accuracy, recall, F1, AUC, balanced recall."""
    n_classes = len(class_names)
    k = probs.shape[1] if last_step is None else min(last_step, probs.shape[1])
    p = at_step(probs, step_mask, k)
    pred = p.argmax(1)
    recall = recall_per_class(labels, pred, n_classes)
    present = ~np.isnan(recall)
    return {"step": int(k), "n_objects": int(len(labels)), "accuracy": float((pred == labels).mean()),
            "recall": {c: float(r) for c, r, ok in zip(class_names, recall, present) if ok},
            "balanced_recall": float(np.nanmean(recall)) if present.any() else float("nan"),
            "f1": {c: float(f) for c, f in zip(class_names, f1_per_class(labels, pred, n_classes)) if not np.isnan(f)},
            "roc_auc": {c: float(a) for c, a in zip(class_names, roc_auc_ovr(labels, p)) if not np.isnan(a)},
            "auc_hand_till": hand_till_auc(labels, p),
            "confusion": confusion(labels, pred, n_classes).tolist()}
