"""RCNN and light-curve classifier: shapes, masking, jit parity, losses, training, exact resume, bad data."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from photometry.dataset import run_photometry
from rcnn.cli import glibc_linux, huge_pages_available
from rcnn.config import TrainConfig
from rcnn.data import DatasetError, SequenceData
from rcnn.losses import class_weights, sequence_loss
from rcnn.models import LightCurveClassifier, RCNN, build_model
from rcnn.train import train
from simulator.run import simulate
from simulator.settings import SimConfig

TINY = dict(conv_filters=8, dense_units=32, rnn_units=16, bn_momentum=0.9, batch_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Non-variable stars and asteroids (easy to tell apart), with photometry for the light-curve model."""
    path = tmp_path_factory.mktemp("rcnn") / "two.h5"
    simulate(SimConfig(classes=("nonvariable", "asteroid"), n_per_class=60, seed=1, progress=False), path)
    run_photometry(path, progress=False)
    return path


def _init(model, *args):
    return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, *args, train=False)


def test_shapes():
    b, t = 3, 20
    rcnn = RCNN(n_classes=7, conv_filters=8, dense_units=16, rnn_units=8)
    args = (jnp.zeros((b, t, 21, 21)), jnp.zeros((b, t)), jnp.ones((b, t), bool))
    logits, step_mask = rcnn.apply(_init(rcnn, *args), *args)
    assert logits.shape == (b, t - 2, 7) and step_mask.shape == (b, t - 2)
    params = _init(rcnn, *args)["params"]
    assert params["_Head_0"]["Dense_0"]["kernel"].shape == (6 * 6 * 8, 16)  # 21 -> 11 -> 6 after two pools
    lc = LightCurveClassifier(n_classes=4, dense_units=16, rnn_units=8, cell="gru")
    args = (jnp.zeros((b, t)), jnp.ones((b, t)), jnp.zeros((b, t)), jnp.ones((b, t), bool))
    logits, _ = lc.apply(_init(lc, *args), *args)
    assert logits.shape == (b, t - 2, 4)


@pytest.mark.parametrize("size", [21, 11, 6])
def test_max_pool_matches_flax_values_and_gradients(size):
    """The strided-slice 2x2 pool (a faster gradient on CPU) gives flax's `max_pool` values and, on
    tie-free inputs, its gradient; after a ReLU, where zeros tie, the gradient through the ReLU matches too."""
    import flax.linen as nn

    from rcnn.models import max_pool_2x2

    x = jnp.asarray(np.random.default_rng(size).normal(size=(3, size, size, 5)).astype(np.float32))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, (size + 1) // 2, (size + 1) // 2, 5)).astype(np.float32))
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding="SAME")  # noqa: E731
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
    for pre in (lambda v: v, nn.relu):
        grads = [jax.grad(lambda v, f=f: (f(pre(v)) * w).sum())(x) for f in (max_pool_2x2, ref)]
        np.testing.assert_array_equal(*grads)


def _assert_matches_lax(loss, a, rhs):
    """loss(f, a, rhs) and its jitted gradients equal with f = rcnn.conv's and lax's convolution."""
    from jax import lax

    from rcnn import conv

    ours, ref = (jax.jit(jax.value_and_grad(partial(loss, f), argnums=(0, 1)))
                 for f in (conv.conv_general_dilated, lax.conv_general_dilated))
    (v1, g1), (v2, g2) = ours(a, rhs), ref(a, rhs)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(jnp.abs(y).max()))


def test_identity_dot_conv_matches_lax_values_and_gradients():
    """`rcnn.conv.conv_general_dilated` (CPU: weight gradient through an identity dot) gives lax's values
    and, jitted, its gradients for 64 channels behind a batch-norm-like ReLU producer; it takes the dot only
    from `MIN_CHANNELS` channels on, and only on CPU."""
    from jax import lax

    from rcnn import conv

    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.normal(size=(4, 21, 21, 64)).astype(np.float32))
    rhs = jnp.asarray(rng.normal(size=(3, 3, 64, 64)).astype(np.float32) / 24)
    cot = jnp.asarray(rng.normal(size=(4, 21, 21, 64)).astype(np.float32))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(f, a, rhs):
        x = jax.nn.relu(a * 1.3 - 0.2)
        return (f(x, rhs, (1, 1), "SAME", dimension_numbers=dn) * cot[..., :rhs.shape[-1]]).sum()

    _assert_matches_lax(loss, a, rhs)
    primitives = lambda f, a, rhs: str(jax.make_jaxpr(jax.grad(partial(loss, f), argnums=1))(a, rhs))  # noqa: E731
    assert jax.default_backend() != "cpu" or "dot_general" in primitives(conv.conv_general_dilated, a, rhs)
    assert "dot_general" not in primitives(lax.conv_general_dilated, a, rhs)
    narrow = a[..., :conv.MIN_CHANNELS - 1], rhs[:, :, :conv.MIN_CHANNELS - 1]
    assert "dot_general" not in primitives(conv.conv_general_dilated, *narrow)


@pytest.mark.parametrize("shapes, padding", [
    (((4, 21, 21, 3), (3, 3, 3, 8)), "SAME"),
    (((4, 21, 21, 1), (3, 3, 1, 8)), "VALID"),
    (((4, 10, 11, 2), (3, 2, 2, 5)), ((2, 0), (1, 3))),
    (((4, 30, 3), (5, 3, 7)), "SAME"),
])
def test_narrow_input_conv_matches_lax_gradients(shapes, padding):
    """Inputs of at most `NARROW_MAX_CHANNELS` channels (the RCNN's first convolution): on CPU the input
    gradient is a matmul and a sum of the taps' shifted slices; values and both gradients equal lax's, for
    SAME, VALID and uneven explicit padding, 2-d and 1-d. Wider inputs keep lax's input gradient."""
    from jax import lax

    from rcnn import conv

    rng = np.random.default_rng(5)
    lhs_shape, rhs_shape = shapes
    dn = ("NHWC", "HWIO", "NHWC") if len(lhs_shape) == 4 else ("NWC", "WIO", "NWC")
    strides = (1,) * (len(lhs_shape) - 2)
    a, rhs = (jnp.asarray(rng.normal(size=shape).astype(np.float32)) for shape in shapes)
    cot = jnp.asarray(rng.normal(size=lax.conv_general_dilated(a, rhs, strides, padding, dimension_numbers=dn).shape)
                      .astype(np.float32))

    def loss(f, a, rhs):
        return (f(jnp.tanh(a), rhs, strides, padding, dimension_numbers=dn) * cot).sum()

    _assert_matches_lax(loss, a, rhs)
    jaxpr = str(jax.make_jaxpr(jax.grad(partial(loss, conv.conv_general_dilated)))(a, rhs))
    assert jax.default_backend() != "cpu" or "dot_general" in jaxpr
    wide = jnp.concatenate([a] * (conv.NARROW_MAX_CHANNELS // a.shape[-1] + 1), axis=-1)
    wide_rhs = jnp.concatenate([rhs] * (conv.NARROW_MAX_CHANNELS // a.shape[-1] + 1), axis=-2)
    assert "dot_general" not in str(jax.make_jaxpr(jax.grad(partial(loss, conv.conv_general_dilated)))(wide, wide_rhs))


def test_rcnn_gradients_equal_with_and_without_the_identity_dot(monkeypatch):
    """A 64-filter RCNN's training gradients are the same whether its convolutions take the identity dot
    (64-channel inputs) and the narrow-input gradient (the first convolution, on n_w = 3 channels)."""
    from rcnn import conv

    rng = np.random.default_rng(4)
    model = RCNN(n_classes=3, conv_filters=64, conv_blocks=1, dense_units=16, rnn_units=8, dropout=0.0)
    args = (rng.normal(size=(2, 6, 21, 21)).astype(np.float32), np.zeros((2, 6), np.float32), np.ones((2, 6), bool))
    variables = _init(model, *args)

    def grads():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, *args, train=True, mutable=["batch_stats"])
            return (out[0] ** 2).sum()
        return jax.jit(jax.grad(loss))(variables["params"])

    ours = grads()
    monkeypatch.setattr(conv, "MIN_CHANNELS", 10 ** 9)
    monkeypatch.setattr(conv, "NARROW_MAX_CHANNELS", 0)
    ref = grads()
    for x, y in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * float(jnp.abs(y).max()))


def test_full_size_rcnn_matches_table_3():
    """Default sizes: 2304 features after flattening, dense 1024, LSTM 512."""
    model = build_model(TrainConfig(), 7)
    args = (jnp.zeros((1, 20, 21, 21)), jnp.zeros((1, 20)), jnp.ones((1, 20), bool))
    shapes = jax.eval_shape(lambda: _init(model, *args))["params"]
    head = shapes["_Head_0"]
    assert head["Dense_0"]["kernel"].shape == (2304, 1024)
    lstm = head["OptimizedLSTMCell_0"]
    assert lstm["hi"]["kernel"].shape == (512, 512) and lstm["ii"]["kernel"].shape == (1024 + 3, 512)  # + 3 time differences
    assert head["Dense_1"]["kernel"].shape == (512, 7)


@pytest.mark.parametrize("train_mode", [False, True])
def test_padding_does_not_change_valid_steps(train_mode):
    rng = np.random.default_rng(0)
    model = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, dropout=0.0)
    images = rng.normal(size=(4, 12, 21, 21)).astype(np.float32)
    dt = np.cumsum(rng.uniform(0, 1, (4, 12)), axis=1).astype(np.float32)
    mask = np.arange(12)[None, :] < np.array([12, 9, 7, 5])[:, None]
    other = np.where(mask[..., None, None], images, rng.normal(size=images.shape) * 100).astype(np.float32)
    variables = _init(model, images, dt, mask)

    def run(x):
        out = model.apply(variables, x, dt, mask, train=train_mode, mutable=["batch_stats"] if train_mode else False)
        return (out[0] if train_mode else out)[0]

    a, b = run(images), run(other)
    step_mask = mask[:, 2:]
    assert np.allclose(np.asarray(a)[step_mask], np.asarray(b)[step_mask], atol=1e-5)


def test_cnn_on_valid_steps_only_matches_every_step():
    """With `cnn_rows` the convolutional stack runs on the valid steps gathered (plus a few padding rows);
    the logits at valid steps, the batch-norm statistics and the training gradients equal those of the
    stack on every step, and padding steps get zero features on both paths (the same outputs there too)."""
    from rcnn.models import cnn_rows_for

    rng = np.random.default_rng(5)
    model = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, dropout=0.0)
    b, t = 6, 12
    images = rng.normal(size=(b, t, 21, 21)).astype(np.float32)
    dt = np.cumsum(rng.uniform(0, 1, (b, t)), axis=1).astype(np.float32)
    mask = np.arange(t)[None, :] < np.array([12, 9, 7, 5, 3, 3])[:, None]
    images = np.where(mask[..., None, None], images, 0).astype(np.float32)
    variables = _init(model, images, dt, mask)
    rows = cnn_rows_for(model, mask, min_bucket=1)
    step_mask = mask[:, 2:]
    assert step_mask.sum() == 27 and rows == (1, 28)  # 27 valid of 60 steps, rounded up to sixteenths of 4 rows

    def loss(params, rows):
        (logits, _), upd = model.apply({**variables, "params": params}, images, dt, mask, train=True,
                                       mutable=["batch_stats"], cnn_rows=rows)
        return jnp.sum(jnp.where(step_mask[..., None], logits, 0) ** 2), (logits, upd["batch_stats"])

    (v1, (l1, s1)), g1 = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(variables["params"], rows)
    (v2, (l2, s2)), g2 = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(variables["params"], None)
    np.testing.assert_allclose(np.asarray(l1)[step_mask], np.asarray(l2)[step_mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    scale = max(float(jnp.abs(y).max()) for y in jax.tree_util.tree_leaves(g2))  # entries near 0 compare at this scale
    for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)
    for x, y in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    ev = [model.apply(variables, images, dt, mask, cnn_rows=r)[0] for r in (rows, None)]
    np.testing.assert_allclose(np.asarray(ev[0])[step_mask], np.asarray(ev[1])[step_mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ev[0], ev[1], rtol=1e-5, atol=1e-5)  # padding steps too
    halves = cnn_rows_for(model, mask, groups=2, min_bucket=1)  # blocks of 30 steps: 10 + 7 + 5 and 3 + 1 + 1 valid
    assert halves == (2, 22)                      # the fuller block's 22, in sixteenths of 2 rows
    (v3, (l3, s3)), g3 = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(variables["params"], halves)
    np.testing.assert_allclose(np.asarray(l3)[step_mask], np.asarray(l2)[step_mask], rtol=1e-5, atol=1e-5)
    for x, y in zip(jax.tree_util.tree_leaves((g3, s3)), jax.tree_util.tree_leaves((g2, s2))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)
    for r in (rows, halves, None):
        _, inter = model.apply(variables, images, dt, mask, cnn_rows=r, capture_intermediates=True)
        dense_out = inter["intermediates"]["_Head_0"]["Dense_0"]["__call__"][0]  # of zero features: its bias
        assert np.allclose(np.asarray(dense_out)[~step_mask], variables["params"]["_Head_0"]["Dense_0"]["bias"])


def test_cnn_rows_for_rounds_up_to_buckets():
    from rcnn.models import MIN_BUCKET_ROWS, ROW_BUCKETS, cnn_rows_for

    assert ROW_BUCKETS == 16 and MIN_BUCKET_ROWS == 256
    model = RCNN(n_classes=3)
    rows = partial(cnn_rows_for, model, min_bucket=1)
    mask = np.arange(20)[None, :] < np.array([20, 12, 7, 3])[:, None]   # steps valid: 18 + 10 + 5 + 1 = 34 of 72
    assert rows(mask) == (1, 35)                                         # sixteenths of 72: 5 rows (rounded up)
    assert rows(np.ones((4, 20), bool)) is None                          # every step valid: no gather
    assert rows(np.zeros((4, 20), bool)) == (1, 5)                       # at least one bucket
    assert rows(np.arange(20)[None, :] < np.array([20, 20, 20, 19])[:, None]) is None  # 71 -> 75
    assert rows(mask, groups=2) == (2, 30)                               # the fuller block: 28 of 36, in 3s
    assert rows(mask, groups=3) == (1, 35)                               # 4 sequences do not split in 3
    assert cnn_rows_for(model, mask) is None                             # default: buckets of >= 256 rows
    big = np.arange(20)[None, :] < np.where(np.arange(64) < 40, 20, 2)[:, None]  # 40 x 18 of 64 x 18 valid
    assert cnn_rows_for(model, big) == (1, 768)                          # 720 valid: 3 x 256 (1/16 is 72)
    late = partial(cnn_rows_for, RCNN(n_classes=3, fusion="late"), min_bucket=1)  # a row per image
    assert late(mask) == (1, 45) and late(mask, groups=2) == (2, 33)    # 42 of 80 in 5s; 32 of 40 in 3s
    assert cnn_rows_for(RCNN(n_classes=3, fusion="late"), mask) is None  # 256-row buckets: all 80 rows
    assert cnn_rows_for(LightCurveClassifier(n_classes=3), mask) is None


def test_late_fusion_on_valid_images_only_matches_every_image():
    """Late fusion packs valid images (a row per image): the same logits at valid steps, batch-norm statistics
    and gradients as the per-image CNN on every image, whole batch or per block of two."""
    from rcnn.models import cnn_rows_for

    rng = np.random.default_rng(6)
    model = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, dropout=0.0, fusion="late")
    b, t = 4, 10
    mask = np.arange(t)[None, :] < np.array([10, 6, 4, 3])[:, None]
    images = np.where(mask[..., None, None], rng.normal(size=(b, t, 21, 21)), 0).astype(np.float32)
    dt = np.cumsum(rng.uniform(0, 1, (b, t)), axis=1).astype(np.float32)
    variables = _init(model, images, dt, mask)
    step_mask = mask[:, 2:]

    def loss(params, rows):
        (logits, _), upd = model.apply({**variables, "params": params}, images, dt, mask, train=True,
                                       mutable=["batch_stats"], cnn_rows=rows)
        return jnp.sum(jnp.where(step_mask[..., None], logits, 0) ** 2), (logits, upd["batch_stats"])

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (v0, (l0, s0)), g0 = grad(variables["params"], None)
    scale = max(float(jnp.abs(y).max()) for y in jax.tree_util.tree_leaves(g0))
    for rows in (cnn_rows_for(model, mask, min_bucket=1), cnn_rows_for(model, mask, groups=2, min_bucket=1)):
        assert rows in ((1, 24), (2, 16))  # 23 of 40 images valid, in 3s; the fuller block: 16 of 20, in 2s
        (v, (lg, s)), g = grad(variables["params"], rows)
        np.testing.assert_allclose(np.asarray(lg)[step_mask], np.asarray(l0)[step_mask], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v, v0, rtol=1e-5)
        for x, y in zip(jax.tree_util.tree_leaves((g, s)), jax.tree_util.tree_leaves((g0, s0))):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale)


