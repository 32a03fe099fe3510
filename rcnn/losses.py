"""Sequence losses: the sum over valid steps of a per-step classification loss, averaged over sequences.

`ce`: cross-entropy (Carrasco-Davis et al. 2019: loss = sum_t loss(t)); `weighted_ce`: each class weighted
by N / (C N_c) of the training set (RAPID, Muthukrishna et al. 2019; GOTO, Killestein et al. 2021);
`focal`: (1 - p)^gamma x cross-entropy (Lin et al. 2017), which is `ce` at gamma = 0; `weighted_focal`: the
focal loss with GOTO's alpha_j = N / (n N_j) class weights (Killestein et al. 2021).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """N / (C N_c) per class (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0).astype(np.float32)


def sequence_loss(logits, labels, step_mask, kind: str = "ce", weights=None, gamma: float = 2.0, seq_weight=None):
    """Mean over sequences of the summed per-step loss at valid steps. `labels` (B,) or per step (B, steps);
    `seq_weight` (B,) excludes padding rows."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    per_step = labels if labels.ndim == 2 else jnp.broadcast_to(labels[:, None], logits.shape[:2])  # (B, steps)
    lp = jnp.take_along_axis(logp, per_step[..., None], axis=-1)[..., 0]
    loss = -lp
    if kind in ("focal", "weighted_focal"):
        # (1 - p)^gamma: a confident step's p rounds to 1 (logit margin ~17 in float32), where the power's
        # derivative is infinite for gamma < 1 and its product with the zero loss NaN; the limit there is 0
        q = -jnp.expm1(lp)
        safe = jnp.where(q > 0, q, 1.0)
        loss = jnp.where(q > 0, safe ** gamma, jnp.where(gamma > 0, 0.0, 1.0)) * loss
    if kind in ("weighted_ce", "weighted_focal"):
        loss = loss * weights[per_step]
    per_seq = jnp.sum(jnp.where(step_mask, loss, 0.0), axis=1)
    w = jnp.ones_like(per_seq) if seq_weight is None else seq_weight
    return jnp.sum(per_seq * w) / jnp.maximum(jnp.sum(w), 1.0)
