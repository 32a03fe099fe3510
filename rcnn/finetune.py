"""`rcnn finetune RUN_DIR REAL.h5 --out NEW_RUN`: continue training on a few real labelled objects.

The real labels are mapped to the run's classes (`rcnn.evaluate.DEFAULT_CLASS_MAP` or `--class-map`);
`per_class` objects of each real class, drawn with the seed, train (split 0) and the others are held out
(split 2) and never seen: the report evaluates the original and the fine-tuned model on them. Training
starts from the run's best checkpoint with a low learning rate, the convolutional stack optionally frozen,
and keeps the checkpoint with the lowest loss on the training objects (there are too few to spare a
validation set). Carrasco-Davis et al.'s follow-up reached 0.94 balanced recall with 10 per class.

`OUT/finetune.json` records what chose the objects (run, real data by its fingerprint, per_class, label
mapping, seed): a rerun with the same goes on (a killed run resumes, a larger `iterations` extends it), one
with others is refused, since the held-out objects of the report would no longer be the ones the run never
saw.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from simulator.dataset import write_text_atomic

from .data import SequenceData
from .evaluate import DEFAULT_CLASS_MAP, evaluate, is_simulated, map_labels
from .inference import Classifier
from .train import RunError, check_report_out, data_fingerprint, read_run_config, train

MANIFEST = "finetune.json"


def finetune(run_dir: str | Path, real: str | Path, out: str | Path, per_class: int = 5, iterations: int = 300,
             learning_rate: float = 1e-4, freeze: str = "conv", class_map: dict | str | None = None, seed: int = 0,
             progress: bool = True) -> dict:
    run_dir, real, out = Path(run_dir), Path(real), Path(out)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    check_report_out(out, "fine-tuned run, its data and report")  # (OUT/run is one: a rerun gives OUT)
    base = Classifier(run_dir)
    data = out / "finetune_data.h5"
    # the real file as training will read it: its errors name it, not the copy
    source = SequenceData(real, base.cfg, base.dataset_stamp_size)
    if is_simulated(real):
        raise ValueError(f"{real}: a simulated dataset (it has truth/mag): `rcnn finetune RUN_DIR REAL.h5` takes a "
                         "real labelled file from `rcnn import-real`; simulated data trains with `rcnn train` "
                         f"(`--set init_from={run_dir}` starts from this run's weights)")
    names, label = source.class_names, source.label
    mapping = map_labels(names, base.class_names, class_map or DEFAULT_CLASS_MAP, real)
    rng = np.random.default_rng(seed)
    split = np.full(len(label), 2, np.uint8)
    for c in np.unique(label):
        members = np.flatnonzero(label == c)
        if len(members) <= per_class:
            raise ValueError(f"{real}: class {names[c]!r} has {len(members)} objects; per_class {per_class} would "
                             "leave none to evaluate on")
        split[rng.choice(members, per_class, replace=False)] = 0
    n_train = int((split == 0).sum())
    chosen = {"run": str(run_dir.resolve()), "real": str(real.resolve()), "real_fingerprint": data_fingerprint(real),
              "per_class": per_class, "seed": seed, "labels": {n: base.class_names[m] for n, m in zip(names, mapping)}}
    try:
        before = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
    except ValueError as exc:  # not JSON, not UTF-8
        raise RunError(f"{out / MANIFEST}: unreadable ({exc}); remove {out} to start again") from None
    if before is not None:
        _check_manifest(before, chosen, out, real)
    run_cfg = out / "run" / "config.yaml"  # a rerun keeps the interval of the run it goes on with
    eval_every = read_run_config(run_cfg)[0].eval_every if before and run_cfg.is_file() else max(iterations // 5, 1)
    cfg = dataclasses.replace(base.cfg, init_from=str(run_dir), freeze=freeze, iterations=iterations,
                              learning_rate=learning_rate, eval_every=eval_every, seed=seed,
                              batch_size=min(base.cfg.batch_size, 2 ** int(np.log2(max(n_train, 1)))),
                              validation_split="train", eval_batches=max(1, n_train // 8 + 1))
    out.mkdir(parents=True, exist_ok=True)  # only now: a run or real file that fails leaves nothing behind
    write_text_atomic(out / MANIFEST, json.dumps(chosen, indent=1))
    if before is None or not data.exists():  # else the same file a first run wrote
        tmp = data.with_name(data.name + ".tmp")
        shutil.copyfile(real, tmp)
        with h5py.File(tmp, "r+") as f:
            f["label"][...] = mapping[label].astype(f["label"].dtype)
            f["label"].attrs["class_names"] = np.array(base.class_names, dtype=object).astype(h5py.string_dtype())
            f["split"][...] = split
        os.replace(tmp, data)
    train(data, out / "run", cfg, progress=progress)
    return evaluate([run_dir, out / "run"], data, out / "report", progress=progress)


def _check_manifest(before: dict, chosen: dict, out: Path, real: Path) -> None:
    """Refuse a rerun into `out` that would choose other objects than its first run did: another run, seed,
    `per_class`, label mapping or real data. The real file is known by its content (`data_fingerprint`: labels,
    masks, attributes), so the same file copied or moved goes on, with a note; manifests written before
    fingerprints knew it by path, size and modification time, and keep being compared that way."""
    if "real_fingerprint" in before:
        keys = [k for k in chosen if k != "real"]
    else:
        stat = real.stat()
        chosen = {**chosen, "real_bytes": stat.st_size, "real_mtime_ns": stat.st_mtime_ns}
        keys = ["run", "real", "real_bytes", "real_mtime_ns", "per_class", "seed", "labels"]
    differ = {k: (before.get(k), chosen[k]) for k in keys if before.get(k) != chosen[k]}
    if differ:
        raise RunError(f"{out}: fine-tuned with other objects or labels {differ} (see {out / MANIFEST}); give "
                       "another --out, or remove it to start again")
    if before.get("real") != chosen["real"]:
        print(f"{out}: {chosen['real']} holds the same real data as {before.get('real')}, which it was fine-tuned "
              f"on (dataset fingerprint {chosen['real_fingerprint']}): going on with it", file=sys.stderr)