def test_jit_parity():
    rng = np.random.default_rng(1)
    model = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8)
    args = (rng.normal(size=(2, 8, 21, 21)).astype(np.float32), np.zeros((2, 8), np.float32), np.ones((2, 8), bool))
    variables = _init(model, *args)
    eager = model.apply(variables, *args)[0]
    jitted = jax.jit(lambda v, *a: model.apply(v, *a)[0])(variables, *args)
    assert np.allclose(eager, jitted, atol=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy_and_weights():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(5, 6, 4)))
    labels = jnp.asarray(rng.integers(0, 4, 5))
    mask = jnp.asarray(rng.random((5, 6)) > 0.3)
    ce = sequence_loss(logits, labels, mask, "ce")
    assert float(sequence_loss(logits, labels, mask, "focal", gamma=0.0)) == pytest.approx(float(ce), rel=1e-6)
    assert float(sequence_loss(logits, labels, mask, "focal", gamma=2.0)) < float(ce)
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])
    wf = sequence_loss(logits, labels, mask, "weighted_focal", weights=jnp.ones(4), gamma=2.0)
    assert float(wf) == pytest.approx(float(sequence_loss(logits, labels, mask, "focal", gamma=2.0)), rel=1e-6)
    ones = jnp.ones(4)
    assert float(sequence_loss(logits, labels, mask, "weighted_ce", weights=ones)) == pytest.approx(float(ce), rel=1e-6)


