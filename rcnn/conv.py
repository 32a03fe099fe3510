"""The RCNN's convolution, with gradients that XLA's CPU backend computes faster than lax's own.

Wide inputs (at least `MIN_CHANNELS` channels): in a training step XLA computes each convolution's weight
gradient from the saved input activations laid out channel-major, and on CPU it fuses the batch-norm +
ReLU that produced them into that N<->C transpose. The fused transpose runs 3-4x slower than a plain one
(0.3-0.6 s against ~0.13 s per 64-channel activation at batch 256, ~1.2 s of a ~12.5 s step). Here the
backward first multiplies the activations by the identity matrix over channels: a dot is not a producer
XLA fuses into its consumers, so the transpose that follows it is a plain copy. In f32 (and bf16) the
product is exact for finite values: each output is one input times 1 plus zeros. Training +4-5% at batch
256 in paired runs (benchmarks/README.md).

Narrow inputs (at most `NARROW_MAX_CHANNELS` channels, e.g. the RCNN's first convolution on the n_w
stacked images, whose input gradient the input batch norm's scale and offset need): XLA's input gradient
is a convolution with that few output channels, which its CPU path runs at ~35 GFLOP/s (180 ms of a
~6 s batch-256 step). Here it is one matmul of the output gradient with the kernel (every tap's
contribution, [rows, C_out] x [C_out, taps * C_in]) and a sum of the taps' shifted slices: 35 ms.

Values and gradients equal `lax.conv_general_dilated`'s (to rounding: the sums run in another order);
accelerators and every other convolution take plain `lax`.
"""
from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

MIN_CHANNELS = 64  # measured on the Table 3 RCNN's 64-channel activations; narrower ones were not
#: Input gradients by matmul + shifted sum (benchmarks/README.md, 4608x21x21 inputs, 3x3 kernel, 64
#: filters): 1 channel 106 -> 21 ms, 3: 181 -> 35, 8: 210 -> 76, 16: 209 -> 170; 32: 273 -> 343 (slower).
NARROW_MAX_CHANNELS = 16
NARROW_MAX_TAPS = 9  # measured on 3x3 kernels only


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


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _narrow_input_conv(conv, pads, lhs, rhs):
    return conv(lhs, rhs)


def _narrow_forward(conv, pads, lhs, rhs):
    return conv(lhs, rhs), (lhs, rhs)


def _narrow_backward(conv, pads, saved, g):
    lhs, rhs = saved
    _, vjp = jax.vjp(lambda r: conv(lhs, r), rhs)
    return _input_gradient(g, rhs, pads, lhs.shape).astype(lhs.dtype), vjp(g)[0]


_narrow_input_conv.defvjp(_narrow_forward, _narrow_backward)


def _input_gradient(g, rhs, pads, lhs_shape):
    """The gradient of a stride-1, channel-last convolution with respect to its input: x[i] met kernel tap k
    at output o = i + low - k, so dx[i] = sum_k g[i + low - k] . rhs[k]^T. One matmul gives every
    g[o] . rhs[k]^T; each tap's slice, shifted by padding with `k - low` zeros (negative: cropped), adds in."""
    nd = rhs.ndim - 2
    acc = jnp.promote_types(g.dtype, jnp.float32)
    products = lax.dot_general(g, rhs, (((g.ndim - 1,), (rhs.ndim - 1,)), ((), ())), preferred_element_type=acc)
    total = jnp.zeros(lhs_shape, acc)
    for tap in itertools.product(*(range(n) for n in rhs.shape[:nd])):
        piece = products[(slice(None),) * (nd + 1) + tap]
        shift = [(k - low, size - out - (k - low), 0)
                 for k, (low, _), size, out in zip(tap, pads, lhs_shape[1:-1], g.shape[1:-1])]
        total = total + lax.pad(piece, jnp.zeros((), acc), [(0, 0, 0)] + shift + [(0, 0, 0)])
    return total


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` (same signature, values and gradients), for `flax.linen.Conv`'s
    `conv_general_dilated` field. On the CPU backend, for channel-last inputs of at least `MIN_CHANNELS`
    channels the weight gradient goes through the identity dot, and for stride-1 channel-last inputs of at
    most `NARROW_MAX_CHANNELS` channels the input gradient is a matmul and a shifted sum (module docstring)."""
    conv = partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                   lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                   precision=precision, preferred_element_type=preferred_element_type)
    if jax.default_backend() != "cpu":
        return conv(lhs, rhs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn.lhs_spec[1] == lhs.ndim - 1 and lhs.shape[-1] >= MIN_CHANNELS:
        return _identity_dot_conv(conv, lhs, rhs)
    nd = lhs.ndim - 2
    spatial = tuple(range(1, nd + 1))
    stride_one_channel_last = (
        dn.lhs_spec == (0, nd + 1) + spatial and dn.out_spec == dn.lhs_spec
        and dn.rhs_spec == (nd + 1, nd) + tuple(range(nd))
        and all(v == 1 for v in tuple(window_strides) + tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None)
    narrow = lhs.shape[-1] <= NARROW_MAX_CHANNELS and math.prod(rhs.shape[:nd]) <= NARROW_MAX_TAPS
    if not (stride_one_channel_last and narrow):
        return conv(lhs, rhs)
    pads = (lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:nd], window_strides, padding)
            if isinstance(padding, str) else padding)
    return _narrow_input_conv(conv, tuple(tuple(p) for p in pads), lhs, rhs)
