"""Training defaults in one place: `TrainConfig`, from a YAML file and `key=value` overrides.

Defaults follow Carrasco-Davis et al. (2019), Table 3 and sec. 3: n_w = 3 stacked images per step, three
conv-BN-ReLU blocks of 64 3x3 filters before each of two 2x2 max-pools, a 1024 dense layer with dropout,
an LSTM of 512, batch 256, Adam, 30,000 iterations, N_d capped at 20.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from simulator.settings import build_config, check_field_types, check_finite, yaml_mapping, yaml_value

MODELS = ("rcnn", "lc", "dmdt")
CELLS = ("lstm", "gru")
LOSSES = ("ce", "weighted_ce", "focal", "weighted_focal")
DTYPES = ("float32", "bfloat16")
#: GOTO's contextual inputs (Killestein et al. 2021): name -> (dataset, scale to order unity). Simulated
#: datasets have them all; real ones get the galactic latitude from the field and host data from a catalogue
#: cross-match given to `rcnn import-real --context`.
CONTEXT_INPUTS = {"has_host": ("context/has_host", 1.0),
                  "host_distance": ("context/host_distance_arcsec", 1.0 / 3.0),
                  "galactic_latitude": ("context/galactic_latitude_deg", 1.0 / 90.0)}  # |b| / 90 deg


@dataclass
class TrainConfig:
    """What to train and how."""

    model: str = "rcnn"              # rcnn (image sequences) | lc (light curves from `photometry`) | dmdt (Mahabal+2017)
    iterations: int = 30_000         # paper: 30,000
    batch_size: int = 256            # paper: 256
    learning_rate: float = 1e-3      # Adam
    eval_every: int = 500            # validation (and checkpoint) every this many iterations
    eval_batches: int = 8            # validation batches per evaluation (each up to batch_size sequences)
    seed: int = 0
    max_steps: int = 20              # N_d cap: images per sequence used (paper: 20)
    n_w: int = 3                     # images stacked per step (paper: 3)
    conv_filters: int = 64
    conv_blocks: int = 3             # conv-BN-ReLU layers before each max-pool
    dense_units: int = 1024
    dropout: float = 0.5
    bn_momentum: float = 0.99        # batch-norm running averages (lower for short runs)
    rnn_units: int = 512
    cell: str = "lstm"               # lstm | gru (TAO-Net)
    output: str = "last"             # last | add (TAO-Net: per-step outputs summed over time)
    fusion: str = "early"            # early (stacked channels, the paper) | late (per-image CNN, TAO-Net)
    aux_loss_weight: float = 0.0     # > 0: double supervision (TAO-Net), per-step loss on the CNN features alone
    # GOTO: contextual inputs joined after the RNN, names from CONTEXT_INPUTS ("a,b" or a list; true = the
    # host pair has_host,host_distance; "all" = all three)
    context: list = dataclasses.field(default_factory=list)
    pre_detection_label: bool = False  # RAPID: steps before a transient's alert are labelled "pre_detection"
    loss: str = "ce"                 # ce | weighted_ce (RAPID, GOTO) | focal | weighted_focal (GOTO)
    focal_gamma: float = 2.0
    augment: bool = True             # random 90-degree rotation and mirroring per sequence
    # and, when > 0, each training sequence's fluxes scaled by 10^(-0.4 d), d ~ U(-this, this) mag: real
    # labelled sets are brighter than a survey's magnitude laws (HiTS: 2-4 mag), so brightness alone must not
    # tell the class
    augment_brightness_mag: float = 0.0
    # Inputs (eq. 4 scaled ADU) are divided by flux_scale_adu, then (asinh) compressed: raw star fluxes span
    # 4 decades, so per-batch BN statistics would follow the brightest object of each batch and running
    # averages would not match them at evaluation. asinh is linear for sky noise and logarithmic for stars.
    flux_scale_adu: float = 100.0
    input_transform: str = "asinh"   # asinh | linear
    dtype: str = "float32"           # compute dtype; bfloat16 keeps float32 master weights (GPU/TPU)
    # RCNN: run the convolutional stack on each batch's valid steps (early fusion) or images (late) only,
    # gathered within each device's shard (`rcnn.models.cnn_rows_for`); the same model, ~1/3 less work on
    # simulated HiTS sets
    pack_steps: bool = True
    prefetch: int = 4                # batches read ahead (at least 2 per input process)
    # input processes reading training batches; -1: none on the CPU backend (the network needs the cores),
    # else max(1, min(8, cores - 2)): one process reads ~10 batches of 256 per second (benchmarks/README.md,
    # input_speed)
    loader_workers: int = -1
    distributed: bool = False        # call jax.distributed.initialize() (multi-host)
    # fine-tuning (`rcnn finetune`): start from another run's best checkpoint, optionally with the
    # convolutional layers frozen (their batch-norm statistics still adapt to the new data)
    init_from: str | None = None
    freeze: str = "none"             # none | conv
    validation_split: str = "validation"  # split used for validation and the best checkpoint

    def __post_init__(self) -> None:
        check_field_types(self)
        check_finite(self)
        self.context = _context_names(self.context)
        checks = [(self.model in MODELS, f"model must be one of {MODELS}", "model"),
                  (self.cell in CELLS, f"cell must be one of {CELLS}", "cell"),
                  (self.loss in LOSSES, f"loss must be one of {LOSSES}", "loss"),
                  (self.dtype in DTYPES, f"dtype must be one of {DTYPES}", "dtype"),
                  (self.iterations >= 1 and self.batch_size >= 1 and self.eval_every >= 1,
                   "iterations, batch_size, eval_every must be >= 1", "iterations batch_size eval_every"),
                  (self.n_w >= 1 and self.max_steps >= self.n_w, "need 1 <= n_w <= max_steps", "n_w max_steps"),
                  (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)", "dropout"),
                  (self.learning_rate > 0, "learning_rate must be > 0", "learning_rate"),
                  (min(self.conv_filters, self.dense_units, self.rnn_units, self.eval_batches) >= 1,
                   "conv_filters, dense_units, rnn_units, eval_batches must be >= 1",
                   "conv_filters dense_units rnn_units eval_batches"),
                  (self.conv_blocks >= 0 and self.prefetch >= 0, "conv_blocks and prefetch must be >= 0",
                   "conv_blocks prefetch"),
                  (0.0 <= self.bn_momentum < 1.0, "bn_momentum must be in [0, 1)", "bn_momentum"),
                  (self.flux_scale_adu > 0, "flux_scale_adu must be > 0", "flux_scale_adu"),
                  (self.input_transform in ("asinh", "linear"), "input_transform must be asinh or linear",
                   "input_transform"),
                  (self.freeze in ("none", "conv"), "freeze must be none or conv", "freeze"),
                  (self.output in ("last", "add") and self.fusion in ("early", "late"),
                   "output: last|add, fusion: early|late", "output fusion"),
                  (self.aux_loss_weight >= 0, "aux_loss_weight must be >= 0", "aux_loss_weight"),
                  (not (self.context and self.model == "dmdt"), "context inputs are for the rcnn and lc models",
                   "context model"),
                  (self.validation_split in ("train", "validation", "test"),
                   "validation_split must be train, validation or test", "validation_split"),
                  (self.focal_gamma >= 0, "focal_gamma must be >= 0", "focal_gamma"),
                  (self.augment_brightness_mag >= 0, "augment_brightness_mag must be >= 0", "augment_brightness_mag"),
                  (-1 <= self.loader_workers <= 256, "loader_workers must be in [0, 256], or -1 (auto)",
                   "loader_workers"),
                  # JAX keeps a seed's low 32 bits: larger ones would repeat smaller ones' draws
                  (0 <= self.seed < 2 ** 32, "seed must be in [0, 2**32)", "seed"),
                  (max(self.iterations, self.batch_size, self.eval_every, self.eval_batches, self.max_steps,
                       self.conv_filters, self.dense_units, self.rnn_units, self.prefetch) < 2 ** 31,
                   "sizes and counts must be < 2**31",
                   "iterations batch_size eval_every eval_batches max_steps conv_filters dense_units rnn_units prefetch")]
        for ok, message, keys in checks:
            if not ok:
                raise ValueError(f"{message}; got " + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys.split()))

    @property
    def n_context(self) -> int:
        return len(self.context)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=True)


def _context_names(value) -> list[str]:
    """The `context` key as a list of CONTEXT_INPUTS names (true = the host pair, as GOTO's catalogue inputs)."""
    if not isinstance(value, (bool, str, list, tuple, type(None))):
        raise ValueError(f"context: {value!r} must be a list or comma-separated string of inputs among "
                         f"{', '.join(CONTEXT_INPUTS)} (or true, all, none)")
    if value is True:
        return ["has_host", "host_distance"]
    if value in (False, None, "", "none"):
        return []
    if value == "all":
        return list(CONTEXT_INPUTS)
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    unknown = [v for v in names if v not in CONTEXT_INPUTS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"context: {value!r} must name distinct inputs among {', '.join(CONTEXT_INPUTS)} "
                         "(or be true, all, none)")
    return names


def load_config(yaml_path: str | Path | None = None, sets: list[str] | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then a YAML file, then `--set key=value`, then explicit overrides (CLI flags); a bad key or value
    of the file is an error naming the file."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    file_values = yaml_mapping(yaml_path) if yaml_path else {}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise ValueError(f"{yaml_path}: unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
    values = dict(file_values)
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        values[k.strip()] = yaml_value(v, f"--set {item}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
    return build_config(TrainConfig, values, file_values, yaml_path)