def test_sequence_losses_against_a_direct_computation():
    """Every loss kind, per-step labels, class weights and padding rows against the formulas written out in
    NumPy: sum over valid steps of w_y (1 - p_y)^gamma (-log p_y), averaged over the sequences that count;
    logits at padded steps and in padding rows change nothing."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 5, 3)) * 2
    labels = rng.integers(0, 3, 4)
    per_step = rng.integers(0, 3, (4, 5))
    mask = rng.random((4, 5)) > 0.3
    mask[:, 0] = True
    weights = np.array([0.5, 2.0, 3.0])
    seq_weight = np.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for lab in (labels, per_step):
        y = np.broadcast_to(lab[:, None], (4, 5)) if lab.ndim == 1 else lab
        lp = np.take_along_axis(logp, y[..., None], -1)[..., 0]
        for kind, gamma in (("ce", 2.0), ("weighted_ce", 2.0), ("focal", 2.0), ("focal", 0.7), ("weighted_focal", 1.5)):
            term = -lp * (1 - np.exp(lp)) ** (gamma if "focal" in kind else 0.0)
            term = term * (weights[y] if kind.startswith("weighted") else 1.0)
            want = (np.where(mask, term, 0.0).sum(1) * seq_weight).sum() / seq_weight.sum()
            noisy = np.where(mask[..., None], logits, 1e3 * rng.normal(size=logits.shape))  # padded steps
            noisy[3] = 50.0 * rng.normal(size=(5, 3))  # the padding row
            got = sequence_loss(jnp.asarray(noisy, jnp.float32), jnp.asarray(lab), jnp.asarray(mask), kind,
                                jnp.asarray(weights, jnp.float32), gamma, jnp.asarray(seq_weight, jnp.float32))
            assert float(got) == pytest.approx(want, rel=1e-5), (kind, gamma, lab.ndim)


def test_time_differences_are_days_since_the_first_image():
    """`dt` (the LSTM's extra inputs) is each valid epoch's MJD minus the sequence's first, 0 at padding."""
    from rcnn.data import prepare_inputs

    mjd = np.array([[57070.1, 57070.2, 57071.15, 57073.0, np.nan], [57075.0, 57075.07, 57076.0, 57077.5, 57080.25]])
    mask = np.isfinite(mjd)
    out = prepare_inputs(TrainConfig(), mask, mjd, np.full(mjd.shape, 100.0), np.full(mjd.shape, 25.0),
                         stamps=np.full(mjd.shape + (21, 21), 100.0))
    want = np.where(mask, mjd - mjd[:, :1], 0.0)
    np.testing.assert_allclose(out["dt"], want, atol=1e-4)
    assert out["dt"].dtype == np.float32 and (out["images"][~mask] == 0).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_is_finite_on_confident_steps(gamma):
    """A step predicted with a logit margin of 20 (p rounds to 1 in float32): the focal loss's gradient is
    finite (it was NaN for gamma < 1, which made the next update's parameters NaN) and at gamma = 0 equals
    cross-entropy's."""
    logits = jnp.array([[[20.0, 0.0, 0.0], [0.5, 0.2, 0.0]]])
    labels, mask = jnp.array([0]), jnp.ones((1, 2), bool)
    grad = jax.grad(lambda x: sequence_loss(x, labels, mask, "focal", gamma=gamma))(logits)
    assert bool(jnp.isfinite(grad).all()), grad
    if gamma == 0.0:
        ce = jax.grad(lambda x: sequence_loss(x, labels, mask, "ce"))(logits)
        np.testing.assert_allclose(grad, ce, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("model", ["rcnn", "lc", "dmdt"])
def test_training_separates_two_classes(dataset, tmp_path, model):
    cfg = TrainConfig(model=model, iterations=100, eval_every=50, **TINY)
    result = train(dataset, tmp_path / "run", cfg, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [50, 100]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert result["val_accuracy"] >= 0.8, result  # chance is 0.5
    assert (tmp_path / "run" / "config.yaml").exists()
    assert any((tmp_path / "run" / "checkpoints" / "best").iterdir())
    _check_training_figure(tmp_path / "run")


def _check_training_figure(run: Path) -> None:
    """`training.png` exists and its curves are metrics.jsonl's: losses, the kept checkpoint, accuracy, speed."""
    import matplotlib.pyplot as plt

    from rcnn.curves import draw_training_curves, kept_evaluation

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [int(p.name) for p in (run / "checkpoints" / "best").iterdir() if p.name.isdigit()]
    assert kept == [kept_evaluation(rows)["step"]]  # the step whose checkpoint train kept
    png = plt.imread(run / "training.png")
    assert png.ndim == 3 and png.shape[1] > 2 * png.shape[0] > 200
    assert not (run / "training.png.tmp").exists()
    fig = draw_training_curves(run)
    loss_ax, acc_ax, speed_ax = fig.axes
    train_line, val_line, kept_line = loss_ax.lines
    assert list(train_line.get_xdata()) == [r["step"] for r in rows]
    assert list(train_line.get_ydata()) == [r["train_loss"] for r in rows]
    assert list(val_line.get_ydata()) == [r["val_loss"] for r in rows]
    assert kept_line.get_xdata()[0] == kept[0]
    assert list(acc_ax.lines[0].get_ydata()) == [r["val_accuracy"] for r in rows]
    assert list(speed_ax.lines[0].get_ydata()) == [r["seq_per_s"] for r in rows]
    plt.close(fig)


def test_training_figure_reports_a_damaged_metrics_log(tmp_path):
    from rcnn.curves import draw_training_curves, kept_evaluation, write_training_figure

    def kept(*losses):
        found = kept_evaluation([{"step": i, "val_loss": v} for i, v in enumerate(losses)])
        return None if found is None else found["step"]
    assert kept(3.0, 2.0, 2.0, float("nan"), 1.5, 1.7) == 4
    assert kept(float("nan")) is None
    assert kept(1 + 1e-9, 1 + 5e-10) == 0  # train compares with the kept loss stored in float32 (1.0)

    assert write_training_figure(tmp_path) is None and not (tmp_path / "training.png").exists()  # no evaluation yet
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "train_loss": 1.0, "val_loss": 2.0}\n{"step": 10, "tra\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        draw_training_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "train_loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 lacks \['val_loss'\]"):
        draw_training_curves(tmp_path)


def _at_step(monkeypatch, n: int, action) -> None:
    """`rcnn.train.make_functions` patched so that its train step calls `action()` before state step `n`."""
    import rcnn.train as rt

    real = rt.make_functions

    def patched(*a, **k):
        train_step, eval_step = real(*a, **k)

        def step(state, batch, key, cnn_rows=None):
            if int(state["step"]) == n:
                action()
            return train_step(state, batch, key, cnn_rows)
        return step, eval_step
    monkeypatch.setattr(rt, "make_functions", patched)


def _resumed_as_uninterrupted(tmp_path, resumed: dict, ref: dict) -> None:
    """`tmp_path/run`, stopped and resumed, returned (`resumed`) and logged what the uninterrupted
    `tmp_path/ref` did (`ref`): losses and accuracy exactly, timings aside."""
    for k in ("train_loss", "val_loss", "val_accuracy"):
        assert resumed[k] == ref[k], k
    a, b = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("ref", "run"))
    assert [(x["step"], x["train_loss"], x["val_loss"]) for x in a] == [(x["step"], x["train_loss"], x["val_loss"]) for x in b]


def _die():
    raise KeyboardInterrupt  # a kill with no signal path: nothing after it runs


def test_resume_after_a_kill_is_exact(dataset, tmp_path, monkeypatch):
    cfg = TrainConfig(iterations=12, eval_every=4, cell="gru", loss="focal", **TINY)
    ref = train(dataset, tmp_path / "ref", cfg, progress=False)
    _at_step(monkeypatch, 6, _die)  # killed between checkpoints (saved at 4)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "run", cfg, progress=False)
    monkeypatch.undo()
    _resumed_as_uninterrupted(tmp_path, train(dataset, tmp_path / "run", cfg, progress=False), ref)
    _check_training_figure(tmp_path / "run")  # redrawn from the log as it continued, not the killed one
    (tmp_path / "ref" / "training.png").unlink()  # a finished run made before the figure existed gets one
    assert train(dataset, tmp_path / "ref", cfg, progress=False) == ref
    _check_training_figure(tmp_path / "ref")


@pytest.fixture(scope="module")
def uninterrupted_12(dataset, tmp_path_factory):
    """An uninterrupted run of 12 steps, evaluated every 4 (the reference of the kill tests below), and its result."""
    cfg = TrainConfig(iterations=12, eval_every=4, **TINY)
    run = tmp_path_factory.mktemp("ref12") / "ref"
    return cfg, run, train(dataset, run, cfg, progress=False)


def test_a_kill_between_the_last_saves_leaves_both_checkpoints_final(dataset, uninterrupted_12, tmp_path, monkeypatch):
    """Killed at the final evaluation after `best` was saved and before `last`, with a row of metrics.jsonl
    torn as well: the rerun (nothing left to train) repairs `last` from `best` and reads the log (`last`
    stayed at step 8 for good, and a torn row stopped every rerun, "line 4 is not JSON")."""
    import shutil

    import orbax.checkpoint as ocp

    from rcnn.inference import Classifier

    cfg, ref_run, ref = uninterrupted_12
    shutil.copytree(ref_run, tmp_path / "ref")
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 12 and Path(str(self.directory)).name == "last":
            raise KeyboardInterrupt
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "run", cfg, progress=False)
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in (checkpoints / "best").iterdir()] == ["12"]  # step 12 improved: saved to best
    assert [p.name for p in (checkpoints / "last").iterdir()] == ["8"]
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 16, "train_')
    assert train(dataset, tmp_path / "run", cfg, progress=False)["step"] == 12
    last = Classifier(tmp_path / "run", checkpoint="last")
    assert last.step == 12 and jax.tree_util.tree_all(jax.tree_util.tree_map(
        np.array_equal, last.variables, Classifier(ref_run, checkpoint="last").variables))
    _resumed_as_uninterrupted(tmp_path, train(dataset, tmp_path / "run", cfg, progress=False), ref)


@pytest.mark.parametrize("where", ["before the checkpoints", "between best and last", "after both"])
def test_a_kill_while_an_evaluation_is_saved_resumes_exactly(dataset, uninterrupted_12, tmp_path, monkeypatch, where):
    """Killed with the evaluation of step 8 logged but not saved; saved to `best` (it improved) and not to
    `last`, its temporary directory half written; or saved to both: the rerun goes on (from step 4 or 8),
    logs each evaluation once, as an uninterrupted run does, and leaves no temporary directory. (Before,
    the second case failed on every rerun, "Checkpoint for step 8 already exists", and the third lost the
    row of step 8: it was logged after the checkpoints.)"""
    import shutil

    import orbax.checkpoint as ocp

    cfg, ref_run, ref = uninterrupted_12
    shutil.copytree(ref_run, tmp_path / "ref")
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        folder = Path(str(self.directory))
        if step == 8 and where == "after both" and folder.name == "last":
            real_save(self, step, *args, **kwargs)
            self.wait_until_finished()
            raise KeyboardInterrupt
        if step == 8 and (where == "before the checkpoints" or folder.name == "last"):
            (folder / "8.orbax-checkpoint-tmp").mkdir()  # a save cut off
            raise KeyboardInterrupt  # nothing after it runs
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "run", cfg, progress=False)
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    steps = {d: sorted(p.name for p in (checkpoints / d).iterdir()) for d in ("best", "last")}
    if where == "between best and last":  # step 8 improved: saved to best (the case this test is for)
        assert steps == {"best": ["8"], "last": ["4", "8.orbax-checkpoint-tmp"]}
    elif where == "after both":
        assert steps == {"best": ["8"], "last": ["8"]}
    else:
        assert steps == {"best": ["4", "8.orbax-checkpoint-tmp"], "last": ["4"]}
    _resumed_as_uninterrupted(tmp_path, train(dataset, tmp_path / "run", cfg, progress=False), ref)
    assert not list(checkpoints.rglob("*orbax-checkpoint-tmp*"))


def test_a_stop_signal_saves_the_step_in_flight_and_the_resumed_run_logs_the_same(dataset, tmp_path, monkeypatch):
    """SIGTERM mid-interval: the step in flight finishes and is saved with the interval's losses; the rerun
    logs what an uninterrupted run does (a kill without the signal path loses the steps since the last
    evaluation: the test above)."""
    import signal

    import rcnn.train as rt

    cfg = TrainConfig(iterations=12, eval_every=4, **TINY)
    ref = train(dataset, tmp_path / "ref", cfg, progress=False)
    _at_step(monkeypatch, 6, lambda: signal.raise_signal(signal.SIGTERM))  # as `kill` or a time limit would
    handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # as a command started from a shell has them (a background job's SIGINT is ignored: it is left so)
        with pytest.raises(rt.Interrupted, match=r"run: stopped by SIGTERM after step 7, which is saved") as stop:
            train(dataset, tmp_path / "run", cfg, progress=False)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL is signal.getsignal(signal.SIGINT)  # put back
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert (stop.value.signum, stop.value.step) == (signal.SIGTERM, 7)
    saved = json.loads((tmp_path / "run" / "checkpoints" / rt.INTERVAL).read_text())
    assert (saved["step"], len(saved["losses"]), saved["seqs"]) == (7, 3, 3 * cfg.batch_size)  # steps 5-7
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "last").iterdir() if p.name.isdigit()) == ["7"]
    assert not (tmp_path / "run" / "train.lock").exists()
    monkeypatch.undo()
    _at_step(monkeypatch, 7, _die)  # the resumed run is killed before its next evaluation
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "run", cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / rt.INTERVAL).exists()  # still there for the next resume
    monkeypatch.undo()
    _resumed_as_uninterrupted(tmp_path, train(dataset, tmp_path / "run", cfg, progress=False), ref)
    assert not (tmp_path / "run" / "checkpoints" / rt.INTERVAL).exists()


def test_a_dead_input_worker_ends_the_batches_only_after_a_stop_signal_or_into_a_failure_list():
    from rcnn.train import _until_stopped

    def batches():
        yield 1
        raise RuntimeError("an input worker process died")
    assert list(_until_stopped(batches(), caught=[15])) == [1]  # killed by the scheduler's SIGTERM as well
    with pytest.raises(RuntimeError, match="worker process died"):
        list(_until_stopped(batches(), caught=[]))
    failed = []
    assert list(_until_stopped(batches(), caught=[], failed=failed)) == [1]
    assert [str(e) for e in failed] == ["an input worker process died"]


