"""A trained run as a classifier: load `RUN_DIR` (config + best checkpoint) and predict class probabilities
after every step, for datasets (`predict`) or raw arrays (`Classifier.classify_arrays`, for brokers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.stopping import check as check_stop

from .config import TrainConfig
from .data import (SPLITS, DatasetError, NonFinite, SequenceData, context_array, loader_workers, prepare_inputs,
                   read_ahead)
from .dmdt import SHAPE as DMDT_SHAPE
from .train import RunError


@dataclass
class Predictions:
    """Per-step class probabilities of a set of objects."""

    probs: np.ndarray       # (N, S, C)
    step_mask: np.ndarray   # (N, S)
    labels: np.ndarray      # (N,) dataset labels (in the dataset's own classes)
    index: np.ndarray       # (N,) object indices in the dataset
    class_names: list[str]  # the model's classes

    def scored(self) -> Predictions:
        """Only the objects with a valid step: those without one have no prediction to score."""
        keep = self.step_mask.any(axis=1)
        return Predictions(self.probs[keep], self.step_mask[keep], self.labels[keep], self.index[keep], self.class_names)


class Classifier:
    """The best checkpoint of a run, ready to predict."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best"):
        import jax

        from .models import build_model
        from .train import _optimizer, checkpoint_manager, init_state, read_run_config, restore_checkpoint

        run_dir = Path(run_dir)
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.exists():
            raise RunError(f"{cfg_file}: not found; is {run_dir} a run directory from `rcnn train`?")
        self.cfg, extra = read_run_config(cfg_file)
        self.class_names = list(extra["_class_names"])
        self.stamp_size = extra["_stamp_size"]  # px, the stamps the RCNN was trained on
        ckpt = run_dir / "checkpoints" / checkpoint
        manager = checkpoint_manager(ckpt) if ckpt.exists() else None
        step = manager.latest_step() if manager else None
        if step is None:
            raise RunError(f"{ckpt}: no checkpoint (has the run reached its first evaluation?)")
        self.model = build_model(self.cfg, len(self.class_names))
        tx = _optimizer(self.cfg)  # the run's own optimizer: its state is part of the checkpoint
        t = 2 * self.cfg.n_w
        example = {"mask": np.ones((1, t), bool), "dt": np.zeros((1, t), np.float32),
                   "images": np.zeros((1, t, self.stamp_size, self.stamp_size), np.float32),
                   "flux": np.zeros((1, t), np.float32),
                   "flux_err": np.ones((1, t), np.float32), "dmdt": np.zeros((1, t - self.cfg.n_w + 1) + DMDT_SHAPE, np.float32),
                   "context": np.zeros((1, max(self.cfg.n_context, 1)), np.float32)}
        abstract = jax.eval_shape(lambda: init_state(self.model, tx, self.cfg, example))  # shapes only, no init
        try:
            state = restore_checkpoint(manager, step, abstract, ckpt)
        finally:  # an open manager's threads print "Event loop is closed" tracebacks at exit
            manager.close()
        self.step = int(step)
        self.variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(self.variables)
               if not np.isfinite(np.asarray(v, np.float32)).all()]
        if bad:
            raise RunError(f"{ckpt}: step {step} has non-finite weights in {', '.join(bad[:3])}"
                           f"{' ...' if len(bad) > 3 else ''} (the run diverged?)")
        from .models import apply_model

        self._forward = jax.jit(lambda v, b, rows: jax.nn.softmax(apply_model(self.model, v, b, train=False,
                                                                             cnn_rows=rows)[0], axis=-1),
                                static_argnums=(2,))

    @property
    def dataset_stamp_size(self) -> int | None:
        """The stamp size (px) a dataset must have for this run: the RCNN's; None for the models that read
        light curves."""
        return self.stamp_size if self.cfg.model == "rcnn" else None

    def predict_batch(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (B, S, C), step mask (B, S)) for a batch of prepared inputs (`rcnn.data`)."""
        probs, mask = self._launch(batch)
        return np.asarray(probs), mask

    def _launch(self, batch: dict):
        """`predict_batch` without waiting: the probabilities are a device array still being computed on an
        accelerator (JAX dispatches asynchronously), so the caller can launch the next batch first."""
        from .models import model_inputs
        from .train import cnn_rows

        inputs = {k: batch[k] for k in model_inputs(self.model)}
        rows = cnn_rows(self.model, self.cfg, batch["mask"], devices=1)  # batches stay on one device here
        return self._forward(self.variables, inputs, rows), np.asarray(batch["mask"])[:, self.cfg.n_w - 1:]

    def classify_arrays(self, mjd, mask, sky_adu, zero_point, stamps=None, lc_flux=None, lc_flux_err=None,
                        context: dict | None = None, zero_point_ref=None):
        """Probabilities after every step for raw arrays (N, T[, 21, 21]): stamps in ADU with sky (RCNN) or
        photometry's eq. 4 scaled fluxes (light-curve and dm-dt models); `context` maps the run's context inputs
        (`rcnn.config.CONTEXT_INPUTS` names) to (N,) values in their units (0/1, arcsec, degrees);
        `zero_point_ref` (N,) eq. 4's reference, the zero point of each field's first exposure (None: each
        sequence's first epoch's, which ties the scaling to where the sequence starts).
        Returns (probs (N, S, C), step mask (N, S)); one object's arrays (T[, 21, 21], context scalars) give
        (S, C) and (S,). The arrays are checked first: a ValueError names the argument and its shape or value."""
        arrays, single = _broker_arrays(self.cfg, self.stamp_size, {"mjd": mjd, "mask": mask, "sky_adu": sky_adu,
                                                  "zero_point": zero_point, "stamps": stamps, "lc_flux": lc_flux,
                                                  "lc_flux_err": lc_flux_err})
        ref = None
        if zero_point_ref is not None:
            ref = np.asarray(zero_point_ref, dtype=float).reshape(-1)
            if ref.shape != (len(arrays["mask"]),) or not np.isfinite(ref).all():
                raise ValueError(f"classify_arrays: zero_point_ref is {np.asarray(zero_point_ref)!r}; expected "
                                 f"{len(arrays['mask'])} finite zero point(s), one per object")
        try:
            batch = prepare_inputs(self.cfg, arrays["mask"], arrays["mjd"], arrays["sky_adu"], arrays["zero_point"],
                                   arrays.get("stamps"), arrays.get("lc_flux"), arrays.get("lc_flux_err"),
                                   zero_point_ref=ref)
        except NonFinite as exc:  # stamps: the other arrays were checked whole
            raise ValueError(f"classify_arrays: {exc.name}{_at(exc.row, exc.epoch, single)} has a pixel that is not "
                             "finite, at a valid epoch") from None
        if self.cfg.context:
            given = _broker_context(context or {}, self.cfg.context, len(arrays["mask"]), single)
            batch["context"] = context_array(given, self.cfg.context, "classify_arrays(context=...)")
        probs, step_mask = self.predict_batch(batch)
        return (probs[0], step_mask[0]) if single else (probs, step_mask)


def _broker_arrays(cfg: TrainConfig, stamp_px: int, arrays: dict) -> tuple[dict, bool]:
    """`Classifier.classify_arrays`' arrays (name -> array or None) checked against the run `cfg` and cut to its first
    `max_steps` epochs, with a batch axis; and whether they were one object's (no batch axis). Arrays the
    model does not read are left out. A ValueError names the argument, its shape or value and what is needed."""
    inputs = ("stamps",) if cfg.model == "rcnn" else ("lc_flux", "lc_flux_err")
    missing = [k for k in ("mjd", "mask", "sky_adu", "zero_point") + inputs if arrays[k] is None]
    if missing:
        reads = ("stamps in ADU with sky" if cfg.model == "rcnn"
                 else "photometry's eq. 4 scaled fluxes and their errors (`photometry/lc_flux`, `lc_flux_err`)")
        raise ValueError(f"classify_arrays: {' and '.join(k + '=' for k in missing)} not given; this run (model "
                         f"{cfg.model}) reads {reads}")
    mask = np.asarray(arrays["mask"])
    if mask.ndim not in (1, 2) or mask.size == 0:
        raise ValueError(f"classify_arrays: mask has shape {mask.shape}; expected (N, T) for N >= 1 objects of T "
                         "epochs, or (T,) for one object")
    single = mask.ndim == 1
    out = {}
    for name in ("mask", "mjd", "sky_adu", "zero_point") + inputs:
        value = np.asarray(arrays[name])
        want = mask.shape + ((stamp_px, stamp_px) if name == "stamps" else ())
        if value.shape != want:
            why = f"; stamps of {stamp_px} x {stamp_px} px, as the run was trained on" if name == "stamps" else ""
            raise ValueError(f"classify_arrays: {name} has shape {value.shape}; expected {want} (mask's {mask.shape} gives "
                             f"the objects and epochs{why})")
        if value.dtype.kind not in "biuf":
            raise ValueError(f"classify_arrays: {name} holds {value.dtype}; expected numbers")
        out[name] = value[None] if single else value
    if out["mask"].dtype != bool:
        bad = ~np.isin(out["mask"], (0, 1))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"classify_arrays: mask{_at(i, j, single)} = {out['mask'][i, j]}; expected true/false "
                             "(1/0)")
        out["mask"] = out["mask"].astype(bool)
    t = min(mask.shape[-1], cfg.max_steps)
    if t < cfg.n_w:
        raise ValueError(f"classify_arrays: mask has {mask.shape[-1]} epochs; the run stacks n_w = {cfg.n_w} "
                         "images per step, so it needs at least that many")
    out = {k: v[:, :t] for k, v in out.items()}
    valid = out["mask"]
    late = valid[:, 1:] & ~valid[:, :-1]
    if late.any():  # eq. 4's reference epoch and the time origin are the first epoch
        i, j = np.argwhere(late)[0]
        raise ValueError(f"classify_arrays: mask{'' if single else f' of object {i}'} has valid epoch {j + 1} after "
                         "an invalid one; an object's valid epochs must come first, in time order")
    checked = ("mjd", "sky_adu", "zero_point") if cfg.model == "rcnn" else ("mjd", "lc_flux", "lc_flux_err")
    for name in checked:  # stamps: after `prepare_inputs` masks sentinel pixels
        bad = valid & ~np.isfinite(out[name])
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"classify_arrays: {name}{_at(i, j, single)} = {out[name][i, j]} at a valid epoch; "
                             "expected a finite number")
    if cfg.model != "rcnn" and (valid & (out["lc_flux_err"] < 0)).any():
        i, j = np.argwhere(valid & (out["lc_flux_err"] < 0))[0]
        raise ValueError(f"classify_arrays: lc_flux_err{_at(i, j, single)} = {out['lc_flux_err'][i, j]} at a valid "
                         "epoch; an uncertainty is >= 0")
    return out, single


def _at(row: int, epoch: int, single: bool) -> str:
    """An element's index as the caller's array has it: [epoch] for one object's arrays, else [row, epoch]."""
    return f"[{epoch}]" if single else f"[{row}, {epoch}]"


