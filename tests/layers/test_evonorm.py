"""EvoNorm-B0 / S0 against timm's EvoNorm2dB0 / EvoNorm2dS0 (tests/data/evonorm_timm.npz), and the equations."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.evonorm import EvoNormB0, EvoNormS0

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "evonorm_timm.npz")
TOL = dict(rtol=1e-5, atol=1e-5)


def _case(key):
  d = np.load(DATA)
  layer = json.loads(str(d["meta"]))["layers"][key]
  sd = {k.split("/")[-1]: d[k] for k in d.files if k.startswith(f"param/{key}/")}
  out = {k.split("/")[-1]: d[k] for k in d.files if k.startswith(f"output/{key}/")}
  return layer, sd, d[f"input/{key}"].transpose(0, 2, 3, 1), out


@pytest.mark.parametrize("key", ["b0", "b0_train", "b0_noact", "s0", "s0_group_size"])
def test_matches_timm(key):
  layer, sd, x, out = _case(key)
  module = (EvoNormB0 if layer["timm_class"] == "EvoNorm2dB0" else EvoNormS0)(**layer["kwargs"])
  variables = {"params": {k: v for k, v in sd.items() if k != "running_var"}}
  if "running_var" in sd:
    variables["batch_stats"] = {"running_var": sd["running_var"]}
  y, state = module.apply(variables, x, train=layer["train"], mutable=["batch_stats"])
  np.testing.assert_allclose(y, out["y"].transpose(0, 2, 3, 1), **TOL)
  if layer["train"]:
    np.testing.assert_allclose(state["batch_stats"]["running_var"], out["running_var"], **TOL)


def test_s0_equation_and_group_errors():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 6))
  params = {"weight": jnp.full((6,), 1.5), "bias": jnp.full((6,), 0.2), "v": jnp.full((6,), 0.7)}
  y = EvoNormS0(groups=3).apply({"params": params}, x)
  g = x.reshape(2, 3, 4, 3, 2)
  std = jnp.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
  want = (g * jax.nn.sigmoid(0.7 * g) / std).reshape(x.shape) * 1.5 + 0.2
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="do not split"):
    EvoNormS0(group_size=4).init(jax.random.PRNGKey(0), x)


def test_b0_gradients_reach_every_param():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 6))
  variables = EvoNormB0().init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p * 0.5 + 0.1, variables["params"])
  def loss(p):
    return jnp.sum(EvoNormB0().apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])[0] ** 3)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.grad(loss)(params)):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
