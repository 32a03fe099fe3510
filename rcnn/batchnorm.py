"""Batch normalisation with statistics over the valid rows of a batch (the RCNN's padding steps excluded).

The values of `flax.linen.BatchNorm` with a mask (same parameters, batch statistics, names, momentum update
and fast variance E[x^2] - E[x]^2), written so that XLA's CPU backend streams the activations fewer times.
Flax takes the masked means as `mean(x, where=mask)`: each `where` is a select that XLA writes out in full
(a 4608x21x21x64 f32 array at batch 256 is 520 MB) before its reduction, and its backward writes out
`x - mean` and the scaled gradient for two more. Here the statistics are per-row sums of `x` and `x * x`
weighted by the mask afterwards (small arrays), the output `x * a + c` with per-channel `a`, `c`: the
reductions read `x` and the incoming gradient directly (XLA fuses a product into its reductions but not a
select), and the backward needs `sum(g)` and `sum(g * x)` only. Together with the RCNN's convolutions
losing their (redundant) biases: batch-256 training steps +5-8% in paired runs (benchmarks/README.md).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class BatchNorm(nn.Module):
    """Normalises over every axis but the last (the features). In training the statistics use the entries
    where `mask`, a boolean array shaped like x's leading axes (e.g. (rows,) for images (rows, H, W, C) or
    (B, T) for (B, T, F)), is true; every entry without one. Named like flax's module, so its parameters and
    batch statistics sit at the same paths (`BatchNorm_0/scale`, ...): checkpoints carry over."""

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = _masked_moments(x, mask)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        a = scale * jax.lax.rsqrt(var + self.epsilon)
        return (x * a + (bias - mean * a)).astype(dtype)


def _masked_moments(x: jnp.ndarray, mask: jnp.ndarray | None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-channel mean and (biased) variance of `x` over the entries where `mask` (the shape of x's leading
    axes) is true: sums over the inner axes first, then the mask's weighted sum of those small partial sums,
    so that nothing of x's size but x itself is read."""
    if mask is None:
        mask = jnp.ones(x.shape[:1], bool)
    lead = mask.ndim
    if x.shape[:lead] != mask.shape or lead >= x.ndim:
        raise ValueError(f"BatchNorm: mask of shape {mask.shape} does not match the leading axes of {x.shape}")
    inner = tuple(range(lead, x.ndim - 1))
    weight = mask.reshape(-1).astype(x.dtype)
    count = jnp.maximum(jnp.sum(weight), 1.0) * int(np.prod(x.shape[lead:-1]))
    mean = weight @ jnp.sum(x, axis=inner).reshape(weight.shape[0], -1) / count
    mean2 = weight @ jnp.sum(x * x, axis=inner).reshape(weight.shape[0], -1) / count
    return mean, jnp.maximum(0.0, mean2 - mean * mean)
