"""`rcnn train`: Adam on the summed per-step loss, validation every `eval_every`, best checkpoint kept.

A run directory holds `config.yaml`, `metrics.jsonl` (one JSON object per evaluation: step, train_loss,
val_loss, val_accuracy (at each sequence's last valid step), seq_per_s, elapsed_s), `checkpoints/last`,
`checkpoints/best` (orbax) and `training.png` (`rcnn.curves`: losses, validation accuracy and throughput vs
iteration, redrawn at each evaluation). Rerunning the same command after a kill resumes from `last`; batches and
dropout keys are pure functions of (seed, step), so the continuation is identical to an uninterrupted run. A run
resumes only on the data it was trained on: `config.yaml` keeps the dataset's fingerprint (`data_fingerprint`),
so the same data at another path is recognised and other data at the same path refused. A larger `iterations`
extends a finished run; fewer than it has trained are refused. SIGINT or SIGTERM (Ctrl-C, `kill`, a batch
scheduler's time limit) stops training after the step in flight and saves it with the unfinished interval's
losses (`Interrupted`), so that nothing is lost and the resumed run logs what an uninterrupted one would; a
second signal, or SIGKILL, stops at once, and the rerun goes on from the last evaluation.

With `pack_steps` the RCNN's convolutional stack runs on the batch's valid steps (early fusion) or images
(late fusion) only, gathered within each device's shard (`cnn_rows`, a static argument of the steps: one
compiled step per size, at most 16).

Data parallelism: the batch is sharded over all devices of a 1-D mesh (`jax.sharding`), parameters are
replicated, XLA inserts the gradient all-reduce. Multi-host: with `distributed: true` (or a `Cluster`) each
process first joins the others through `jax.distributed.initialize()`, so the mesh spans every host; each
process then reads only its rows of each training batch (the draws are made for the whole batch, so the run
equals a one-process run on as many devices), and only process 0 writes `config.yaml`, `metrics.jsonl`,
`training.png` and the progress bar (orbax coordinates the checkpoints). Validation batches are read in shares alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from simulator.dataset import check_output, open_h5, write_text_atomic
from simulator.lock import exclusive
from simulator.stopping import Stopped, stop_requests

from .config import TrainConfig
from .data import ReadAhead, SequenceData, loader_workers, step_batch


class RunError(ValueError):
    """A run directory that does not match the request (names the file and the difference)."""


#: In `checkpoints/`: the unfinished evaluation interval of a run stopped by a signal (its step, the losses
#: and sequences so far, the time taken), so that the resumed run logs what an uninterrupted one would.
INTERVAL = "interval.json"


class Interrupted(Stopped):
    """`rcnn train` stopped by SIGINT or SIGTERM after the step in flight, with `checkpoints/last` saved at
    that step: rerunning the command goes on from there."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.step = step
        super().__init__(signum, f"{run_dir}: stopped by {signal.Signals(signum).name} after step {step}, which is "
                                 "saved; rerun the same command to go on")


class InputFailed(RunError):
    """Reading the training batches failed (an input process died, e.g. killed for memory; a read error)
    after a step that is saved with the unfinished interval, as on a stop signal: rerunning goes on."""


def _until_stopped(batches, caught: list[int], failed: list[Exception] | None = None):
    """`batches`, except that once a stop signal is caught, an input worker that died (of the same signal: a
    scheduler signals every process of the job) ends them instead of raising; and with a `failed` list,
    an input failure is put there and ends them, so that the loop saves its step before reporting it.
    Closing this generator leaves `batches` open: the caller closes them where an exception (a second
    Ctrl-C while the input processes shut down) reaches it, not in a generator's finalisation, where Python
    only prints it."""
    try:
        for item in batches:
            yield item
    except Exception as exc:
        if caught:
            return
        if failed is None:
            raise
        failed.append(exc)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-host run: `jax.distributed.initialize`'s arguments. Fields left None
    JAX detects (SLURM, Open MPI, Kubernetes, mpi4py; the coordinator also from JAX_COORDINATOR_ADDRESS)."""

    coordinator_address: str | None = None   # host:port of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None


def join_cluster(cluster: Cluster) -> None:
    """`jax.distributed.initialize` (once per process; before any JAX computation). On CPU hosts the
    cross-process collectives go through gloo (XLA's CPU client has none by default)."""
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: GPU/TPU collectives are unaffected
        pass
    try:
        jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes, cluster.process_id)
    except (ValueError, TypeError) as exc:  # what JAX could not detect or was given wrong
        raise RunError(f"cannot join a multi-host run with {cluster} (coordinator also from "
                       f"JAX_COORDINATOR_ADDRESS; others detected on SLURM, Open MPI, Kubernetes): {exc}") from None


