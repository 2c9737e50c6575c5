"""D-Former: golden vectors from the official PyTorch code, parameter count, block locality, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.dformer import DilatedBlock
from effjax.models import dformer

SMALL = dict(width=4, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))  # the golden file's constructor


def _official_params(arrays, case=None):
  prefix = "param/" if case is None else f"param/{case}/"
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}


def test_golden_full_network(golden):
  arrays, meta = golden("dformer_small")
  assert meta["ctor"]["DFormer3D_as_built"]["embed_dim"] == SMALL["width"]
  params = dformer.convert_official(_official_params(arrays))
  model = dformer.Model(**SMALL)
  x = jnp.asarray(arrays["input/x"]).transpose(0, 2, 3, 4, 1)  # NCDHW -> NDHWC
  init_shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  assert jax.tree.map(lambda a: a.shape, init_shapes) == jax.tree.map(lambda a: a.shape, params)
  outs, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
  assert len(outs) == 3
  for j, out in enumerate(outs):  # the reference returns only final0 and final1 but computes all three
    want = arrays[f"output/final{j}"].transpose(0, 2, 3, 4, 1)
    np.testing.assert_allclose(out, want, atol=2e-4, rtol=1e-4, err_msg=f"head {j}")
  seen = state["intermediates"]
  for i in range(4):
    np.testing.assert_allclose(seen[f"layers_{i}"]["__call__"][0],
                               arrays[f"output/backbone/layers{i}"].transpose(0, 2, 3, 4, 1), atol=2e-5)
    np.testing.assert_allclose(seen[f"layers_up_{i}"]["__call__"][0], arrays[f"output/backbone/layers_up{i}"],
                               atol=2e-5)
  np.testing.assert_allclose(seen["norm_up"]["__call__"][0], arrays["output/backbone/norm_up"], atol=2e-5)


@pytest.mark.parametrize("case,pattern,interval,fixed_agrees", [
    ("block_ls", "local", 8, True),
    ("block_gs_i8", "dilated", 8, True),
    ("block_gs_i4", "dilated", 4, False),  # only D is padded: the reference leaves that padding unmasked
])
def test_golden_blocks(golden, case, pattern, interval, fixed_agrees):
  arrays, meta = golden("dformer_small")
  ctor = meta["ctor"]["blocks"][case]
  assert (ctor["gsm"], ctor["interval"]) == (int(pattern == "dilated"), interval)
  params = {"params": dformer.convert_official(_official_params(arrays, case))}
  x, want = arrays["input/block/x"], arrays[f"output/{case}/y"]
  block = lambda official: DilatedBlock(ctor["num_heads"], pattern, tuple(ctor["group_size"]), interval,
                                        fallback_axes=(1,), official_padding_mask=official)
  np.testing.assert_allclose(block(True).apply(params, x), want, atol=1e-5)
  fixed = block(False).apply(params, x)
  assert np.allclose(fixed, want, atol=1e-5) == fixed_agrees


def test_default_parameter_count():
  shapes = jax.eval_shape(dformer.Model().init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 32, 32, 1)))
  assert sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"])) == 50_557_248


def test_configurable_classes_channels_and_single_output():
  model = dformer.Model(num_classes=3, in_channels=2, deep_supervision=False, **SMALL)
  x = jnp.ones((2, 16, 32, 32, 2))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 16, 32, 32, 3)
  model = dformer.Model(num_classes=3, in_channels=2, **SMALL)
  outs = jax.eval_shape(model.apply, variables, x)
  assert [o.shape for o in outs] == [(2, 16, 32, 32, 3), (2, 8, 16, 16, 3), (2, 4, 8, 8, 3)]


def test_remat_gives_the_same_gradient_shapes():
  x = jnp.ones((1, 16, 32, 32, 1))
  model, remat = dformer.Model(**SMALL), dformer.Model(remat="full", **SMALL)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  loss = lambda m: lambda p: sum(o.sum() for o in m.apply(p, x))
  grads = jax.eval_shape(jax.grad(loss(remat)), params)
  assert jax.tree.map(lambda a: a.shape, grads) == jax.tree.map(lambda a: a.shape, params)
  with pytest.raises(ValueError, match="remat"):
    jax.eval_shape(dformer.Model(remat="some", **SMALL).init, jax.random.PRNGKey(0), x)


def test_bad_input_is_a_clear_error():
  model = dformer.Model(**SMALL)
  with pytest.raises(ValueError, match="not divisible"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 32, 40, 1)))
  with pytest.raises(ValueError, match="expects volumes"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 32, 32, 3)))
  with pytest.raises(ValueError, match="fidelity"):
    jax.eval_shape(dformer.Model(fidelity="exact", **SMALL).init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 32, 32, 1)))


def _token_dependency(block_fn, x):
  """Bool [N, N]: output token a depends on input token b."""
  n = math.prod(x.shape[1:-1])
  jac = jax.jit(jax.jacrev(lambda x: block_fn(x).sum(-1).reshape(n)))(x)
  return np.asarray(jnp.abs(jac).reshape(n, n, -1).sum(-1) > 0)


def _same_group(coords, divisor, pattern):
  key = coords // divisor if pattern == "local" else coords % divisor
  return np.all(key[:, None] == key[None], -1)


def _coords(grid):
  return np.stack(np.meshgrid(*[np.arange(s) for s in grid], indexing="ij"), -1).reshape(-1, len(grid))


def test_blocks_keep_to_their_groups_and_two_reach_everything():
  grid, group = (4, 4, 8), (2, 2, 4)  # dilated stride S/G = (2, 2, 2) ≤ window: one block pair sees all
  x = jax.random.normal(jax.random.PRNGKey(0), (1, *grid, 4))
  local = DilatedBlock(1, "local", group, interval=2)
  dilated = DilatedBlock(1, "dilated", group, interval=2)
  pl, pd = (b.init(jax.random.PRNGKey(i), x) for i, b in enumerate((local, dilated)))
  coords = _coords(grid)
  np.testing.assert_array_equal(_token_dependency(lambda x: local.apply(pl, x), x),
                                _same_group(coords, np.array(group), "local"))
  np.testing.assert_array_equal(_token_dependency(lambda x: dilated.apply(pd, x), x),
                                _same_group(coords, np.array(grid) // np.array(group), "dilated"))
  assert _token_dependency(lambda x: dilated.apply(pd, local.apply(pl, x)), x).all()


@pytest.mark.parametrize("pattern,stride_or_window", [("local", (2, 2, 4)), ("dilated", (2, 4, 2))])
def test_uneven_grid_groups_follow_the_padded_layout(pattern, stride_or_window):
  # (3, 5, 6) pads to (4, 6, 8) for local windows (2, 2, 4) and to (4, 8, 8) for interval 4, where
  # dilated groups of (2, 2, 4) members have strides (2, 4, 2).
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 5, 6, 4))
  block = DilatedBlock(2, pattern, (2, 2, 4), interval=4)
  params = block.init(jax.random.PRNGKey(1), x)
  np.testing.assert_array_equal(_token_dependency(lambda x: block.apply(params, x), x),
                                _same_group(_coords((3, 5, 6)), np.array(stride_or_window), pattern))


def test_small_grid_falls_back_to_global_attention():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 4, 4, 4))  # H = 4 < group_size[1] = 8
  block = DilatedBlock(1, "local", (2, 8, 8), interval=8, fallback_axes=(1,))
  params = block.init(jax.random.PRNGKey(1), x)
  assert _token_dependency(lambda x: block.apply(params, x), x).all()
