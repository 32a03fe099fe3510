"""The RCNN's convolution, with a weight gradient that XLA's CPU backend computes without a fused transpose.

In a training step XLA computes each convolution's weight gradient from the saved input activations laid
out channel-major, and on CPU it fuses the batch-norm + ReLU that produced them into that N<->C transpose.
The fused transpose runs 3-4x slower than a plain one (0.3-0.6 s against ~0.13 s per 64-channel
activation at batch 256, ~1.2 s of a ~12.5 s step). Here the backward first multiplies the activations by
the identity matrix over channels: a dot is not a producer XLA fuses into its consumers, so the transpose
that follows it is a plain copy. In f32 (and bf16) the product is exact for finite values: each output is
one input times 1 plus zeros. Training +4-5% at batch 256 in paired runs (benchmarks/README.md).
Values and gradients equal `lax.conv_general_dilated`'s; accelerators and inputs with fewer than
`MIN_CHANNELS` channels (the RCNN's first convolution, on the n_w stacked images) take plain `lax`.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

MIN_CHANNELS = 64  # measured on the Table 3 RCNN's 64-channel activations; narrower ones were not


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _identity_dot_conv(conv, lhs, rhs):
    return conv(lhs, rhs)


def _forward(conv, lhs, rhs):
    return conv(lhs, rhs), (lhs, rhs)


def _backward(conv, saved, g):
    lhs, rhs = saved
    eye = jnp.eye(lhs.shape[-1], dtype=lhs.dtype)
    lhs = jnp.einsum("...c,cd->...d", lhs, eye)  # exact; stops XLA fusing lhs's producer into the transpose
    _, vjp = jax.vjp(conv, lhs, rhs)
    return vjp(g)


_identity_dot_conv.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` (same signature, values and gradients), for `flax.linen.Conv`'s
    `conv_general_dilated` field. On the CPU backend, for channel-last inputs of at least `MIN_CHANNELS`
    channels, the weight gradient goes through the identity dot described in the module docstring."""
    conv = partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                   lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                   precision=precision, preferred_element_type=preferred_element_type)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    channel_last = dn.lhs_spec[1] == lhs.ndim - 1
    if jax.default_backend() != "cpu" or not channel_last or lhs.shape[-1] < MIN_CHANNELS:
        return conv(lhs, rhs)
    return _identity_dot_conv(conv, lhs, rhs)
