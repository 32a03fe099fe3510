"""rcnn.batchnorm.BatchNorm against flax.linen.BatchNorm with a broadcast mask: same outputs, batch
statistics, running-average update and gradients, for image rows (N, H, W, C) and sequences (B, T, F)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rcnn.batchnorm import BatchNorm


def _pair(x, mask, train=True, dtype=None):
    """Outputs, updated batch statistics and gradients (params, input) of ours and flax's on the same init."""
    ours = BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype)
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype)
    full = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
    variables = ref.init(jax.random.PRNGKey(0), x, mask=full)
    rng = np.random.default_rng(3)  # nontrivial parameters and running statistics
    variables = jax.tree.map(lambda v: v + jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables)
    out = []
    for module, m in ((ours, mask), (ref, full)):
        def f(params, x, module=module, m=m):
            y, upd = module.apply({**variables, "params": params}, x, mask=m, mutable=["batch_stats"])
            weights = jnp.asarray(np.linspace(-1, 2, y.size).reshape(y.shape), jnp.float32)
            return jnp.sum(jnp.where(full, y.astype(jnp.float32) * weights, 0)), (y, upd["batch_stats"])
        (_, (y, stats)), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables["params"], x)
        out.append((y, stats, grads))
    return out


def _close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32), rtol=rtol,
                                   atol=rtol * float(np.max(np.abs(np.asarray(v, np.float32)))))


@pytest.mark.parametrize("shape, mask_shape", [((12, 5, 5, 4), (12,)), ((3, 6, 5), (3, 6))])
def test_masked_batch_norm_matches_flax(shape, mask_shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, shape), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=mask_shape) < 0.6).at[(0,) * len(mask_shape)].set(True)
    x = jnp.where(mask.reshape(mask_shape + (1,) * (len(shape) - len(mask_shape))), x, 0.0)  # padding is zeros
    (y, stats, grads), (y_ref, stats_ref, grads_ref) = _pair(x, mask)
    _close(y, y_ref, 1e-5)
    _close(stats, stats_ref, 1e-5)
    _close(grads, grads_ref, 1e-4)
    # the statistics ignore the masked entries: changing them changes no valid output
    y2 = _pair(jnp.where(mask.reshape(mask_shape + (1,) * (len(shape) - len(mask_shape))), x, 7.0), mask)[0][0]
    valid = np.broadcast_to(np.asarray(mask).reshape(mask_shape + (1,) * (len(shape) - len(mask_shape))), shape)
    np.testing.assert_allclose(np.asarray(y2)[valid], np.asarray(y)[valid], rtol=1e-5, atol=1e-5)


def test_batch_norm_inference_and_unmasked():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(8, 3, 3, 5)), jnp.float32)
    everything = jnp.ones(8, bool)
    (y, _, grads), (y_ref, _, grads_ref) = _pair(x, everything, train=False)  # running averages
    _close(y, y_ref, 1e-5)
    _close(grads, grads_ref, 1e-4)
    variables = BatchNorm().init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(BatchNorm().apply(variables, x, mutable=["batch_stats"])[0],
                                  BatchNorm().apply(variables, x, everything, mutable=["batch_stats"])[0])


def test_batch_norm_bfloat16_and_bad_mask():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 4, 4, 3)), jnp.bfloat16)
    mask = jnp.ones(6, bool)
    (y, stats, _), (y_ref, stats_ref, _) = _pair(x, mask, dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and stats["mean"].dtype == jnp.float32
    _close(y, y_ref, 1e-2)
    _close(stats, stats_ref, 1e-5)
    with pytest.raises(ValueError, match="mask of shape"):
        BatchNorm().init(jax.random.PRNGKey(0), x, jnp.ones(5, bool))
