"""`rcnn evaluate`: metrics and figures of trained runs on a simulated test split or on real labelled stamps.

Simulated (`DATA.h5`, its test split): accuracy vs number of inputs, recall per class vs step, accuracy vs
magnitude at steps 1/5/10/20 (Carrasco-Davis et al. 2019, Fig. 5; a step beyond the run's last is its last,
and is named so: 18 with 20 images of n_w = 3), normalised confusion matrices at the last step (Figs. 6-9),
F1 per class (TAO-Net) and one-vs-rest ROC AUC (GOTO). Several runs (the RCNN and the light-curve classifier)
are drawn side by side.

Real (`--real REAL.h5` from `rcnn import-real`): the dataset's labels are mapped to model classes
(`DEFAULT_CLASS_MAP`, or `--class-map SN=supernova,...`); recall per real class at the last step (at most
20) and vs step, balanced recall, confusion matrix (real classes x model classes): the domain-transfer
figure of merit; a simulated dataset given there is refused (`is_simulated`). Everything goes to
`REPORT_DIR/metrics.json` and PNG figures; the top-level `recall` and `balanced_recall` are the first run's,
named by `recall_run`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.dataset import UNLABELLED, class_names, open_h5, save_figure, write_text_atomic

from . import metrics as M
from .data import SequenceData
from .inference import Classifier, Predictions, predict
from .train import check_report_out

#: HiTS real labels -> model classes.
DEFAULT_CLASS_MAP = {"SN": "supernova", "RRLyrae": "rrlyrae", "EB": "eclipsing_binary", "NV": "nonvariable",
                     "Ceph": "cepheid", "Gal": "galaxy", "Ast": "asteroid"}
MAG_BINS = np.arange(14.0, 26.01, 1.0)


class ClassMapError(ValueError):
    """A label that cannot be mapped to the model's classes."""


class ClassMap(dict):
    """Real label -> model class: the default merged with a `--class-map`, whose labels are `given`."""

    given: frozenset = frozenset()