def _local_rows(sharding, batch_size: int) -> tuple[int, int]:
    """(lo, hi): the rows of a batch sharded by `sharding` that this process's devices hold (contiguous: the
    mesh lists the devices process by process)."""
    spans = [idx[0].indices(batch_size)[:2] for idx in sharding.addressable_devices_indices_map((batch_size,)).values()]
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise RuntimeError(f"this process's devices hold rows {sorted(spans)} of the batch, not one block")
    return lo, hi


def check_report_out(out: str | Path, what: str) -> None:
    """Check the `--out` directory of a command that writes `what` (a report, probabilities): `check_output`'s
    checks, and a RunError if it is a training run's directory (config.yaml and checkpoints/), where it would
    be written among the run's files."""
    out = Path(out)
    check_output(out, "--out", directory=True)
    if (out / "config.yaml").is_file() and (out / "checkpoints").is_dir():
        raise RunError(f"--out {out}: a training run's directory (it holds config.yaml and checkpoints/); the {what} "
                       "would be written among the run's files: give a directory of its own")


def _mesh():
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()), ("data",))


def restore_checkpoint(manager, step: int, abstract, where: Path):
    """`manager`'s checkpoint `step` restored into the tree `abstract` (shapes and dtypes of this version's
    state for the run's config), or a RunError naming the checkpoint and the first array that differs. The
    arrays are compared before restoring: a restore that fails part-way leaves orbax's reads in flight,
    which print "Event loop is closed" tracebacks at exit."""
    import jax
    import orbax.checkpoint as ocp

    def shapes(tree) -> dict:  # "params/Conv_0/kernel" -> shape (the stored tree has dicts for named tuples)
        return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): tuple(v.shape)
                for path, v in jax.tree_util.tree_leaves_with_path(tree)}

    def damaged(exc: Exception) -> RunError:
        text = " ".join(str(exc).split())
        return RunError(f"{where}: checkpoint {step} cannot be read: it is damaged or incomplete ({type(exc).__name__}: "
                        f"{text[:300]}{' ...' if len(text) > 300 else ''}); remove {Path(where) / str(step)} to use "
                        "the one before it, if any")

    try:
        stored = shapes(manager.item_metadata(step))
    except Exception as exc:  # orbax's errors for an unreadable step (JSON, missing files) have many types
        raise damaged(exc) from None
    wanted = shapes(abstract)
    differ = sorted((k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k)),
                    key=lambda k: (not k.startswith("params/"), k))  # a layer's weights before Adam's moments
    detail = ""
    if differ:
        k = differ[0]
        detail = (f"{k} is {stored[k] if k in stored else 'absent'} in the checkpoint and "
                  f"{wanted[k] if k in wanted else 'absent'} in the model ({len(differ)} array(s) differ)")
    else:
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as exc:
            detail = " ".join(str(exc).split())
            detail = f"Orbax: {detail[:400]}{' ...' if len(detail) > 400 else ''}"
        except Exception as exc:  # the arrays' files: TensorStore's errors are plain Exceptions
            raise damaged(exc) from None
    hint = (" It holds convolution biases: runs saved before the RCNN's convolutions lost them (the batch norm "
            "after each cancels them) must be trained again." if "params/Conv_0/bias" in stored else "")
    raise RunError(f"{where}: checkpoint {step} does not fit the model this version of stampseq builds from the "
                   f"run's config.yaml: {detail}.{hint}")