def _broker_context(context: dict, names: list[str], n: int, single: bool) -> dict:
    """`classify_arrays(context=...)`'s values of the run's context inputs `names` as (n,) arrays (a scalar for
    one object), or a ValueError naming the input and its shape."""
    given = {}
    for name in names:
        if name not in context:
            continue  # `context_array` names it
        value = np.asarray(context[name])
        value = value.reshape(1) if single and value.ndim == 0 else value
        if value.shape != (n,) or value.dtype.kind not in "biuf":
            raise ValueError(f"classify_arrays: context[{name!r}] holds {value.dtype} of shape {value.shape}; "
                             f"expected {'a number' if single else f'({n},) numbers, one per object'}")
        given[name] = value
    return given


def predict(classifier: Classifier, data_path: str | Path, split: str | None = "test", batch_size: int = 256,
            progress: bool = True) -> Predictions:
    """Predictions for every object of a split of a dataset (of the dataset if `split` is None); those
    without a step to classify (fewer than n_w valid epochs) have an empty `step_mask` row
    (`Predictions.scored` drops them); a progress bar (objects) on the terminal unless `progress` is False."""
    data = SequenceData(data_path, classifier.cfg, classifier.dataset_stamp_size)
    if split is None and not data.has_step.any():
        raise DatasetError(f"{data_path}: none of its {data.n_objects} objects has a step to classify "
                           f"(n_w = {classifier.cfg.n_w} valid epochs; see 'mask')")
    if split is not None:
        data.require(split)  # some of them with a step
    index = np.arange(data.n_objects) if split is None else np.flatnonzero(data.split == SPLITS[split])
    import jax
    from tqdm.auto import tqdm

    done = []  # (probabilities, step mask) per batch, each fetched to the host once the next one is launched
    workers = loader_workers(classifier.cfg.loader_workers, jax.default_backend())
    with tqdm(total=len(index), unit="obj", desc=f"predict {classifier.cfg.model}", leave=False,
              disable=not progress) as bar:
        for _, batch in read_ahead(data, index, batch_size, workers=workers):
            done.append(classifier._launch(batch))  # on an accelerator it runs while the previous batch comes back
            if len(done) > 1:
                done[-2] = (np.asarray(done[-2][0]), done[-2][1])
                bar.update(len(done[-2][1]))
            check_stop()
        bar.update(len(index) - bar.n)
    probs = np.concatenate([np.asarray(p) for p, _ in done])
    return Predictions(probs, np.concatenate([m for _, m in done]), data.label[index], index, classifier.class_names)