def test_a_failed_input_process_saves_the_step_and_the_rerun_logs_the_same(dataset, tmp_path, monkeypatch):
    """An input process killed (e.g. for memory) mid-interval: the steps done are saved as on a stop signal,
    the error says so, and the rerun logs what an uninterrupted run does."""
    import rcnn.train as rt
    from rcnn.data import InputWorkerDied

    cfg = TrainConfig(iterations=8, eval_every=4, **TINY)
    ref = train(dataset, tmp_path / "ref", cfg, progress=False)
    real = rt.ReadAhead

    class Dying(real):
        def __next__(self):
            step, batch = super().__next__()
            if step == 6:
                raise InputWorkerDied("an input worker process died (out of memory?)")
            return step, batch
    monkeypatch.setattr(rt, "ReadAhead", Dying)
    failed = re.escape(f"run: reading the training batches of {dataset} failed after step 6, which is saved "
                       "(InputWorkerDied: an input worker process died (out of memory?))")
    with pytest.raises(rt.InputFailed, match=failed):
        train(dataset, tmp_path / "run", cfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "last").iterdir() if p.name.isdigit()) == ["6"]
    interval = (tmp_path / "run" / "checkpoints" / rt.INTERVAL).read_text()
    assert json.loads(interval)["step"] == 6
    # failing again at the rerun's first batch: the same error, the saved step left as it was (it tried to save
    # step 6 again, which orbax refused: "Checkpoint for step 6 already exists")
    with pytest.raises(rt.InputFailed, match=failed):
        train(dataset, tmp_path / "run", cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / rt.INTERVAL).read_text() == interval
    monkeypatch.undo()
    _resumed_as_uninterrupted(tmp_path, train(dataset, tmp_path / "run", cfg, progress=False), ref)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_to_rcnn_train_and_its_input_workers_stops_it_and_the_rerun_goes_on(dataset, tmp_path, name,
                                                                                     signal_command):
    """A real signal to the command's process group: a terminal's Ctrl-C (the workers ignore it) or a batch
    scheduler's SIGTERM (it kills the workers: the step is saved all the same)."""
    import signal

    sig = getattr(signal, name)
    run = tmp_path / "run"
    args = ["train", str(dataset), "--model", "lc", "--no-progress", "--out", str(run),
            *(f"--set={k}={v}" for k, v in TINY.items())]
    metrics = run / "metrics.jsonl"
    status, err, _ = signal_command("rcnn.cli", args + ["--set=iterations=100000", "--set=eval_every=7",
                                                        "--set=loader_workers=1"],
                                    lambda: metrics.exists() and bool(metrics.read_text()), sig, poll_s=0.2)
    assert status == 128 + sig, err[-2000:]
    assert "Traceback" not in err and f"stopped by {name} after step" in err, err[-2000:]
    step = int(err.split("after step ")[1].split(",")[0])
    assert step >= 7 and [p.name for p in (run / "checkpoints" / "last").iterdir() if p.name.isdigit()] == [str(step)]
    assert (run / "checkpoints" / "interval.json").exists() == (step % 7 != 0)
    assert not (run / "train.lock").exists()
    more = subprocess.run([sys.executable, "-m", "rcnn.cli", *args, f"--set=iterations={step + 3}",
                           "--set=eval_every=7", "--set=loader_workers=1"], capture_output=True, text=True)
    assert more.returncode == 0 and f"step {step + 3}," in more.stdout, more.stderr[-2000:]


def _copy_with(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_inputs_follow_eq_4(dataset, tmp_path):
    """`read` gives asinh((image - sky) x 10^((zp_ref - zp) / 2.5) / flux_scale), zp_ref the field's first
    exposure's (`conditions/zero_point_ref`), computed here in float64; sentinel pixels and padded epochs 0."""
    def mark(f):
        s = f["stamps"][5]
        s[2, 4, 4] = -9999.0  # a real HiTS sentinel
        f["stamps"][5] = s
        m = f["mask"][6]
        m[-3:] = False
        f["mask"][6] = m
    path = _copy_with(dataset, tmp_path / "marked.h5", mark)
    cfg = TrainConfig(**TINY)
    idx = np.array([6, 5, 0])
    got = SequenceData(path, cfg).read(idx)["images"]
    with h5py.File(path) as f:
        t = got.shape[1]
        stamps, mask = f["stamps"][()][idx, :t].astype(np.float64), f["mask"][()][idx, :t]
        sky, zp = f["conditions/sky_adu"][()][idx, :t], f["conditions/zero_point"][()][idx, :t]
        zp_ref = f["conditions/zero_point_ref"][()][idx, None]
    expect = np.arcsinh((stamps - sky[..., None, None]) * 10 ** ((zp_ref - zp) / 2.5)[..., None, None]
                        / cfg.flux_scale_adu)
    expect[stamps <= -1000] = 0.0
    expect[~mask] = 0.0
    assert got.dtype == np.float32 and (~mask).sum() >= 3 and got[1, 2, 4, 4] == 0.0
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=2e-6)