class _QuietStops(logging.Filter):
    """Drops orbax's error log, with its traceback, of a save that a second Ctrl-C cut off: the `Stopped`
    it logs reaches the command, which says so in one line (`simulator.stopping`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def checkpoint_manager(directory: Path, options=None):
    """An orbax manager of the run's state under `directory`, able to read a checkpoint's array metadata."""
    import orbax.checkpoint as ocp

    absl_log = logging.getLogger("absl")  # orbax logs through absl.logging
    if not any(isinstance(f, _QuietStops) for f in absl_log.filters):
        absl_log.addFilter(_QuietStops())
    return ocp.CheckpointManager(Path(directory).resolve(), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _put(batch: dict, sharding, size: int | None = None):
    """`jax.device_put` of a batch that, on CPU, also waits for the copy: XLA runs a step whose inputs are
    still in flight later, on its worker thread, where its buffers miss the keep-memory tunables of the
    `rcnn` commands (`rcnn.cli.KEEP_MEMORY_TUNABLES`): every few steps ~9 s of page zeroing at batch 256.
    On an accelerator the copy overlaps the step in flight, so it does not wait. In a multi-host run the
    batch is this process's rows (`_local_rows`) of one of `size` rows."""
    import jax

    if jax.process_count() > 1:
        out = {k: jax.make_array_from_process_local_data(sharding, v, (size,) + v.shape[1:]) for k, v in batch.items()}
    else:
        out = jax.device_put(batch, sharding)
    return jax.block_until_ready(out) if jax.default_backend() == "cpu" else out


def make_functions(model, tx, cfg: TrainConfig, weights):
    """jit-compiled train and eval steps; their last argument, static, is the RCNN's `cnn_rows`
    (`rcnn.models.cnn_rows_for`: one compiled step per size, at most 16; buckets of at least 256 rows)."""
    import jax
    import jax.numpy as jnp
    import optax

    from .losses import sequence_loss
    from .models import apply_model

    w = jnp.asarray(weights)

    def loss_fn(params, batch_stats, batch, key, cnn_rows):
        (logits, step_mask), updates = apply_model(model, {"params": params, "batch_stats": batch_stats}, batch,
                                                   train=True, rngs={"dropout": key},
                                                   mutable=["batch_stats", "intermediates"], cnn_rows=cnn_rows)
        labels = batch.get("step_label", batch["label"])
        loss = sequence_loss(logits, labels, step_mask, cfg.loss, w, cfg.focal_gamma)
        if cfg.aux_loss_weight > 0:  # double supervision: the features alone must classify each step too
            (aux,) = jax.tree_util.tree_leaves(updates["intermediates"])
            loss = loss + cfg.aux_loss_weight * sequence_loss(aux, labels, step_mask, cfg.loss, w, cfg.focal_gamma)
        return loss, updates["batch_stats"]

    @partial(jax.jit, donate_argnums=(0,), static_argnums=(3,))
    def train_step(state, batch, key, cnn_rows=None):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["batch_stats"],
                                                                               batch, key, cnn_rows)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {**state, "params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                "step": state["step"] + 1}, loss

    @partial(jax.jit, static_argnums=(2,))
    def eval_step(state, batch, cnn_rows=None):
        """The training loss (the same labels, per step where RAPID's pre-detection class is on, and the same
        auxiliary term) without dropout, and the accuracy at each sequence's last step."""
        (logits, step_mask), out = apply_model(model, {"params": state["params"], "batch_stats": state["batch_stats"]},
                                               batch, train=False, cnn_rows=cnn_rows, mutable=["intermediates"])
        labels = batch.get("step_label", batch["label"])
        loss = sequence_loss(logits, labels, step_mask, cfg.loss, w, cfg.focal_gamma, batch["weight"])
        if cfg.aux_loss_weight > 0:
            (aux,) = jax.tree_util.tree_leaves(out["intermediates"])
            loss = loss + cfg.aux_loss_weight * sequence_loss(aux, labels, step_mask, cfg.loss, w, cfg.focal_gamma,
                                                              batch["weight"])
        last = jnp.maximum(jnp.sum(step_mask, axis=1) - 1, 0)
        pred = jnp.argmax(jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], axis=-1)
        target = labels if labels.ndim == 1 else jnp.take_along_axis(labels, last[:, None], axis=1)[:, 0]
        correct = jnp.sum((pred == target) * batch["weight"])
        return loss * jnp.sum(batch["weight"]), correct, jnp.sum(batch["weight"])

    return train_step, eval_step


