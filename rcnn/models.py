"""The image-sequence classifier (RCNN, Carrasco-Davis et al. 2019, Table 3), the light-curve classifier and
the dm-dt CNN baseline (Mahabal et al. 2017).

RCNN, per step k (images k..k+n_w-1 stacked as channels, 21 x 21 x n_w): BN; conv_blocks x (conv 3x3 x 64 +
BN + ReLU); max-pool 2x2 stride 2 (21 -> 11); conv_blocks x (conv + BN + ReLU); max-pool (11 -> 6); flatten
(2304); dense 1024 + ReLU + dropout; concatenate the n_w time differences (each image's MJD minus the
sequence's first); LSTM 512 (or GRU, as TAO-Net) from a zero state; dense to class logits at every step.
The convolutions have no bias: the batch norm after each would cancel it.
The light-curve classifier keeps the dense + recurrent + output part, on (n_w fluxes, n_w errors, n_w time
differences) per step. Batch-norm statistics use valid steps only (padding is masked). Padding sits at the
end of each sequence (valid epochs are packed first), and the recurrence is causal, so valid steps never
see it.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcnn.batchnorm import BatchNorm
from rcnn.conv import conv_general_dilated


def _windows(x: jnp.ndarray, n_w: int) -> jnp.ndarray:
    """(B, T, ...) -> (B, T - n_w + 1, ..., n_w): item k stacks entries k..k+n_w-1 on a new last axis."""
    steps = x.shape[1] - n_w + 1
    return jnp.stack([x[:, j:j + steps] for j in range(n_w)], axis=-1)


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool, stride 2, SAME padding (21 -> 11 -> 6) on (N, H, W, C): the values of flax's
    `max_pool(x, (2, 2), strides=(2, 2), padding="SAME")`, written as the elementwise maximum of the four
    strided slices, each padded with -inf to the output's size. Its gradient is a few fused compare/selects,
    where XLA's CPU gradient of the reduce-window form carries int32 argmax arrays of the padded input's
    size through a variadic reduce-window and a scatter (~13% of a Table 3 training step's op time); and
    padding the slices, not x, lets XLA fuse the batch norm + ReLU before it into the pooling instead of
    writing out a padded copy of the activations (training 0-4% faster, benchmarks/README.md). Ties share
    the gradient instead of the first taking it: after a ReLU those are zeros, whose gradient the ReLU
    stops either way. Used in training only (`_pool`): inference under XLA's default CPU flags ran 2.4x
    slower with it."""
    _, h, w, _ = x.shape
    size = ((h + 1) // 2, (w + 1) // 2)

    def corner(dy: int, dx: int) -> jnp.ndarray:
        y = x[:, dy::2, dx::2]
        return jnp.pad(y, ((0, 0), (0, size[0] - y.shape[1]), (0, size[1] - y.shape[2]), (0, 0)),
                       constant_values=-jnp.inf)

    return jnp.maximum(jnp.maximum(corner(0, 0), corner(0, 1)), jnp.maximum(corner(1, 0), corner(1, 1)))


def _pool(x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The 2x2 max-pool: `max_pool_2x2` when training (its gradient is cheaper), flax's otherwise (same values)."""
    return max_pool_2x2(x) if train else nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _cell(kind: str, units: int, dtype):
    if kind == "gru":
        return nn.GRUCell(units, dtype=dtype, param_dtype=jnp.float32)
    return nn.OptimizedLSTMCell(units, dtype=dtype, param_dtype=jnp.float32)


class _Head(nn.Module):
    """Dense + dropout, time differences, recurrent layer, per-step logits (shared by both models)."""

    n_classes: int
    dense_units: int = 1024
    dropout: float = 0.5
    rnn_units: int = 512
    cell: str = "lstm"
    output: str = "last"     # last: each step's own output; add: outputs summed over the steps so far (TAO-Net)
    aux_head: bool = False   # double supervision (TAO-Net): per-step logits from the features alone, sown
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features, dt, step_mask, train: bool, context=None):
        x = nn.relu(nn.Dense(self.dense_units, dtype=self.dtype, param_dtype=jnp.float32)(features))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.aux_head:
            aux = nn.Dense(self.n_classes, dtype=self.dtype, param_dtype=jnp.float32, name="aux_dense")(x)
            self.sow("intermediates", "aux_logits", aux.astype(jnp.float32))
        x = jnp.concatenate([x, dt.astype(x.dtype)], axis=-1)
        h = nn.RNN(_cell(self.cell, self.rnn_units, self.dtype))(x)
        if context is not None:  # GOTO: contextual inputs joined after the recurrent layer, at every step
            ctx = jnp.broadcast_to(context[:, None, :].astype(h.dtype), h.shape[:2] + context.shape[-1:])
            h = jnp.concatenate([h, ctx], axis=-1)
        logits = nn.Dense(self.n_classes, dtype=self.dtype, param_dtype=jnp.float32)(h).astype(jnp.float32)
        if self.output == "add":
            logits = jnp.cumsum(jnp.where(step_mask[..., None], logits, 0.0), axis=1)
        return logits


class RCNN(nn.Module):
    """Image sequences (B, T, S, S) -> logits (B, T - n_w + 1, n_classes), step mask."""

    n_classes: int
    n_w: int = 3
    conv_filters: int = 64
    conv_blocks: int = 3
    dense_units: int = 1024
    dropout: float = 0.5
    rnn_units: int = 512
    cell: str = "lstm"
    bn_momentum: float = 0.99
    fusion: str = "early"    # early: the n_w images stacked as channels (the paper); late: each image through
                             # the CNN alone, features concatenated over the n_w (TAO-Net's comparison)
    output: str = "last"
    aux_head: bool = False
    context: bool = False    # takes a (B, n_context) context input (GOTO)
    dtype: jnp.dtype = jnp.float32

    def row_mask(self, mask):
        """Which rows of the convolutional stack are valid, (B, steps) in early fusion (a row per step), (B, T)
        in late (a row per image), from the image mask (B, T); numpy or jax arrays."""
        return mask[:, self.n_w - 1:] if self.fusion == "early" else mask

    @nn.compact
    def __call__(self, images, dt, mask, context=None, train: bool = False,
                 cnn_rows: tuple[int, int] | None = None):
        """`cnn_rows` = (groups, rows) (see `cnn_rows_for`): the batch is cut into `groups` consecutive blocks
        (the data-parallel shards) and the convolutional stack runs on `rows` rows of each, its valid rows (steps
        in early fusion, images in late) gathered first, instead of on every row. Padding rows get zero
        features either way."""
        b, t, s, _ = images.shape
        steps = t - self.n_w + 1
        step_mask = mask[:, self.n_w - 1:]
        row_mask = self.row_mask(mask)
        if self.fusion == "early":  # a row per step: its n_w images as channels
            x = _windows(images, self.n_w).reshape(b * steps, s, s, self.n_w)
        else:  # a row per image
            x = images.reshape(b * t, s, s, 1)
        m = row_mask.reshape(-1)
        if cnn_rows is not None:  # gathers within each block, so a sharded batch stays on its devices
            groups, rows = cnn_rows
            block = row_mask.reshape(groups, -1)
            index = jax.vmap(lambda r: jnp.nonzero(r, size=rows, fill_value=0)[0])(block)
            x = jnp.take_along_axis(x.reshape((groups, -1) + x.shape[1:]), index[:, :, None, None, None], axis=1)
            x = x.reshape((groups * rows,) + x.shape[2:])
            m = (jnp.arange(rows)[None] < jnp.sum(block, axis=1, keepdims=True)).reshape(groups * rows)
        x = x.astype(self.dtype)
        norm = dict(use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype, param_dtype=jnp.float32)
        x = BatchNorm(**norm)(x, m)
        for _ in range(2):
            for _ in range(self.conv_blocks):
                x = nn.Conv(self.conv_filters, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=jnp.float32,
                            use_bias=False, conv_general_dilated=conv_general_dilated)(x)
                x = nn.relu(BatchNorm(**norm)(x, m))
            x = _pool(x, train)
        if cnn_rows is not None:  # each valid row's features from its place in its block's gather
            at = jnp.maximum(jnp.cumsum(block, axis=1) - 1, 0)
            x = jnp.take_along_axis(x.reshape(groups, rows, -1), at[..., None], axis=1)
        x = jnp.where(row_mask[..., None], x.reshape(row_mask.shape + (-1,)), 0)  # zeros on padding, gathered or not
        if self.fusion == "late":  # per-image features (B, T, F) -> windows of n_w concatenated (B, steps, F * n_w)
            x = _windows(x, self.n_w).reshape(b, steps, -1)
        logits = _Head(self.n_classes, self.dense_units, self.dropout, self.rnn_units, self.cell, self.output,
                       self.aux_head, self.dtype)(x, _windows(dt, self.n_w), step_mask, train, context)
        return logits, step_mask


class LightCurveClassifier(nn.Module):
    """Light curves: flux, flux_err, dt (B, T) -> logits (B, T - n_w + 1, n_classes), step mask."""

    n_classes: int
    n_w: int = 3
    dense_units: int = 1024
    dropout: float = 0.5
    rnn_units: int = 512
    cell: str = "lstm"
    bn_momentum: float = 0.99
    output: str = "last"
    aux_head: bool = False
    context: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, flux, flux_err, dt, mask, context=None, train: bool = False):
        step_mask = mask[:, self.n_w - 1:]
        x = jnp.concatenate([_windows(flux, self.n_w), _windows(flux_err, self.n_w)], axis=-1).astype(self.dtype)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype)(x, step_mask)
        logits = _Head(self.n_classes, self.dense_units, self.dropout, self.rnn_units, self.cell, self.output,
                       self.aux_head, self.dtype)(x, _windows(dt, self.n_w), step_mask, train, context)
        return logits, step_mask