def test_file_slots_that_cannot_be_allocated_leave_nothing(tmp_path, monkeypatch):
    """No room in /dev/shm and a disk that fills while the slot files are made (or cannot allocate them):
    no slots (the results are pickled instead) and no slot file or folder left in the temp directory."""
    import errno
    import tempfile

    import rcnn.data

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(rcnn.data, "_shm_room", lambda nbytes: False)
    made = rcnn.data._make_slots(3, 4096)
    assert [Path(s.name).name for s in made] == ["slot0", "slot1", "slot2"]
    made[1].buf[:4] = b"abcd"
    assert rcnn.data._open_slot(made[1].name).buf[:4] == b"abcd"  # what an input process sees
    for s in made:
        s.close()
        s.unlink()
    assert list(tmp_path.iterdir()) == []
    calls = []
    real = os.posix_fallocate

    def fills_up(fd, offset, size):
        calls.append(size)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", fills_up)
    assert rcnn.data._make_slots(4, 4096) == [] and len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_read_ahead_in_processes_gives_the_same_batches(dataset, tmp_path):
    """Training batches and evaluation batches read by input processes equal those read in a thread and
    those computed directly; a bad object's error reaches the consumer at its batch."""
    from multiprocessing.shared_memory import SharedMemory

    from rcnn.data import ReadAhead, loader_workers, step_batch, train_batch

    cfg = TrainConfig(**TINY)
    data = SequenceData(dataset, cfg)
    direct = [train_batch(data, cfg, step) for step in range(3, 7)]
    for workers in (0, 2):
        with ReadAhead(data, step_batch, range(3, 7), workers, ahead=2) as reader:
            got = list(reader)
        for block in getattr(reader, "_slots", []):  # the processes' shared-memory slots are removed
            with pytest.raises(FileNotFoundError):
                SharedMemory(block.name)
        assert [step for step, _ in got] == [3, 4, 5, 6]
        for (_, batch), want in zip(got, direct):
            assert batch.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(batch[k], want[k])
    import rcnn.data

    with pytest.MonkeyPatch.context() as mp:  # no room in /dev/shm (Docker's 64 MB): files in the temp directory
        mp.setattr(rcnn.data, "_shm_room", lambda nbytes: False)
        with ReadAhead(data, step_batch, range(3, 7), 2, ahead=2) as reader:
            assert reader._slots and all(isinstance(s, rcnn.data.FileSlot) for s in reader._slots)
            folder = Path(reader._slots[0].name).parent
            got = list(reader)
        assert [step for step, _ in got] == [3, 4, 5, 6] and not folder.exists()  # the slot files are removed
        for (_, batch), want in zip(got, direct):
            for k in want:
                np.testing.assert_array_equal(batch[k], want[k])
        mp.setattr(rcnn.data, "_room", lambda folder, nbytes: False)  # no room there either: pickled instead
        with ReadAhead(data, step_batch, range(3, 5), 1, ahead=2) as reader:
            assert reader._slots == []
            for (_, batch), want in zip(reader, direct):
                np.testing.assert_array_equal(batch["images"], want["images"])
    with ReadAhead(data, step_batch, range(3, 9), 1, ahead=2) as reader:  # its process killed (for memory)
        next(reader)
        import multiprocessing
        import signal

        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(rcnn.data.InputWorkerDied, match="an input worker process died"):
            list(reader)
    thread, procs = (list(data.batches("train", 40, workers=w)) for w in (0, 2))
    assert len(thread) == len(procs) == -(-len(data.indices("train")) // 40)
    for a, b in zip(thread, procs):
        np.testing.assert_array_equal(a["images"], b["images"])

    def poison(f):
        s = f["stamps"][1]
        s[0, 3, 3] = np.nan
        f["stamps"][1] = s
    bad = SequenceData(_copy_with(dataset, tmp_path / "nan.h5", poison), cfg)
    with pytest.raises(DatasetError, match="'stamps' of object 1 is not finite at epoch 0"):
        list(bad.batches(["train", "validation", "test"][bad.split[1]], 40, workers=1))
    assert loader_workers(-1, "cpu") == 0 and loader_workers(-1, "gpu", cores=16) == 8
    assert loader_workers(-1, "gpu", cores=2) == 1 and loader_workers(3, "cpu") == 3
    with pytest.raises(ValueError, match="loader_workers must be"):
        TrainConfig(loader_workers=-2)


def test_a_second_writer_of_a_run_or_dataset_stops_at_once(dataset, tmp_path):
    from simulator.lock import LockedError, exclusive

    run = tmp_path / "run"
    run.mkdir()
    with exclusive(run / "train.lock", "the first run"):  # as a running `rcnn train` holds it
        with pytest.raises(LockedError, match=f"run directory {run} is being written by another process"):
            train(dataset, run, TrainConfig(iterations=2, **TINY), progress=False)
    assert list(run.iterdir()) == [run / "train.lock"]  # the holder's lock, and nothing written
    sidecar = dataset.with_name(dataset.name + ".photometry-lock")
    with exclusive(sidecar, "a running photometry", remove=True):
        with pytest.raises(LockedError, match=r"\(photometry\) is being written by another process"):
            run_photometry(dataset, progress=False)
        SequenceData(dataset, TrainConfig(**TINY)).read(np.arange(4))  # readers are not locked out
    assert not sidecar.exists() and not dataset.with_name(dataset.name + ".photometry-tmp").exists()


def test_bad_config_values_name_the_key(tmp_path):
    from rcnn.config import load_config

    with pytest.raises(FileNotFoundError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- iterations\n- 5\n")
    with pytest.raises(ValueError, match="list.yaml: expected a mapping of config keys, got list"):
        load_config(tmp_path / "list.yaml")

    assert load_config(sets=["learning_rate=1e-4", "batch_size=8"]).learning_rate == 1e-4  # YAML 1.1: a string
    for item, message in (("iterations=abc", "iterations must be an integer; got 'abc'"),
                          ("augment=maybe", "augment must be true or false; got 'maybe'"),
                          ("cell=foo", "cell must be one of ('lstm', 'gru'); got cell='foo'"),
                          ("cell=[", "--set cell=[: not valid YAML at line 1, column 2"),
                          ("batch_size=0", "must be >= 1; got iterations=30000, batch_size=0, eval_every=500"),
                          ("rnn_units=0", "rnn_units, eval_batches must be >= 1; got conv_filters=64, dense_units=1024, "
                                          "rnn_units=0"),  # a JAX traceback before
                          ("bn_momentum=2", "bn_momentum must be in [0, 1); got bn_momentum=2.0"),
                          ("flux_scale_adu=0", "flux_scale_adu must be > 0"),
                          # trained to NaN losses, or on inputs all 0, with exit status 0
                          ("learning_rate=inf", "learning_rate must be a finite number, got inf"),
                          ("flux_scale_adu=inf", "flux_scale_adu must be a finite number, got inf"),
                          ("focal_gamma=nan", "focal_gamma must be a finite number, got nan"),
                          ("context=123", "context: 123 must be a list or comma-separated string"),  # a TypeError
                          # the run started, then its input failed "after step 0 ... rerun the same command"
                          ("seed=-1", "seed must be in [0, 2**32); got seed=-1"),
                          ("seed=5000000000", "seed must be in [0, 2**32)"),  # JAX would keep its low 32 bits
                          ("batch_size=100000000000000000000000", "sizes and counts must be < 2**31"),
                          ("loader_workers=100000000000000000000000", "loader_workers must be in [0, 256]")):
        with pytest.raises(ValueError) as err:
            load_config(sets=[item])
        assert message in str(err.value)


def test_bad_config_file_values_name_the_file(tmp_path):
    """A bad key or value from `--config FILE` names the file (it named only the key); one from `--set`, or a
    combination the file alone does not make, does not."""
    from rcnn.config import load_config

    cfg = tmp_path / "cfg.yaml"
    for text, message in (("iterations: ten\n", "iterations must be an integer; got 'ten'"),
                          ("learning_rate: -1\n", "learning_rate must be > 0; got learning_rate=-1.0"),
                          ("iteration: 5\n", "unknown config key(s) ['iteration']")):
        cfg.write_text(text)
        with pytest.raises(ValueError) as err:
            load_config(cfg)
        assert str(err.value).startswith(f"{cfg}: {message}"), err.value
    cfg.write_text("max_steps: 2\nn_w: 2\n")
    assert load_config(cfg, ["iterations=5"]).max_steps == 2
    for sets, message in ((["iterations=ten"], "iterations must be an integer; got 'ten'"),
                          (["n_w=3"], "need 1 <= n_w <= max_steps; got n_w=3, max_steps=2")):
        with pytest.raises(ValueError) as err:
            load_config(cfg, sets)
        assert str(err.value).startswith(message), err.value


def test_commands_that_fail_leave_nothing_behind(dataset, tmp_path):
    text = tmp_path / "text.h5"
    text.write_text("not HDF5")
    (tmp_path / "empty.h5").touch()
    (tmp_path / "folder").mkdir()
    out = tmp_path / "out"
    for args, message in (
            (["evaluate", str(tmp_path / "norun"), "--data", str(dataset), "--out", str(out / "report")],
             "config.yaml: not found"),
            (["classify", str(tmp_path / "norun"), str(dataset), "--out", str(out / "probs")], "config.yaml: not found"),
            (["train", str(dataset), "--set", "iterations=many", "--out", str(out / "run")],
             "iterations must be an integer; got 'many'"),
            (["train", str(text), "--out", str(out / "run")], "text.h5: cannot be read as an HDF5 dataset"),
            (["baseline", str(text), "--out", str(out / "forest")], "text.h5: cannot be read as an HDF5 dataset"),
            # were "dataset not found" and HDF5's "file signature not found"
            (["train", str(tmp_path / "folder"), "--out", str(out / "run")], "folder: is a directory, not a dataset"),
            (["baseline", str(tmp_path / "empty.h5"), "--out", str(out / "forest")],
             "empty.h5: is empty, not an HDF5 dataset"),
            (["baseline", str(dataset), "--max-epochs", "0", "--out", str(out / "forest")],
             "argument --max-epochs: must be >= 3, got 0"),
            (["finetune", str(tmp_path / "norun"), str(dataset), "--per-class", "0", "--out", str(out / "ft")],
             "argument --per-class: must be >= 1, got 0"),
            # an --out under a file: "[Errno 17] File exists", after the work
            *[([*args, "--out", str(text / "sub")], f"{text}: is not a directory, so --out {text / 'sub'} cannot be written")
              for args in (["evaluate", str(tmp_path / "norun"), "--data", str(dataset)],
                           ["classify", str(tmp_path / "norun"), str(dataset)], ["train", str(dataset)],
                           ["baseline", str(dataset)], ["finetune", str(tmp_path / "norun"), str(dataset)])]):
        proc = subprocess.run([sys.executable, "-m", "rcnn.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_bad_datasets_get_clear_errors(dataset, tmp_path):
    cfg = TrainConfig(**TINY)
    no_mask = _copy_with(dataset, tmp_path / "a.h5", lambda f: f.__delitem__("mask"))
    with pytest.raises(DatasetError, match="a.h5: missing dataset.*mask"):
        SequenceData(no_mask, cfg)
    with pytest.raises(DatasetError, match="run `photometry`"):
        _copy_with(dataset, tmp_path / "b.h5", lambda f: f.__delitem__("photometry"))
        SequenceData(tmp_path / "b.h5", TrainConfig(model="lc", **TINY))
    with pytest.raises(DatasetError, match=r"expected \(N, T, 25, 25\)"):
        SequenceData(dataset, cfg, stamp_size=25)

    def poison(f):
        s = f["stamps"][3]
        s[1, 5, 5] = np.nan
        f["stamps"][3] = s
    bad = _copy_with(dataset, tmp_path / "c.h5", poison)
    data = SequenceData(bad, cfg)
    with pytest.raises(DatasetError, match="'stamps' of object 3 is not finite at epoch 1"):
        data.read(np.array([2, 3]))

    def no_time(f):  # a NaN time made every loss NaN without a word
        t = f["mjd"][4]
        t[2] = np.nan
        f["mjd"][4] = t
    data = SequenceData(_copy_with(dataset, tmp_path / "d.h5", no_time), cfg)
    with pytest.raises(DatasetError, match=r"'mjd' of object 4 is not finite at epoch 2$"):
        data.read(np.array([4, 5]))
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "train", str(no_mask), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "missing dataset" in proc.stderr and "Traceback" not in proc.stderr


def _regroup(name, make):
    """An edit for `_copy_with`: dataset `name` replaced by `make(old values)` (an array or "group")."""
    def edit(f):
        new, attrs = make(f[name][()]), dict(f[name].attrs)
        del f[name]
        if isinstance(new, str):
            f.create_group(name)
        else:
            f[name] = new
            f[name].attrs.update(attrs)
    return edit


def _set_mask(rows, valid):
    """An edit for `_copy_with`: objects `rows` get the mask row `valid` (a function of the row length)."""
    def edit(f):
        m = f["mask"][()]
        m[rows] = valid(m.shape[1])
        f["mask"][...] = m
    return edit


@pytest.mark.parametrize("edit, message", [
    (_regroup("stamps", lambda old: "group"), r"'stamps' is a group; expected numbers"),
    (_regroup("label", lambda old: old + 0.7), r"'label' holds float64; expected integers"),  # was truncated
    (_regroup("conditions/sky_adu", lambda old: old[:, :5]), r"'conditions/sky_adu' has shape \(120, 5\); expected "
                                                              r"\(120, 20\)"),  # a numpy broadcast error
    (_regroup("split", lambda old: old[:-1]), r"'split' has shape \(119,\); expected \(120,\)"),
    (_regroup("mask", lambda old: old.astype(np.int8) * 2), r"'mask'\[0, 0\] = 2; expected true/false"),
    (_set_mask([7], lambda t: np.arange(t) != 2), r"'mask' of object 7 has valid epoch 3 after an invalid one"),
], ids=["group", "float-labels", "sky-shape", "split-shape", "mask-values", "mask-gap"])
def test_malformed_arrays_are_refused_when_opened(dataset, tmp_path, edit, message):
    """Each was a numpy/h5py traceback, or (labels, gaps in the mask) a silently wrong input."""
    bad = _copy_with(dataset, tmp_path / "bad.h5", edit)
    with pytest.raises(DatasetError, match="bad.h5: " + message):
        SequenceData(bad, TrainConfig(**TINY))


def test_negative_light_curve_errors_are_refused(dataset, tmp_path):
    """The light-curve models took a negative flux uncertainty as input without a word."""
    bad = _copy_with(dataset, tmp_path / "bad.h5", _regroup("photometry/lc_flux_err", lambda e: np.where(
        np.arange(e.shape[1]) == 1, -np.abs(e), e)))
    with pytest.raises(DatasetError, match=r"bad.h5: 'photometry/lc_flux_err'\[0, 1\] = -[\d.e+-]+ at a valid epoch"):
        SequenceData(bad, TrainConfig(model="lc", **TINY))
    SequenceData(bad, TrainConfig(**TINY))  # the RCNN does not read them


def test_objects_without_a_step_are_left_out_and_a_split_of_none_is_refused(dataset, tmp_path):
    """An object with fewer than n_w valid epochs has no step to classify: training and evaluation leave
    it out; a split or dataset of only such objects (all masks false trained to a loss of 0.0) is an error."""
    cfg = TrainConfig(**TINY)
    full = SequenceData(dataset, cfg)
    train_idx = full.indices("train")
    short = _copy_with(dataset, tmp_path / "short.h5", _set_mask(train_idx[:3], lambda t: np.arange(t) < cfg.n_w - 1))
    assert list(SequenceData(short, cfg).indices("train")) == list(train_idx[3:])
    none = _copy_with(dataset, tmp_path / "none.h5", _set_mask(slice(None), lambda t: np.zeros(t, bool)))
    with pytest.raises(DatasetError, match=r"none.h5: none of the \d+ objects of its train split has a step \(n_w = 3 "
                                           r"valid epochs; see 'mask'\); `rcnn train` needs"):
        train(none, tmp_path / "run", TrainConfig(**TINY), progress=False)


def test_a_diverging_run_stops_at_its_evaluation(dataset, tmp_path):
    """A learning rate far too high made NaN losses, logged with exit status 0 and evaluated as class 0."""
    from rcnn.curves import read_metrics
    from rcnn.train import Diverged

    cfg = TrainConfig(**{**TINY, "batch_size": 8}, iterations=6, eval_every=2, learning_rate=1e30)
    with pytest.raises(Diverged, match=r"run: training diverged by step 2 \(train_loss nan, val_loss nan\); no "
                                       "checkpoint was kept. Lower learning_rate"):
        train(dataset, tmp_path / "run", cfg, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [2] and np.isnan(rows[0]["val_loss"])
    assert (tmp_path / "run" / "training.png").exists()
    assert not any((tmp_path / "run" / "checkpoints" / "last").iterdir())  # the diverged state is not saved


def test_training_needs_train_and_validation_objects_and_a_run_directory(dataset, tmp_path):
    """Checked before anything compiles: a file of test objects only (as `rcnn import-real` writes) gave
    numpy's "need at least one array to concatenate"; an empty validation split failed at the first
    evaluation, after `eval_every` steps; an --out that is a file gave "[Errno 17] File exists"."""
    def all_test(f):
        f["split"][...] = 2
    only_test = _copy_with(dataset, tmp_path / "test.h5", all_test)
    with pytest.raises(DatasetError, match=r"test.h5: its train split is empty \(objects per split: train 0, "
                                           r"validation 0, test \d+\).*rcnn finetune"):
        train(only_test, tmp_path / "run", TrainConfig(**TINY), progress=False)

    def no_validation(f):
        f["split"][...] = np.where(f["split"][()] == 1, 0, f["split"][()])
    with pytest.raises(DatasetError, match="its validation split is empty"):
        train(_copy_with(dataset, tmp_path / "nv.h5", no_validation), tmp_path / "run", TrainConfig(**TINY),
              progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "train", str(dataset), "--out", str(tmp_path / "file")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "file: exists and is not a directory" in proc.stderr, proc.stderr


BLOCK_SIMULATOR_DEPENDENCIES = """import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"galsim", "sncosmo", "astropy", "photutils", "speclite", "extinction", "dask"}:
            raise ImportError(f"{name} is blocked by this test")
sys.meta_path.insert(0, Block())
"""


def test_network_commands_run_without_the_simulator_dependencies(dataset, tmp_path):
    """`rcnn train|evaluate|classify` only read datasets: they must not import GalSim, sncosmo, astropy, ...
    (start-up time; GPU nodes where only the network's packages are installed)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_SIMULATOR_DEPENDENCIES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.getcwd()])}
    sizes = [f"--set={k}={v}" for k, v in TINY.items()]
    run, cli = tmp_path / "run", [sys.executable, "-m", "rcnn.cli"]
    for args in (["train", str(dataset), "--model", "rcnn", *sizes, "--set=iterations=2", "--set=eval_every=2",
                  "--no-progress", "--out", str(run)],
                 ["evaluate", str(run), "--data", str(dataset), "--out", str(tmp_path / "report")],
                 ["classify", str(run), str(dataset), "--out", str(tmp_path / "probs")]):
        proc = subprocess.run(cli + args, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if args[0] == "train":
            assert f"{run}: kept checkpoint from step 2 (val_loss " in proc.stdout, proc.stdout
            assert f"curves in {run / 'training.png'}" in proc.stdout
    assert (run / "metrics.jsonl").exists() and (tmp_path / "report" / "metrics.json").exists()
    assert (tmp_path / "probs" / "probabilities.csv").exists()
    blocked = subprocess.run([sys.executable, "-c", "import galsim"], env=env, capture_output=True, text=True)
    assert "blocked by this test" in blocked.stderr  # the block itself works


def test_other_options_in_a_used_run_directory_are_refused(dataset, tmp_path):
    """Resuming checks the saved config: other options, fewer iterations than trained, a newer version's keys and
    damaged YAML are refused."""
    train(dataset, tmp_path / "run", TrainConfig(iterations=2, eval_every=2, **TINY), progress=False)
    from rcnn.train import RunError

    with pytest.raises(RunError, match="other options"):
        train(dataset, tmp_path / "run", TrainConfig(iterations=2, eval_every=2, learning_rate=0.1, **TINY), progress=False)
    # a run made before a config key existed (its default then) still resumes
    import yaml

    cfg_file = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(cfg_file.read_text())
    del saved["augment_brightness_mag"]
    cfg_file.write_text(yaml.safe_dump(saved))
    train(dataset, tmp_path / "run", TrainConfig(iterations=3, eval_every=2, **TINY), progress=False)
    # fewer iterations than it has trained: refused (it was accepted, and config.yaml rewritten to say 2)
    with pytest.raises(RunError, match=r"run: this run has trained 3 steps; iterations 2 is fewer.* at least 3"):
        train(dataset, tmp_path / "run", TrainConfig(iterations=2, eval_every=2, **TINY), progress=False)
    assert yaml.safe_load(cfg_file.read_text())["iterations"] == 3
    # a run made by a newer version (a key this one does not know) or a damaged config is named, not resumed
    cfg_file.write_text(yaml.safe_dump({**saved, "a_key_from_the_future": 1}))
    with pytest.raises(RunError, match=r"config.yaml: keys \['a_key_from_the_future'\] are unknown"):
        train(dataset, tmp_path / "run", TrainConfig(iterations=4, eval_every=2, **TINY), progress=False)
    cfg_file.write_text("iterations: [\n")
    with pytest.raises(RunError, match="config.yaml: not valid YAML at line 2"):
        train(dataset, tmp_path / "run", TrainConfig(iterations=4, eval_every=2, **TINY), progress=False)
    # class names edited into something else (a number: a TypeError; a string: one class per letter)
    for names, shown in ((5, "5"), ("abcd", "'abcd'"), (["a", "a"], r"\['a', 'a'\]")):
        cfg_file.write_text(yaml.safe_dump({**saved, "_class_names": names}))
        with pytest.raises(RunError, match=f"config.yaml: _class_names is {shown}; expected the list"):
            train(dataset, tmp_path / "run", TrainConfig(iterations=4, eval_every=2, **TINY), progress=False)
    cfg_file.write_bytes(b"iterations: 4\n# \xff\n")
    with pytest.raises(RunError, match=r"config.yaml: not a UTF-8 text file \(byte 16"):
        train(dataset, tmp_path / "run", TrainConfig(iterations=4, eval_every=2, **TINY), progress=False)


def test_a_run_resumes_only_on_its_dataset_wherever_it_is(dataset, tmp_path, capsys):
    """The run keeps its dataset's fingerprint: other data at the same path is refused, naming both (it resumed
    on it silently), the same data at another path goes on, saying so (it was refused), `photometry` keeps the
    fingerprint, and a run saved without one falls back to the path (and to its classes)."""
    import re
    import shutil

    import yaml

    from rcnn.train import RunError, data_fingerprint

    data, other, run = tmp_path / "data.h5", tmp_path / "other.h5", tmp_path / "run"
    shutil.copyfile(dataset, data)
    cfg = TrainConfig(model="lc", iterations=2, eval_every=2, **TINY)
    train(data, run, cfg, progress=False)
    cfg_file = run / "config.yaml"
    known = yaml.safe_load(cfg_file.read_text())["_data_fingerprint"]
    simulate(SimConfig(classes=("nonvariable", "asteroid"), n_per_class=60, seed=2, progress=False), other)
    unmeasured = data_fingerprint(other)
    run_photometry(other, progress=False)
    assert data_fingerprint(other) == unmeasured != known
    shutil.copyfile(other, data)  # re-simulated at the same path
    with pytest.raises(RunError, match=re.escape(f"this run was trained on {data.resolve()} (dataset fingerprint "
                                                 f"{known}); {data.resolve()} now holds other data (fingerprint "
                                                 f"{unmeasured})")):
        train(data, run, dataclasses.replace(cfg, iterations=4), progress=False)
    train(dataset, run, dataclasses.replace(cfg, iterations=4), progress=False)  # the same data, elsewhere
    assert f"{dataset.resolve()} holds the same data as {data.resolve()}" in capsys.readouterr().err
    saved = yaml.safe_load(cfg_file.read_text())
    assert (saved["_data"], saved["_data_fingerprint"]) == (str(dataset.resolve()), known)
    del saved["_data_fingerprint"]  # as a run saved before fingerprints
    cfg_file.write_text(yaml.safe_dump(saved))
    with pytest.raises(RunError, match=r"other options \{'data': "):
        train(data, run, dataclasses.replace(cfg, iterations=4), progress=False)
    cfg_file.write_text(yaml.safe_dump({**saved, "_class_names": ["supernova", "asteroid"]}))
    with pytest.raises(RunError, match=r"other options \{'classes': \(\['supernova', 'asteroid'\], "
                                       r"\['nonvariable', 'asteroid'\]\)\}"):
        train(dataset, run, dataclasses.replace(cfg, iterations=4), progress=False)


def test_a_checkpoint_that_does_not_fit_the_model_gets_a_clear_error(dataset, tmp_path):
    """A run whose checkpoint holds other parameters than its config.yaml now builds (here: the recurrent cell
    edited from LSTM to GRU; in practice a run saved before the RCNN's convolutions lost their biases, for which
    the message says so)."""
    import yaml

    from rcnn.inference import Classifier
    from rcnn.train import RunError

    train(dataset, tmp_path / "run", TrainConfig(iterations=2, eval_every=2, **TINY), progress=False)
    cfg_file = tmp_path / "run" / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({**yaml.safe_load(cfg_file.read_text()), "cell": "gru"}))
    with pytest.raises(RunError, match=r"checkpoints/best: checkpoint 2 does not fit the model .* config.yaml: "
                                       r"params/\S*(GRU|LSTM)Cell\S* is (absent|\([\d, ]+\)) in the checkpoint and "
                                       r"(absent|\([\d, ]+\)) in the model \(\d+ array\(s\) differ\)") as err:
        Classifier(tmp_path / "run")
    assert "convolution biases" not in str(err.value)  # that hint is for checkpoints that hold them
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "classify", str(tmp_path / "run"), str(dataset), "--out",
                           str(tmp_path / "c")], capture_output=True, text=True)
    # one line: a restore failing part-way left reads in flight, whose "Event loop is closed" tracebacks followed
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not fit" in proc.stderr, proc.stderr


def test_data_parallel_over_two_devices_matches_one(dataset, tmp_path):
    """The batch sharded over 2 (virtual CPU) devices gives the same training as 1 device (global BN, all-reduce),
    with `pack_steps` gathering the valid steps of the whole batch on one device and of each shard on two.
    (While the RCNN's convolutions had biases, whose gradient before batch norm is rounding noise that Adam
    turns into +-learning-rate steps, the two runs' losses differed by up to 2e-4 relative after 4 iterations;
    now by ~3e-7.)"""
    code = ("import json, sys; from rcnn.config import TrainConfig; from rcnn.train import train; import jax; "
            "r = train(sys.argv[1], sys.argv[2], TrainConfig(iterations=4, eval_every=4, batch_size=16, conv_filters=8, "
            "dense_units=16, rnn_units=8), progress=False); "
            "print(json.dumps({**r, 'devices': jax.device_count()}))")
    out = {}
    for n in (1, 2):
        env = {**__import__("os").environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        proc = subprocess.run([sys.executable, "-c", code, str(dataset), str(tmp_path / f"run{n}")], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[2]["devices"] == 2
    assert out[2]["train_loss"] == pytest.approx(out[1]["train_loss"], rel=1e-5)
    assert out[2]["val_loss"] == pytest.approx(out[1]["val_loss"], rel=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_as_one_on_four_devices(dataset, tmp_path):
    """A multi-host run (two `rcnn train` processes joined through `jax.distributed`, two CPU devices each, gloo
    collectives) trains exactly as one process on four devices, and extends (resumes) alike: each process reads
    only its half of every training batch (two devices' shards), with the whole batch's draws. Only process 0 writes the metrics,
    once per evaluation."""
    cli = [sys.executable, "-m", "rcnn.cli", "train", str(dataset), "--no-progress"]
    sets = [f"--set={kv}" for kv in ("eval_every=2", "batch_size=16", "conv_filters=8", "dense_units=16", "rnn_units=8")]

    def run(iterations: int) -> None:
        port = _free_port()
        env1 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        launch = ["--out", str(tmp_path / "multi"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        args = cli + sets + [f"--set=iterations={iterations}"]
        procs = [subprocess.Popen(args + launch + ["--process-id", str(i)], env=env1, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        try:
            outs = [proc.communicate(timeout=300) for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
        for proc, (_, err) in zip(procs, outs):
            assert proc.returncode == 0, err[-3000:]
        env2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        one = subprocess.run(args + ["--out", str(tmp_path / "one")], env=env2, capture_output=True, text=True)
        assert one.returncode == 0, one.stderr[-3000:]

    run(4)
    run(6)  # both extend their finished runs from the last checkpoint
    multi = [json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in multi] == [m["step"] for m in single] == [2, 4, 6]
    for m, s in zip(multi, single):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert m[key] == pytest.approx(s[key], rel=1e-5), (key, m, s)
    saved = yaml.safe_load((tmp_path / "multi" / "config.yaml").read_text())
    assert saved["distributed"] is True
    assert (tmp_path / "multi" / "checkpoints" / "best").is_dir()


def test_multi_host_launch_errors_are_clear(dataset, tmp_path):
    """A multi-host launch JAX cannot complete (no process count given, none to detect) is a clear error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    proc = subprocess.run([sys.executable, "-m", "rcnn.cli", "train", str(dataset), "--out", str(tmp_path / "r"),
                           "--coordinator", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot join a multi-host run" in proc.stderr and "Number of processes" in proc.stderr
    assert "Traceback" not in proc.stderr


_SHARDED_PACKING = """
import json, jax, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from rcnn.config import TrainConfig
from rcnn.models import build_model, cnn_rows_for
from rcnn.train import init_state, make_functions
cfg = TrainConfig(batch_size=8, conv_filters=8, dense_units=16, rnn_units=8, dropout=0.0)
rng = np.random.default_rng(0)
mask = np.arange(12)[None, :] < rng.integers(3, 13, 8)[:, None]
batch = {"mask": mask, "dt": np.cumsum(np.ones((8, 12)), 1).astype(np.float32),
         "label": rng.integers(0, 3, 8).astype(np.int32), "weight": np.ones(8, np.float32),
         "images": np.where(mask[..., None, None], rng.normal(size=(8, 12, 21, 21)), 0).astype(np.float32)}
model = build_model(cfg, 3)
tx = optax.adam(cfg.learning_rate)
train_step, _ = make_functions(model, tx, cfg, np.ones(3, np.float32))
mesh = Mesh(np.array(jax.devices()), ("data",))
shard, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
sharded = jax.device_put(batch, shard)
key = jax.random.PRNGKey(0)
rows = cnn_rows_for(model, mask, jax.device_count(), min_bucket=1)
hlo = train_step.lower(jax.device_put(init_state(model, tx, cfg, batch), replicated), sharded, key, rows).compile().as_text()
loss = {str(r): float(train_step(jax.device_put(init_state(model, tx, cfg, batch), replicated), sharded, key, r)[1])
        for r in (rows, None)}
print(json.dumps({"rows": rows, "loss": loss, "moves": [op for op in ("all-gather", "all-to-all", "collective-permute")
                                                         if op + "(" in hlo or op + "-start(" in hlo]}))
"""


def test_packing_over_two_devices_stays_on_each_shard():
    """With the batch sharded over 2 (virtual CPU) devices, the valid steps are gathered within each shard:
    the compiled train step moves no activations between devices (only all-reduces) and its loss equals
    the loss with the convolutions on every step."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED_PACKING], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"][0] == 2 and out["moves"] == []
    packed, every = out["loss"][str(tuple(out["rows"]))], out["loss"]["None"]
    assert packed == pytest.approx(every, rel=1e-5)


def test_tao_net_options():
    """late fusion keeps shapes; 'add' outputs are the running sum of the per-step outputs; the auxiliary
    per-step head is sown for double supervision."""
    rng = np.random.default_rng(3)
    args = (rng.normal(size=(2, 9, 21, 21)).astype(np.float32), np.zeros((2, 9), np.float32),
            np.arange(9)[None, :] < np.array([[9], [6]]))
    late = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, fusion="late")
    assert late.apply(_init(late, *args), *args)[0].shape == (2, 7, 3)
    last = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8)
    add = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, output="add")
    v = _init(last, *args)
    per_step, step_mask = last.apply(v, *args)
    summed, _ = add.apply(v, *args)  # same parameters: 'add' only changes the output
    expected = np.cumsum(np.where(np.asarray(step_mask)[..., None], np.asarray(per_step), 0.0), axis=1)
    assert np.allclose(summed, expected, atol=1e-5)
    aux = RCNN(n_classes=3, conv_filters=8, dense_units=16, rnn_units=8, aux_head=True)
    va = _init(aux, *args)
    _, inter = aux.apply(va, *args, mutable=["intermediates"])
    (aux_logits,) = jax.tree_util.tree_leaves(inter["intermediates"])
    assert aux_logits.shape == (2, 7, 3)


def test_double_supervision_and_add_train(dataset, tmp_path):
    cfg = TrainConfig(iterations=30, eval_every=15, output="add", aux_loss_weight=0.5, fusion="late", loss="weighted_focal",
                      **TINY)
    train(dataset, tmp_path / "run", cfg, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_rapid_pre_detection_label(tmp_path):
    """Steps before an alert get the extra 'pre_detection' class; the run has it as its last class."""
    from rcnn.data import step_labels

    lab = step_labels(np.array([0, 1, 2]), np.array([5, -1, 0]), n_images=8, n_w=3, pre_class=7)
    # steps end at images 2..7: object 0 is pre-detection while its last image < 5 (steps 0-2)
    assert lab.tolist() == [[7, 7, 7, 0, 0, 0], [1] * 6, [2] * 6]
    path = tmp_path / "sn.h5"
    simulate(SimConfig(classes=("supernova", "nonvariable"), n_per_class=20, seed=4, progress=False), path)
    cfg = TrainConfig(iterations=6, eval_every=3, pre_detection_label=True, **TINY)
    train(path, tmp_path / "run", cfg, progress=False)
    from rcnn.inference import Classifier

    clf = Classifier(tmp_path / "run")
    assert clf.class_names == ["supernova", "nonvariable", "pre_detection"]
    # the logged validation loss is the training loss on the validation split: per-step labels (it was
    # scored against the object's label at every step, a target the model is not trained on)
    from rcnn.data import SequenceData
    from rcnn.inference import predict

    last = Classifier(tmp_path / "run", checkpoint="last")
    p = predict(last, path, split="validation", progress=False)
    data = SequenceData(path, last.cfg)
    target = step_labels(p.labels, data.alert[p.index], data.n_images, cfg.n_w, 2)
    assert (target != p.labels[:, None])[p.step_mask].any()  # pre-detection steps are there to score
    lp = np.log(np.take_along_axis(p.probs, target[..., None], axis=-1)[..., 0])
    val_loss = -np.where(p.step_mask, lp, 0.0).sum(axis=1).mean()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert logged == pytest.approx(val_loss, rel=1e-4)


def test_goto_context_inputs(dataset, tmp_path):
    """Host presence and distance join after the recurrent layer: they change the outputs, and a run trains."""
    model = RCNN(n_classes=2, conv_filters=8, dense_units=16, rnn_units=8, context=True)
    args = (np.zeros((2, 6, 21, 21), np.float32), np.zeros((2, 6), np.float32), np.ones((2, 6), bool))
    ctx0, ctx1 = np.zeros((2, 2), np.float32), np.array([[1.0, 0.3], [1.0, 0.3]], np.float32)
    v = _init(model, *args, ctx0)
    assert not np.allclose(model.apply(v, *args, ctx0)[0], model.apply(v, *args, ctx1)[0])
    result = train(dataset, tmp_path / "run", TrainConfig(iterations=4, eval_every=2, context=True, **TINY), progress=False)
    assert np.isfinite(result["val_loss"])


def test_brightness_augmentation(dataset):
    """Each training sequence's sky-subtracted fluxes (images and light curves) scale by its own factor,
    reproducibly per (seed, step); off by default."""
    from rcnn.data import _transform, train_batch

    for model in ("rcnn", "lc"):
        cfg = TrainConfig(model=model, augment=False, **TINY)
        data = SequenceData(dataset, cfg)
        idx = np.arange(4)
        base, scaled = data.read(idx), data.read(idx, np.array([1.0, 10.0, 0.1, 2.0]))
        key = "images" if model == "rcnn" else "flux"
        raw = np.sinh(base[key]) * cfg.flux_scale_adu  # undo the asinh transform
        expect = _transform(cfg, raw * np.array([1.0, 10.0, 0.1, 2.0]).reshape((4,) + (1,) * (raw.ndim - 1)))
        np.testing.assert_allclose(scaled[key], expect, rtol=1e-4, atol=1e-4)
    cfg = TrainConfig(augment_brightness_mag=2.0, **TINY)
    data = SequenceData(dataset, cfg)
    a, b = train_batch(data, cfg, 3), train_batch(data, cfg, 3)
    np.testing.assert_array_equal(a["images"], b["images"])
    plain = train_batch(data, TrainConfig(**TINY), 3)
    assert not np.allclose(np.abs(a["images"]).sum((1, 2, 3)), np.abs(plain["images"]).sum((1, 2, 3)))
    with pytest.raises(ValueError, match="augment_brightness_mag must be >= 0"):
        TrainConfig(augment_brightness_mag=-1)


def test_bfloat16_mixed_precision(dataset, tmp_path):
    """dtype bfloat16: the convolutions and matmuls compute in bf16, the weights (and Adam's state) stay float32,
    and training follows the float32 run's losses to bf16 precision."""
    from rcnn.inference import Classifier
    from rcnn.models import apply_model

    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(dtype=dtype, iterations=4, eval_every=2, **TINY)
        train(dataset, tmp_path / dtype, cfg, progress=False)
        runs[dtype] = [json.loads(x) for x in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs["float32"], runs["bfloat16"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.01)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.01)
    clf = Classifier(tmp_path / "bfloat16")
    assert {v.dtype for v in jax.tree_util.tree_leaves(clf.variables)} == {jnp.dtype(jnp.float32)}
    batch = SequenceData(dataset, clf.cfg).read(np.arange(2))
    def eqns(jaxpr):  # every equation, inside custom_vjp calls and sub-jaxprs too
        for e in jaxpr.eqns:
            yield e
            for v in e.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                        yield from eqns(getattr(sub, "jaxpr", sub))

    jaxpr = jax.make_jaxpr(lambda v: apply_model(clf.model, v, batch, train=False))(clf.variables)
    heavy = {(e.primitive.name, e.invars[0].aval.dtype) for e in eqns(jaxpr.jaxpr)
             if e.primitive.name in ("conv_general_dilated", "dot_general")}
    bf16 = jnp.dtype(jnp.bfloat16)
    assert heavy == {("conv_general_dilated", bf16), ("dot_general", bf16)}


def test_a_share_of_a_training_batch_is_those_rows_of_it(dataset):
    """A multi-host process's share of a training batch (`rows`) holds exactly those rows of the whole batch,
    augmentation and brightness draws included, and the whole batch's mask."""
    from rcnn.data import train_batch

    for model in ("rcnn", "lc"):
        cfg = TrainConfig(model=model, augment_brightness_mag=1.0, **TINY)
        data = SequenceData(dataset, cfg)
        whole, part = train_batch(data, cfg, 5), train_batch(data, cfg, 5, rows=(8, 24))
        assert set(part) == set(whole) | {"batch_mask"}
        np.testing.assert_array_equal(part.pop("batch_mask"), whole["mask"])
        for k, v in whole.items():
            np.testing.assert_array_equal(part[k], v[8:24], err_msg=k)
    from rcnn.train import _validation_batches, _validation_shares

    whole = list(_validation_batches(data, cfg))  # 12 validation objects: the second share is all padding
    halves = [list(_validation_shares(data, cfg, rows)) for rows in ((0, 16), (16, 32))]
    assert len(whole) == len(halves[0]) == len(halves[1]) >= 1
    for (mask, batch), (mask0, a), (mask1, b) in zip(whole, *halves):
        np.testing.assert_array_equal(mask0, mask)
        np.testing.assert_array_equal(mask1, mask)
        assert set(a) == set(batch)
        for k, v in batch.items():
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), v, err_msg=k)
    from rcnn.data import ReadAhead, step_batch

    with ReadAhead(data, step_batch, [(5, 8, 24), (6, 0, 16)], workers=1, ahead=2) as reader:  # input processes
        for (step, lo, hi), got in reader:
            want = train_batch(data, cfg, step, rows=(lo, hi))
            assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_training_xla_flag_depends_on_the_checked_jaxlib(monkeypatch):
    """`rcnn train` picks YNNPACK reductions and matmuls on the jaxlib it was checked on, all off elsewhere,
    the memory-optimised scheduler for batches of 128 or more on that jaxlib, and leaves a user's own
    settings alone."""
    import importlib.metadata

    from rcnn import cli

    checked = (("0.10.2", "reduce,dot", True), ("0.11.2", "reduce,dot", True), ("0.12.0", "reduce,dot", True),
               ("0.99.0", "", False))
    for jaxlib_version, expected, scheduler in checked:
        for batch in (None, 64, 128, 256):
            monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
            monkeypatch.setattr(importlib.metadata, "version", lambda name, v=jaxlib_version: v)
            cli.use_fast_cpu_flags(batch)
            want = f"--xla_dump_to=/tmp/x {cli.CPU_XLA_FLAG}{expected}"
            if scheduler and batch and batch >= 128:  # big batches: the memory-optimised scheduler
                want += " " + cli.MEMORY_SCHEDULER_FLAG
            assert os.environ["XLA_FLAGS"] == want
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    cli.use_fast_cpu_flags(256, "lc")  # the light-curve model trains faster with XLA's defaults
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_scheduler_type=x")
    cli.use_fast_cpu_flags(256)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_scheduler_type=x"


def test_installed_jaxlib_accepts_the_training_flags():
    """The flags `rcnn train` sets for the installed jaxlib compile and run a step of work there (XLA
    aborts on a fusion type or scheduler name it does not know)."""
    script = ("import os; from rcnn.cli import use_fast_cpu_flags; use_fast_cpu_flags(256); "
              "print(os.environ['XLA_FLAGS']); import jax, jax.numpy as jnp; "
              "x = jnp.ones((64, 64)); print(float(jax.jit(lambda a: (a @ a).sum(axis=0).max())(x)))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, value = out.stdout.split("\n")[:2]
    assert "xla_cpu_experimental_ynn_fusion_type=" in flags and float(value) == 4096.0


@pytest.mark.skipif(not huge_pages_available(),
                    reason="glibc's huge-page tunable needs Linux with glibc and transparent huge pages")
def test_network_commands_restart_once_with_tunables(tmp_path):
    """A network command line restarts itself once with glibc's huge-page and keep-memory tunables added to
    the user's tunables; other commands run without a restart, and a user's own value of one of ours wins."""
    from rcnn.cli import HUGE_PAGE_TUNABLE, KEEP_MEMORY_TUNABLES

    script = ("import os, sys; print('TUNABLES', os.environ.get('GLIBC_TUNABLES'), flush=True); "
              "from rcnn.cli import main; sys.exit(main())")
    missing = str(tmp_path / "none")
    ours = ":".join((HUGE_PAGE_TUNABLE,) + KEEP_MEMORY_TUNABLES)

    def tunables_seen(command: list[str], tunables: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables is not None:
            env["GLIBC_TUNABLES"] = tunables
        proc = subprocess.run([sys.executable, "-c", script, *command], env=env, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr  # the missing files, reported by the command itself
        assert missing in proc.stderr
        return [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("TUNABLES")]

    evaluate = ["evaluate", missing, "--data", missing, "--out", str(tmp_path / "report")]
    assert tunables_seen(evaluate, None) == ["None", ours]
    assert tunables_seen(evaluate, "glibc.malloc.arena_max=2") == [
        "glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{ours}"]
    assert tunables_seen(evaluate, "glibc.malloc.hugetlb=0:glibc.malloc.mmap_max=4") == [
        "glibc.malloc.hugetlb=0:glibc.malloc.mmap_max=4",
        f"glibc.malloc.hugetlb=0:glibc.malloc.mmap_max=4:{KEEP_MEMORY_TUNABLES[1]}"]
    assert tunables_seen(evaluate, ours) == [ours]  # nothing to add: no restart
    assert tunables_seen(["baseline", missing, "--out", str(tmp_path / "b")], None) == ["None"]


@pytest.mark.skipif(not glibc_linux(), reason="glibc's malloc tunables need Linux with glibc")
def test_keep_memory_tunables_reuse_xla_buffers():
    """Under `KEEP_MEMORY_TUNABLES`, a computation's 64 MB temporary buffer is reused from one execution to
    the next when XLA runs on the calling thread (`run_on_calling_thread`), where from XLA's worker thread it
    is mapped, faulted in and zeroed afresh every time: what the network commands' setup is for."""
    from rcnn.cli import KEEP_MEMORY_TUNABLES

    script = """
import resource, sys
from rcnn.cli import run_on_calling_thread
if sys.argv[1] == "sync":
    run_on_calling_thread()
import jax, jax.numpy as jnp
x, w = jnp.ones((16384, 1024), jnp.float32), jnp.ones((1024, 8), jnp.float32)
f = jax.jit(lambda x, w: (jnp.sin(x) @ w).sum())  # sin(x), 64 MB, is a temporary buffer
for _ in range(6):  # warm up: compile, and let the heap settle
    f(x, w).block_until_ready()
for _ in range(8):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    print("FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(KEEP_MEMORY_TUNABLES)}

    def faults(mode: str) -> float:
        """Median page faults of one execution: a rare one-off heap extension (one 64 MB buffer, 16,384
        small pages; 3 runs in 40 even after the warm-up) is not the per-execution behaviour tested."""
        proc = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return float(np.median([int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("FAULTS")]))

    reused, fresh = faults("sync"), faults("async")
    assert fresh >= 32  # 64 MB faulted in again per execution: 2 MB huge pages at the least
    assert reused * 10 < fresh, (reused, fresh)


def test_eq4_reference_is_the_fields_first_exposure(tmp_path, hits_dir):
    """Eq. 4's zp_ref is the zero point of the field's first exposure (`conditions/zero_point_ref`), not the
    sequence's first epoch, which depends on where the window starts (5 images before a supernova's alert):
    the network's images and photometry's light curves are scaled by 10^((zp_ref - zp) / 2.5)."""
    from survey_params import load_survey

    path = tmp_path / "sn.h5"
    simulate(SimConfig(classes=("supernova", "nonvariable"), n_per_class=8, seed=3, conditions=str(hits_dir),
                       progress=False), path)
    run_photometry(path, progress=False)
    survey = load_survey(hits_dir)
    with h5py.File(path, "r") as f:
        ref, zp, mask = (f[k][()] for k in ("conditions/zero_point_ref", "conditions/zero_point", "mask"))
        fields = [x.decode() if isinstance(x, bytes) else str(x) for x in f["truth/field"][()]]
        start = f["truth/window_start"][()]
        sky, stamps = f["conditions/sky_adu"][()], f["stamps"][()]
        flux, lc_flux = f["photometry/flux_adu"][()], f["photometry/lc_flux"][()]
    first = [float(survey.field_epochs(int(x) if x.isdigit() else x)["zero_point"][0]) for x in fields]
    np.testing.assert_allclose(ref, first, atol=1e-4)
    late = start > 0
    assert late.any() and (np.abs(ref - zp[:, 0])[late] > 1e-3).any()  # the old reference differs there
    scale = 10 ** ((ref[:, None] - zp) / 2.5)
    np.testing.assert_allclose(lc_flux[mask], (flux * scale)[mask], rtol=1e-5)
    cfg = TrainConfig(input_transform="linear", flux_scale_adu=1.0, max_steps=zp.shape[1])
    data = SequenceData(path, cfg)
    batch = data.read(np.arange(len(ref)))
    want = (stamps - sky[..., None, None]) * scale[..., None, None]
    np.testing.assert_allclose(batch["images"][mask], want[mask], rtol=1e-4, atol=1e-3)


def test_other_stamp_sizes_train_and_must_match_the_run(dataset, tmp_path):
    """The RCNN takes any square stamps (Table 3's layers do not fix the size: 15 -> 8 -> 4 px through the
    pools): a run on 15-px stamps trains and predicts, records the size, and refuses 21-px stamps naming
    both; the light-curve model never reads stamps. Before, every network command wanted 21 px."""
    from rcnn.inference import Classifier, predict

    small = tmp_path / "s15.h5"
    simulate(SimConfig(classes=("nonvariable", "asteroid"), n_per_class=10, seed=2, stamp_size=15, progress=False),
             small)
    train(small, tmp_path / "run", TrainConfig(iterations=2, eval_every=2, **TINY), progress=False)
    clf = Classifier(tmp_path / "run")
    assert clf.stamp_size == 15 and yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["_stamp_size"] == 15
    p = predict(clf, small, split=None, progress=False)
    assert p.probs.shape[0] == 20 and np.allclose(p.probs[p.step_mask].sum(-1), 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match=r"'stamps' has shape \(120, 20, 21, 21\); expected \(N, T, 15, 15\); the "
                                           "run was trained on stamps of that size"):
        predict(clf, dataset, progress=False)
    with pytest.raises(ValueError, match=r"stamps of 15 x 15 px, as the run was trained on"):
        clf.classify_arrays(np.arange(6.0), np.ones(6, bool), np.zeros(6), np.full(6, 25.0), stamps=np.zeros((6, 21, 21)))
    run_photometry(small, progress=False)
    lc = train(small, tmp_path / "lc", TrainConfig(model="lc", iterations=2, eval_every=2, **TINY), progress=False)
    assert np.isfinite(lc["val_loss"])


def test_train_cli_config_file_then_set_overrides(dataset, tmp_path, capsys):
    """`rcnn train DATA --config rcnn/demo.yaml --set ...`: the run's config.yaml holds the demo file's values
    where no --set names the key, the --set values where one does (iterations and eval_every are in both), the
    defaults for keys in neither; the network trained has the file's sizes and the log the --set schedule."""
    from rcnn.cli import main
    from rcnn.config import load_config
    from rcnn.inference import Classifier

    demo = Path(__file__).resolve().parents[1] / "rcnn" / "demo.yaml"
    file_values = yaml.safe_load(demo.read_text())
    assert file_values["iterations"] == 300 and file_values["eval_every"] == 100  # the keys --set overrides below
    run = tmp_path / "run"
    sets = {"iterations": 4, "eval_every": 2, "batch_size": 16, "dropout": 0.25}
    argv = ["train", str(dataset), "--config", str(demo), "--out", str(run), "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    assert f"{run}: kept checkpoint from step" in capsys.readouterr().out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for k, v in file_values.items():  # conv_filters 16, dense_units 128, rnn_units 64, bn_momentum 0.9
        assert saved[k] == sets.get(k, v), k
    for k, v in sets.items():
        assert saved[k] == v, k
    defaults = dataclasses.asdict(TrainConfig())
    for k in ("learning_rate", "n_w", "max_steps", "cell", "loss", "seed", "model"):  # in neither
        assert saved[k] == defaults[k], k
    assert defaults["conv_filters"] != 16 and defaults["bn_momentum"] != 0.9  # the file's values are not defaults
    assert dataclasses.asdict(load_config(demo, [f"{k}={v}" for k, v in sets.items()])) == \
        {k: saved[k] for k in defaults}
    # the training followed them: evaluations every 2 of 4 steps, a network of the file's sizes
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    params = Classifier(run).variables["params"]
    kernels = jax.tree_util.tree_leaves_with_path(params)
    widths = {jax.tree_util.keystr(p): leaf.shape for p, leaf in kernels if leaf.ndim == 4}  # conv kernels
    assert widths and all(shape[-1] == file_values["conv_filters"] for shape in widths.values()), widths
    dense = [leaf.shape[-1] for p, leaf in kernels if leaf.ndim == 2 and "Dense" in jax.tree_util.keystr(p)]
    assert file_values["dense_units"] in dense, dense
    rnn = [leaf.shape for p, leaf in kernels if "LSTM" in jax.tree_util.keystr(p).upper() and leaf.ndim == 2]
    assert rnn and all(file_values["rnn_units"] in shape for shape in rnn), rnn