def init_state(model, tx, cfg: TrainConfig, example: dict) -> dict:
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(cfg.seed)
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, *_args(model, example), train=False))(key)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
            "best_val_loss": jnp.full((), jnp.inf, jnp.float32)}


def _args(model, batch):
    from .models import model_inputs

    return tuple(batch[k] for k in model_inputs(model))


def cnn_rows(model, cfg: TrainConfig, mask: np.ndarray, devices: int) -> tuple[int, int] | None:
    """The static `cnn_rows` argument of the steps for a batch's image mask, sharded over `devices`
    (None: every step)."""
    from .models import cnn_rows_for

    return cnn_rows_for(model, mask, devices) if cfg.pack_steps else None


def _pad(batch: dict, size: int) -> dict:
    """Pad an evaluation batch to `size` rows (repeating row 0) with weight 0 on the padding."""
    n = len(batch["label"])
    out = {k: np.concatenate([v, np.repeat(v[:1], size - n, axis=0)]) if n < size else v for k, v in batch.items()}
    out["weight"] = (np.arange(size) < n).astype(np.float32)
    return out


def read_run_config(cfg_file: Path) -> tuple[TrainConfig, dict]:
    """A run's `config.yaml`: (its TrainConfig, its `_class_names`, `_data`, `_data_fingerprint` and
    `_stamp_size` entries; runs made before fingerprints have none, before stamp sizes 21). Keys added to
    TrainConfig since the run was made take their defaults; keys this version does not know (a run made by
    a newer one), broken YAML and invalid values are RunErrors naming the file."""
    from simulator.settings import yaml_mapping

    try:
        saved = yaml_mapping(cfg_file)
    except (ValueError, OSError) as exc:
        raise RunError(str(exc)) from None
    if "_class_names" not in saved:
        raise RunError(f"{cfg_file}: not the config.yaml `rcnn train` writes (no _class_names)")
    extra = {k: saved.pop(k) for k in ("_class_names", "_data", "_data_fingerprint", "_stamp_size") if k in saved}
    extra.setdefault("_stamp_size", 21)  # runs made before other sizes were allowed
    if not (isinstance(extra["_stamp_size"], int) and extra["_stamp_size"] > 0):
        raise RunError(f"{cfg_file}: _stamp_size is {extra['_stamp_size']!r}; expected the stamps' size in pixels")
    names = extra["_class_names"]
    if not (isinstance(names, list) and names and all(isinstance(c, str) and c for c in names)
            and len(set(names)) == len(names)):
        raise RunError(f"{cfg_file}: _class_names is {names!r}; expected the list of the run's class names "
                       "(distinct)")
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise RunError(f"{cfg_file}: keys {unknown} are unknown to this version of stampseq (a run made by a "
                       "newer one?)")
    try:
        return TrainConfig(**saved), extra
    except ValueError as exc:
        raise RunError(f"{cfg_file}: {exc}") from None


def data_fingerprint(path: Path) -> str:
    """A short hash of what identifies a dataset, cheap at any size: its root attributes (`simulate`'s config,
    seed and version; `import-real`'s source), its class names, the shapes and types of its main arrays and
    the values of `label`, `split` and `mask`. Not the stamps (tens of GB at paper scale), nor anything
    `photometry` adds: measuring a dataset keeps its fingerprint."""
    h = hashlib.sha256()
    with open_h5(path) as f:
        for k in sorted(f.attrs):
            h.update(f"{k}={np.asarray(f.attrs[k]).tolist()!r};".encode())
        h.update(repr(np.asarray(f["label"].attrs.get("class_names", [])).tolist()).encode())
        for k in ("stamps", "mjd", "mask", "label", "split"):
            h.update(f"{k}{f[k].shape}{f[k].dtype};".encode())
        for k in ("label", "split", "mask"):
            h.update(np.ascontiguousarray(f[k][()]).tobytes())
    return h.hexdigest()[:16]


