"""effjax/layers/dense.py: the same parameters, outputs and gradients as flax.linen.Dense."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.dense import Dense


@pytest.mark.parametrize("use_bias", [True, False])
def test_outputs_and_gradients_equal_flax_dense(use_bias):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
  dy = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 6))
  ours, theirs = Dense(6, use_bias=use_bias), nn.Dense(6, use_bias=use_bias)
  params = theirs.init(jax.random.PRNGKey(2), x)["params"]
  if use_bias:
    params = dict(params, bias=jnp.linspace(-1.0, 1.0, 6))
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(2), x)["params"]) == jax.tree.map(jnp.shape, params)

  def vjp(module):
    y, pullback = jax.vjp(lambda x, p: module.apply({"params": p}, x), x, params)
    return y, pullback(dy)
  (y, (dx, dp)), (y_ref, (dx_ref, dp_ref)) = vjp(ours), vjp(theirs)
  np.testing.assert_allclose(y, y_ref, atol=1e-6)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
  for name in params:
    np.testing.assert_allclose(dp[name], dp_ref[name], atol=1e-5)
  assert float(jnp.abs(dp["kernel"]).max()) > 0.1  # not a vacuous comparison


def test_dtype_follows_flax():
  x = jnp.ones((2, 4), jnp.bfloat16)
  params = {"kernel": jnp.ones((4, 3), jnp.bfloat16), "bias": jnp.ones((3,), jnp.bfloat16)}
  assert Dense(3).apply({"params": params}, x).dtype == nn.Dense(3).apply({"params": params}, x).dtype