def parse_class_map(text: str | None) -> ClassMap:
    """'SN=supernova,NV=nonvariable' -> ClassMap (merged over the default); a label given twice is an error."""
    out, given = ClassMap(DEFAULT_CLASS_MAP), []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ClassMapError(f"--class-map expects LABEL=model_class pairs, got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k in given:
            raise ClassMapError(f"--class-map maps {k!r} twice ({k}={out[k]}, {k}={v})")
        out[k] = v
        given.append(k)
    out.given = frozenset(given)
    return out


def map_labels(dataset_classes: list[str], model_classes: list[str], class_map: dict | str | None,
               path) -> np.ndarray:
    """Index of each dataset class among the model's classes: as a `--class-map` maps it (`ClassMap.given`;
    a string is parsed as `--class-map` is), else to the model class of the same name, else as the default
    map does. A label a `--class-map` names must be one of the dataset's: else a typo would go unnoticed."""
    if isinstance(class_map, str):
        class_map = parse_class_map(class_map)
    unknown = sorted(set(getattr(class_map, "given", ())) - set(dataset_classes))
    if unknown:
        raise ClassMapError(f"{path}: --class-map maps {unknown}, which are not labels of this dataset (its labels: "
                            f"{dataset_classes})")
    out = []
    for name in dataset_classes:
        if name == UNLABELLED:
            raise ClassMapError(f"{path}: its objects were imported without labels: `rcnn classify` gives their "
                                f"probabilities; evaluating needs labelled objects")
        given = name in getattr(class_map, "given", ())
        target = class_map[name] if given else name if name in model_classes else (class_map or {}).get(name)
        if target is None:
            raise ClassMapError(f"{path}: class {name!r} has no mapping to the model's classes {model_classes}; "
                                f"give --class-map {name}=<model class>")
        if target not in model_classes:
            raise ClassMapError(f"{path}: class {name!r} maps to {target!r}, which the model does not have "
                                f"(its classes: {model_classes})")
        out.append(model_classes.index(target))
    return np.array(out)


def is_simulated(path: str | Path) -> bool:
    """Whether `path` is a dataset from `simulate`: it has `truth/mag`, which `rcnn import-real` never writes."""
    with open_h5(path) as f:
        return "truth/mag" in f


def _magnitudes(path: Path, index: np.ndarray) -> np.ndarray:
    """Per object: brightest true point-source magnitude (host magnitude for galaxies), or for real data the
    median photometric magnitude."""
    with open_h5(path) as f:
        if "truth/mag" in f:
            mag = f["truth/mag"][()][index]
            best = np.where(np.isfinite(mag), mag, np.inf).min(axis=1)
            host = f["truth/host_mag"][()][index] if "truth/host_mag" in f else np.full(len(index), np.nan)
            return np.where(np.isfinite(best), best, host)
        if "photometry/flux_adu" in f:
            flux = f["photometry/flux_adu"][()][index]
            zp, t = f["conditions/zero_point"][()][index], f["conditions/exp_time_s"][()][index]
            with np.errstate(invalid="ignore", divide="ignore"):
                m = np.where(flux > 0, zp - 2.5 * np.log10(flux / t), np.nan)
            return np.nanmedian(m, axis=1)
    return np.full(len(index), np.nan)


def evaluate(run_dirs: list[str | Path], data: str | Path, out_dir: str | Path, real: bool = False,
             class_map: dict | str | None = None, last_step: int = 20, progress: bool = True) -> dict:
    """Evaluate each run on `data` (test split, or every object of a real file) and write the report."""
    out_dir = Path(out_dir)
    check_report_out(out_dir, "report")
    data = Path(data)
    report: dict = {"data": str(data), "real": real, "runs": {}}
    results = {}
    ds_classes = class_names(data)
    if real and is_simulated(data):  # every object would be scored, its training split too
        raise ValueError(f"{data}: a simulated dataset (it has truth/mag): --real takes a real labelled file from "
                         "`rcnn import-real` and scores all its objects; give a simulated one with --data, which "
                         "scores its test split")
    resolved = [Path(r).resolve() for r in run_dirs]
    twice = list(dict.fromkeys(str(r) for r, p in zip(run_dirs, resolved) if resolved.count(p) > 1))
    if twice:
        raise ValueError(f"run directories given more than once: {', '.join(twice)}")
    classifiers = []
    for run_dir in run_dirs:  # every run and its inputs checked before any predicts (minutes each)
        clf = Classifier(run_dir)
        SequenceData(data, clf.cfg, clf.dataset_stamp_size)
        classifiers.append((clf, map_labels(ds_classes, clf.class_names, class_map or DEFAULT_CLASS_MAP, data)))
    for run_dir, path, (clf, mapping) in zip(run_dirs, resolved, classifiers):
        every = predict(clf, data, split=None if real else "test", progress=progress)
        pred = every.scored()  # a real object with fewer than n_w valid epochs has no prediction
        labels = mapping[pred.labels]
        name = _run_name(path, clf.cfg.model, results)
        results[name] = (pred, labels)
        summary = M.summary(pred.probs, pred.step_mask, labels, clf.class_names, last_step)
        recall_steps = M.recall_vs_step(pred.probs, pred.step_mask, labels, len(clf.class_names))
        entry = {"run": str(run_dir), "model": clf.cfg.model, "checkpoint_step": clf.step, **summary,
                 "objects_without_step": len(every.index) - len(pred.index),
                 "accuracy_vs_step": M.accuracy_vs_step(pred.probs, pred.step_mask, labels).tolist(),
                 "recall_vs_step": {clf.class_names[c]: recall_steps[:, c].tolist() for c in np.unique(labels)}}
        if real:  # recall of each real label (two labels mapped to one class each have their own)
            entry["recall_real_labels"] = {ds_classes[i]: r for i, r in M.recall_by_label(
                pred.probs, pred.step_mask, pred.labels, mapping, summary["step"]).items()}
        else:  # each run's own scored objects: a larger n_w leaves out more short sequences
            mags = _magnitudes(data, pred.index)
            entry["accuracy_vs_magnitude"] = {"bins": MAG_BINS.tolist(), **{
                str(k): v for k, v in M.accuracy_vs_magnitude(pred.probs, pred.step_mask, labels, mags, MAG_BINS,
                                                              steps=(1, 5, 10, summary["step"])).items()}}
        report["runs"][name] = entry
    first_name, first = next(iter(report["runs"].items()))
    report["recall_run"] = first_name  # the top-level recall and balanced recall are this run's
    report["recall"], report["balanced_recall"] = first["recall"], first["balanced_recall"]
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a run or dataset that fails leaves no report behind
    _figures(report, results, out_dir, real)
    write_text_atomic(out_dir / "metrics.json", M.to_json(report, indent=2))  # last: the report is complete
    return report


def _run_name(path: Path, model: str, taken) -> str:
    """'NAME (model)', with as many parent folders as it takes to differ from the names `taken` (two runs
    called `run`, e.g. a fine-tuned one, become 'ft/run (rcnn)')."""
    for k in range(1, len(path.parts) + 1):
        name = f"{'/'.join(path.parts[-k:]).lstrip('/')} ({model})"
        if name not in taken:
            return name
    raise AssertionError(f"{path}: no unique name")  # distinct resolved paths differ in some suffix


def draw_confusion(ax, confusion: np.ndarray, rows: np.ndarray, class_names: list[str], title: str) -> None:
    """A normalised confusion matrix on `ax`: the true classes `rows` against every predicted class."""
    sub = np.asarray(confusion)[rows]
    ax.imshow(sub, vmin=0, vmax=1, cmap="Blues")
    for i in range(sub.shape[0]):
        for j in range(sub.shape[1]):
            ax.text(j, i, f"{sub[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if sub[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [class_names[r] for r in rows], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)


def _figures(report: dict, results: dict, out_dir: Path, real: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.5 * (1 + len(runs)), 3.6))
    ax = axes[0]
    for name, e in runs.items():
        ax.plot(np.arange(1, len(e["accuracy_vs_step"]) + 1), e["accuracy_vs_step"], marker="o", ms=3, label=name)
    ax.set_xlabel("number of inputs (steps)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    for ax, (name, e) in zip(axes[1:], runs.items()):
        for cls, r in e["recall_vs_step"].items():
            ax.plot(np.arange(1, len(r) + 1), r, label=cls)
        ax.set_title(f"recall vs step: {name}", fontsize=8)
        ax.set_xlabel("steps")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out_dir / "accuracy_vs_step.png", dpi=110)

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, (name, e) in zip(axes[0], runs.items()):
        pred, labels = results[name]
        cm = np.array(e["confusion"])
        model_classes = pred.class_names
        rows = np.unique(labels) if real else np.arange(len(model_classes))
        draw_confusion(ax, cm, rows, model_classes,
                       f"{name}, step {e['step']}, balanced recall {e['balanced_recall']:.2f}")
    fig.tight_layout()
    save_figure(fig, out_dir / "confusion.png", dpi=110)

    if real:  # an earlier simulated-data report's, into the same DIR: not of this report
        (out_dir / "accuracy_vs_magnitude.png").unlink(missing_ok=True)
    else:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        centres = 0.5 * (MAG_BINS[1:] + MAG_BINS[:-1])
        for name, e in runs.items():
            steps = [k for k in e["accuracy_vs_magnitude"] if k != "bins"]  # the steps used, the last as it is
            for k in dict.fromkeys(k for k in (steps[0], "5", steps[-1]) if k in steps):
                ax.plot(centres, e["accuracy_vs_magnitude"][k], marker="o", ms=3, label=f"{name}, step {k}")
        ax.set_xlabel("g magnitude (brightest)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, out_dir / "accuracy_vs_magnitude.png", dpi=110)


__all__ = ["DEFAULT_CLASS_MAP", "Predictions", "evaluate", "is_simulated", "map_labels", "parse_class_map"]