def _class_names(data: SequenceData, cfg: TrainConfig) -> list[str]:
    """The classes a run on `data` predicts."""
    return data.class_names + (["pre_detection"] if cfg.pre_detection_label else [])


def _check_run_dir(run_dir: Path, cfg: TrainConfig, data: SequenceData, fingerprint: str) -> tuple[bool, str | None]:
    """(whether `run_dir` holds a run to resume, a note for the user); a RunError if it holds a different run
    (other options, or other data: by the fingerprint saved with the run, by its path for runs saved without)
    or one that has trained more than `cfg.iterations` steps."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        return False, None
    saved_cfg, extra = read_run_config(cfg_file)
    saved, mine = dataclasses.asdict(saved_cfg), dataclasses.asdict(cfg)
    diff = {k: (saved[k], v) for k, v in mine.items()
            if k not in ("iterations", "prefetch", "loader_workers", "distributed") and saved[k] != v}
    here, there, known = str(data.path.resolve()), extra.get("_data"), extra.get("_data_fingerprint")
    note = None
    if known is None:  # a run saved before fingerprints
        if there not in (None, here):
            diff["data"] = (there, here)
    elif known != fingerprint:
        raise RunError(f"{cfg_file}: this run was trained on {there} (dataset fingerprint {known}); {here}"
                       f"{' now' if here == there else ''} holds other data (fingerprint {fingerprint}): a run "
                       "resumes only on the dataset it was trained on; give that one, or another --out")
    elif there != here:
        note = (f"{run_dir}: {here} holds the same data as {there}, which the run was trained on (dataset "
                f"fingerprint {fingerprint}): going on with it")
    if extra["_class_names"] != _class_names(data, cfg):
        diff["classes"] = (extra["_class_names"], _class_names(data, cfg))
    if cfg.model == "rcnn" and extra["_stamp_size"] != data.stamp_size:
        diff["stamp_size"] = (extra["_stamp_size"], data.stamp_size)
    if diff:
        raise RunError(f"{cfg_file}: this run was made with other options {diff} (saved, requested); "
                       "use another --out or remove the directory")
    done = saved_step(run_dir)
    if cfg.iterations < done:
        raise RunError(f"{run_dir}: this run has trained {done} steps; iterations {cfg.iterations} is fewer, and "
                       f"steps cannot be undone: give at least {done} ({done} leaves the run as it is, more extend "
                       "it), or another --out")
    return True, note


def saved_step(run_dir: Path) -> int:
    """The newest step saved in `run_dir/checkpoints/last` or `best` (orbax names each step's directory by its
    number; a save in flight has a temporary name), 0 if none: the step a resume starts from."""
    folders = [run_dir / "checkpoints" / name for name in ("last", "best")]
    return max((int(p.name) for d in folders if d.is_dir() for p in d.iterdir() if p.name.isdigit()), default=0)


def train(data_path: str | Path, run_dir: str | Path, cfg: TrainConfig, progress: bool = True,
          cluster: Cluster | None = None) -> dict:
    """Train (or resume) a model; returns the last evaluation's metrics, or raises `Interrupted` once a
    stop signal's step is saved. With `cfg.distributed` (or a `cluster`, which implies it) this process first
    joins a multi-host run (module docstring), which stops on signals as before (the processes would have to
    agree on a step)."""
    import jax
    from jax.experimental import multihost_utils

    if cluster is not None and not cfg.distributed:
        cfg = dataclasses.replace(cfg, distributed=True)
    data_path, run_dir = Path(data_path), Path(run_dir)
    check_output(run_dir, "--out", directory=True, error=RunError)
    data = SequenceData(data_path, cfg)  # validates before anything compiles
    for split in dict.fromkeys(("train", cfg.validation_split)):  # now, not as an empty batch or evaluation
        data.require(split, "`rcnn train` needs objects in the train split and in `validation_split` (a file "
                            "from `rcnn import-real` holds test objects only: see `rcnn finetune`)")
    if cfg.distributed:
        join_cluster(cluster or Cluster())
    n_dev, multi, primary = jax.device_count(), jax.process_count() > 1, jax.process_index() == 0
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {n_dev} devices")
    fingerprint = data_fingerprint(data_path)
    resume, note = _check_run_dir(run_dir, cfg, data, fingerprint)
    if note and primary:
        print(note, file=sys.stderr)
    if multi:  # every process has looked before process 0 writes
        multihost_utils.sync_global_devices("stampseq: run directory checked")
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    # one `rcnn train` per run directory: a second one started by mistake stops here (a multi-host run's
    # processes share the directory: they are not locked out of it)
    with nullcontext() if multi else exclusive(run_dir / "train.lock", f"run directory {run_dir}", remove=True):
        return _train_locked(data, run_dir, cfg, resume, progress, fingerprint)


def _train_locked(data: SequenceData, run_dir: Path, cfg: TrainConfig, resume: bool, progress: bool,
                  fingerprint: str) -> dict:
    """`train` once the run directory is checked (and locked by process 0)."""
    import jax
    import orbax.checkpoint as ocp
    import yaml
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec
    from tqdm.auto import tqdm

    from .curves import METRICS, read_metrics, write_training_figure
    from .losses import class_weights
    from .models import build_model

    data_path = data.path
    n_dev, multi, primary = jax.device_count(), jax.process_count() > 1, jax.process_index() == 0

    class_names = _class_names(data, cfg)
    if primary:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(
            {**dataclasses.asdict(cfg), "_data": str(data_path.resolve()), "_data_fingerprint": fingerprint,
             "_class_names": class_names, "_stamp_size": data.stamp_size}, sort_keys=True))
    if multi:  # the run directory exists before any process opens its checkpoints
        multihost_utils.sync_global_devices("stampseq: run directory written")
    n_classes = len(class_names)
    model = build_model(cfg, n_classes)
    tx = _optimizer(cfg)
    weights = class_weights(data.label[data.indices("train")], n_classes)
    if cfg.pre_detection_label:
        weights[-1] = 1.0
    train_step, eval_step = make_functions(model, tx, cfg, weights)
    mesh = _mesh()
    shard = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = _local_rows(shard, cfg.batch_size) if multi else None
    example = {k: v[: cfg.batch_size] for k, v in data.read(data.indices("train")[:1].repeat(n_dev)).items()}
    state = init_state(model, tx, cfg, example)
    if cfg.init_from:
        from .inference import Classifier

        source = Classifier(cfg.init_from)
        if source.class_names != class_names or source.cfg.model != cfg.model:
            raise RunError(f"{cfg.init_from}: its classes {source.class_names} ({source.cfg.model}) differ from "
                           f"{data_path}'s {class_names} ({cfg.model})")
        state = {**state, "params": source.variables["params"], "batch_stats": source.variables["batch_stats"],
                 "opt_state": tx.init(source.variables["params"])}
    state = jax.device_put(jax.device_get(state) if multi else state, replicated)
    # (a kill while saving leaves a temporary directory: removed when the managers open)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=primary)
    last = checkpoint_manager(run_dir / "checkpoints" / "last", options)
    best = checkpoint_manager(run_dir / "checkpoints" / "best", options)
    metrics_file = run_dir / METRICS
    start = 0
    # each evaluation is logged, then saved to `best` (if it improved) and then to `last`: a kill between the
    # two saves leaves `best` one evaluation ahead, and its checkpoint is the whole state of that step
    newest = max((m for m in (last, best) if m.latest_step() is not None), key=lambda m: m.latest_step(), default=None)
    if resume and newest is not None:
        start = int(newest.latest_step())
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        state = restore_checkpoint(newest, start, abstract, run_dir / "checkpoints" / ("last" if newest is last else "best"))
        state = jax.device_put(state, replicated)
        if newest is best and (last.latest_step() or -1) < start:  # a kill between the two saves: `last` too
            last.save(start, args=ocp.args.StandardSave(state), force=True)
            last.wait_until_finished()
        if metrics_file.exists() and primary:  # drop evaluations logged after the checkpoint (a kill between)
            kept = [row for row in read_metrics(run_dir, torn_tail=True) if row["step"] <= start]
            write_text_atomic(metrics_file, "".join(json.dumps(row) + "\n" for row in kept))
    elif metrics_file.exists() and primary:
        metrics_file.unlink()
    base_key = jax.random.PRNGKey(cfg.seed)
    result: dict = {}
    title = f"rcnn train --model {cfg.model}: {data_path.name} -> {run_dir.name}"
    if start >= cfg.iterations:
        if primary:  # a finished run: its figure, had it none
            write_training_figure(run_dir, title)
        return (read_metrics(run_dir) or [{}])[-1]
    items = range(start, cfg.iterations) if rows is None else ((s, *rows) for s in range(start, cfg.iterations))
    prefetch = ReadAhead(data, step_batch, items, loader_workers(cfg.loader_workers, jax.default_backend()),
                         cfg.prefetch)
    bar = tqdm(total=cfg.iterations, initial=start, unit="it", desc=f"train {cfg.model}",
               disable=not (progress and primary))
    losses, t_start, seqs, done = [], time.perf_counter(), 0, start
    interval_file = run_dir / "checkpoints" / INTERVAL
    if interval_file.exists():  # stopped between evaluations: the interval's losses so far, to go on with
        saved = json.loads(interval_file.read_text())
        if saved["step"] == start:  # (kept until the next evaluation's checkpoint, should this run be killed)
            losses, seqs = [np.float32(x) for x in saved["losses"]], saved["seqs"]
            t_start -= saved["elapsed_s"]
    # one-process runs only: a multi-host run's processes would have to agree on the step to stop at and save
    # (they stop as before, by dying, and an input failure is raised as it comes)
    failed: list[Exception] = []
    with stop_requests(enabled=not multi) as caught:
        try:
            for item, batch in _until_stopped(prefetch, caught, None if multi else failed):
                step = item[0] if rows else item
                batch = dict(batch)
                packing = cnn_rows(model, cfg, batch.pop("batch_mask", batch["mask"]), n_dev)
                batch = _put(batch, shard, cfg.batch_size)
                state, loss = train_step(state, batch, jax.random.fold_in(base_key, step), packing)
                losses.append(loss)
                seqs += cfg.batch_size
                bar.update(1)
                done = step + 1
                if done % cfg.eval_every == 0 or done == cfg.iterations:
                    train_loss = float(np.mean(jax.device_get(losses)))
                    val_loss, val_acc = _evaluate(data, cfg, state, eval_step, shard, model, rows)
                    elapsed = time.perf_counter() - t_start
                    result = {"step": done, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
                              "seq_per_s": seqs / elapsed, "elapsed_s": elapsed}
                    if primary:  # before the checkpoints: a kill between them drops this row on resume (replayed)
                        _log_evaluation(run_dir, result, title)
                    if not np.isfinite([train_loss, val_loss]).all():
                        _diverged(run_dir, result, best.latest_step())
                    if val_loss < float(state["best_val_loss"]):
                        state = {**state, "best_val_loss": jax.device_put(np.float32(val_loss), replicated)}
                        best.save(done, args=ocp.args.StandardSave(state), force=True)
                        best.wait_until_finished()
                    last.save(done, args=ocp.args.StandardSave(state), force=True)
                    last.wait_until_finished()
                    if primary:
                        interval_file.unlink(missing_ok=True)  # superseded by this checkpoint
                    bar.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}",
                                    val_acc=f"{val_acc:.2f}")
                    losses, seqs, t_start = [], 0, time.perf_counter()
                if caught:
                    break
            if (caught or failed) and done < cfg.iterations:
                if done % cfg.eval_every and done > start:  # else saved by the evaluation just made, or resumed
                    if primary:  # first: a kill before the checkpoint leaves a file for a step never resumed
                        write_text_atomic(interval_file, json.dumps(
                            {"step": done, "losses": [float(x) for x in jax.device_get(losses)], "seqs": seqs,
                             "elapsed_s": time.perf_counter() - t_start}))
                    last.save(done, args=ocp.args.StandardSave(state), force=True)
                    last.wait_until_finished()
                if failed:
                    raise InputFailed(f"{run_dir}: reading the training batches of {data_path} failed after step "
                                      f"{done}, which is saved ({type(failed[0]).__name__}: {failed[0]}); rerun the "
                                      "same command to go on (a read error of the data itself: the file is "
                                      "damaged; remake or restore it first)") from failed[0]
                raise Interrupted(caught[0], done, run_dir)
        finally:
            prefetch.close()
            bar.close()
            last.close()
            best.close()
    return result


class Diverged(RunError):
    """The losses of an evaluation are not finite: the weights have diverged (a learning rate too high)."""


def _log_evaluation(run_dir: Path, result: dict, title: str) -> None:
    """Append an evaluation to `metrics.jsonl` and redraw `training.png` from it."""
    from .curves import METRICS, write_training_figure

    with (run_dir / METRICS).open("a") as f:
        f.write(json.dumps(result) + "\n")
    write_training_figure(run_dir, title)


def _diverged(run_dir: Path, result: dict, kept: int | None) -> None:
    """Raise `Diverged` for the evaluation (already logged) whose losses are not finite, without saving its
    state: resuming would only diverge again, and `checkpoints/best` keeps the last good one."""
    kept_note = f"checkpoints/best keeps step {kept}" if kept is not None else "no checkpoint was kept"
    raise Diverged(f"{run_dir}: training diverged by step {result['step']} (train_loss {result['train_loss']}, "
                   f"val_loss {result['val_loss']}); {kept_note}. Lower learning_rate and train into a new --out")


def _optimizer(cfg: TrainConfig):
    """Adam; with `freeze: conv`, zero updates for the convolutional stack (top-level Conv/BatchNorm)."""
    import optax
    from flax import traverse_util

    adam = optax.adam(cfg.learning_rate)
    if cfg.freeze == "none":
        return adam

    def labels(params):
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({k: "frozen" if k[0].startswith(("Conv_", "BatchNorm_")) else "train"
                                             for k in flat})
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def _evaluate(data: SequenceData, cfg: TrainConfig, state, eval_step, shard, model,
              rows: tuple[int, int] | None = None) -> tuple[float, float]:
    """Validation loss and accuracy; `rows`: this process's rows of each batch in a multi-host run."""
    import jax

    batches = _validation_batches(data, cfg) if rows is None else _validation_shares(data, cfg, rows)
    total, correct, n = 0.0, 0.0, 0.0
    for mask, batch in batches:
        packing = cnn_rows(model, cfg, mask, jax.device_count())
        out = eval_step(state, _put(batch, shard, cfg.batch_size), packing)
        loss_sum, c, w = (float(x) for x in jax.device_get(out))
        total, correct, n = total + loss_sum, correct + c, n + w
    return total / n, correct / n


def _validation_batches(data: SequenceData, cfg: TrainConfig):
    """(mask, batch) for each validation batch: consecutive objects, read ahead, padded to the batch size."""
    for batch in data.batches(cfg.validation_split, cfg.batch_size, cfg.eval_batches):
        batch = _pad(batch, cfg.batch_size)
        yield batch["mask"], batch


def _validation_shares(data: SequenceData, cfg: TrainConfig, rows: tuple[int, int]):
    """(the whole batch's mask, this process's rows lo:hi of it) for each validation batch of a multi-host run:
    the batches `_evaluate` reads in one process (consecutive objects, padded with the first), read in part."""
    index = data.indices(cfg.validation_split)
    for start in range(0, len(index), cfg.batch_size)[:cfg.eval_batches]:
        idx = index[start:start + cfg.batch_size]
        padded = np.concatenate([idx, np.repeat(idx[:1], cfg.batch_size - len(idx))])
        share = data.read(padded[rows[0]:rows[1]])
        share["weight"] = (np.arange(cfg.batch_size) < len(idx))[rows[0]:rows[1]].astype(np.float32)
        yield data.read_mask(padded), share