class DmdtCNN(nn.Module):
    """dm-dt images (B, S, n_dm, n_dt), one per prefix -> logits (B, S, n_classes): the small CNN of Mahabal
    et al. (2017) behind a masked batch norm of the input: conv 3x3 x 32, conv 3x3 x 64, max-pool 2x2, dropout,
    dense + ReLU + dropout, dense."""

    n_classes: int
    n_w: int = 3
    conv_filters: int = 64
    dense_units: int = 128
    dropout: float = 0.5
    bn_momentum: float = 0.99
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, dmdt, mask, train: bool = False):
        b, s, h, w = dmdt.shape
        x = dmdt.reshape(b * s, h, w, 1).astype(self.dtype)
        x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype)(
            x, mask[:, self.n_w - 1:].reshape(b * s))  # padded steps left out
        conv = dict(padding="SAME", dtype=self.dtype, param_dtype=jnp.float32)
        x = nn.relu(nn.Conv(max(self.conv_filters // 2, 1), (3, 3), **conv)(x))
        x = nn.relu(nn.Conv(self.conv_filters, (3, 3), **conv)(x))
        x = _pool(x, train)
        x = nn.Dropout(min(self.dropout, 0.25), deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.dense_units, dtype=self.dtype, param_dtype=jnp.float32)(x.reshape(b * s, -1)))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(self.n_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
        return logits.reshape(b, s, self.n_classes).astype(jnp.float32), mask[:, self.n_w - 1:]


def build_model(cfg, n_classes: int) -> nn.Module:
    """The model a `TrainConfig` describes."""
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    common = dict(n_classes=n_classes, n_w=cfg.n_w, dense_units=cfg.dense_units, dropout=cfg.dropout,
                  rnn_units=cfg.rnn_units, cell=cfg.cell, bn_momentum=cfg.bn_momentum, dtype=dtype)
    recurrent = dict(output=cfg.output, aux_head=cfg.aux_loss_weight > 0, context=bool(cfg.context))
    if cfg.model == "rcnn":
        return RCNN(conv_filters=cfg.conv_filters, conv_blocks=cfg.conv_blocks, fusion=cfg.fusion, **common, **recurrent)
    if cfg.model == "dmdt":
        return DmdtCNN(n_classes=n_classes, n_w=cfg.n_w, conv_filters=cfg.conv_filters, dense_units=cfg.dense_units,
                       dropout=cfg.dropout, bn_momentum=cfg.bn_momentum, dtype=dtype)
    return LightCurveClassifier(**common, **recurrent)


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """Batch keys a model takes, in order."""
    if isinstance(model, DmdtCNN):
        return ("dmdt", "mask")
    keys = ("images", "dt", "mask") if isinstance(model, RCNN) else ("flux", "flux_err", "dt", "mask")
    return keys + (("context",) if model.context else ())


ROW_BUCKETS = 16      # cnn_rows_for rounds up to 1/16 of a batch's steps: at most 16 compiled sizes,
MIN_BUCKET_ROWS = 256  # and to at least 256 rows: small batches' steps cost less than their compiles


def cnn_rows_for(model: nn.Module, mask: np.ndarray, groups: int = 1,
                 min_bucket: int = MIN_BUCKET_ROWS) -> tuple[int, int] | None:
    """(groups, rows): the RCNN's `cnn_rows` for a batch with image mask `mask` (B, T) cut into `groups`
    consecutive blocks (its data-parallel shards; 1 if B does not divide): the most valid rows of a block
    (steps in early fusion, images in late), rounded up to the next 1/`ROW_BUCKETS` of a block's rows or
    `min_bucket` rows, whichever is more; None (every row) when that is all of them and for other models.
    Padding is ~36% of the steps of a simulated HiTS set (objects with fewer than T epochs); the
    convolutions are ~90% of a step's FLOPs. Batches of 256 from the README demo's set: 67% of the steps
    computed for 64% valid, 2 distinct sizes over 200 batches."""
    if not isinstance(model, RCNN):
        return None
    row_mask = model.row_mask(np.asarray(mask))
    groups = groups if len(row_mask) % groups == 0 else 1
    block = row_mask.reshape(groups, -1)
    bucket = max(-(-block.shape[1] // ROW_BUCKETS), min_bucket)
    rows = max(-(-int(block.sum(axis=1).max()) // bucket), 1) * bucket
    return None if rows >= block.shape[1] else (groups, rows)


def apply_model(model: nn.Module, variables: dict, batch: dict, train: bool, rngs=None, mutable=False,
                cnn_rows: tuple[int, int] | None = None):
    """Run either model on a batch dict (see `rcnn.data`); `cnn_rows` for the RCNN (`cnn_rows_for`)."""
    args = tuple(batch[k] for k in model_inputs(model))
    extra = {} if cnn_rows is None else {"cnn_rows": cnn_rows}
    return model.apply(variables, *args, train=train, rngs=rngs, mutable=mutable, **extra)
