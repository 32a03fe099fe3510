"""A trained run as a classifier: load `RUN_DIR` (config + best checkpoint) and predict class probabilities
after every step, for datasets (`predict`) or raw arrays (`Classifier.classify_arrays`, for brokers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.stopping import check as check_stop

from .data import SPLITS, DatasetError, SequenceData, context_array, loader_workers, prepare_inputs, read_ahead
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
        ckpt = run_dir / "checkpoints" / checkpoint
        manager = checkpoint_manager(ckpt) if ckpt.exists() else None
        step = manager.latest_step() if manager else None
        if step is None:
            raise RunError(f"{ckpt}: no checkpoint (has the run reached its first evaluation?)")
        self.model = build_model(self.cfg, len(self.class_names))
        tx = _optimizer(self.cfg)  # the run's own optimizer: its state is part of the checkpoint
        t = 2 * self.cfg.n_w
        example = {"mask": np.ones((1, t), bool), "dt": np.zeros((1, t), np.float32),
                   "images": np.zeros((1, t, 21, 21), np.float32), "flux": np.zeros((1, t), np.float32),
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
                        context: dict | None = None):
        """Probabilities after every step for raw arrays (N, T[, 21, 21]): stamps in ADU with sky (RCNN) or
        photometry's eq. 4 scaled fluxes (light-curve model); `context` maps the run's context inputs
        (`rcnn.config.CONTEXT_INPUTS` names) to (N,) values in their units (0/1, arcsec, degrees).
        Returns (probs (N, S, C), step mask (N, S))."""
        t = min(np.shape(mask)[1], self.cfg.max_steps)
        cut = lambda a: None if a is None else np.asarray(a)[:, :t]  # noqa: E731
        batch = prepare_inputs(self.cfg, cut(mask), cut(mjd), cut(sky_adu), cut(zero_point), cut(stamps),
                               cut(lc_flux), cut(lc_flux_err))
        if self.cfg.context:
            batch["context"] = context_array(context or {}, self.cfg.context, "classify_arrays(context=...)")
        return self.predict_batch(batch)


def predict(classifier: Classifier, data_path: str | Path, split: str | None = "test", batch_size: int = 256,
            progress: bool = True) -> Predictions:
    """Predictions for every object of a split of a dataset (of the dataset if `split` is None); those
    without a step to classify (fewer than n_w valid epochs) have an empty `step_mask` row
    (`Predictions.scored` drops them); a progress bar (objects) on the terminal unless `progress` is False."""
    data = SequenceData(data_path, classifier.cfg)
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
