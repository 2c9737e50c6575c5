"""Local / dilated / global grid attention: values against dense masked attention, gradient locality."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels.attention import attention_reference
from effjax.kernels.grid_attention import grid_attention, group_ids, group_tokens, pad_grid, ungroup_tokens

CASES = [  # (grid, window for local, members for dilated)
    ((12,), (4,), (3,)),
    ((4, 6), (2, 3), (2, 2)),
    ((4, 4, 6), (2, 2, 3), (2, 4, 3)),
]


def _same_group(grid, pattern, shape):
  """Bool [N, N] over the flattened grid, straight from the definition in the module docstring."""
  coords = np.array(list(itertools.product(*[range(s) for s in grid])))
  if pattern == "local":
    key = coords // np.array(shape)
  elif pattern == "dilated":
    key = coords % (np.array(grid) // np.array(shape))
  else:
    key = np.zeros_like(coords)
  return np.all(key[:, None] == key[None, :], axis=-1)


def _dense(q, k, v, allowed):
  b, grid, h = q.shape[0], q.shape[1:-2], q.shape[-2]
  flat = lambda t: t.reshape(b, -1, h, t.shape[-1])
  out = attention_reference(flat(q), flat(k), flat(v), mask=allowed[:, None])
  return out.reshape(b, *grid, h, v.shape[-1])


@pytest.mark.parametrize("grid,window,members", CASES)
@pytest.mark.parametrize("pattern", ["local", "dilated", "global"])
def test_matches_dense_attention_with_group_mask(grid, window, members, pattern):
  shape = window if pattern == "local" else members
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(r, (2, *grid, 2, 4)) for r in keys)
  got = grid_attention(q, k, v, pattern, shape)
  allowed = jnp.asarray(_same_group(grid, pattern, shape))[None]
  np.testing.assert_allclose(got, _dense(q, k, v, allowed), atol=1e-5)


@pytest.mark.parametrize("pattern", ["local", "dilated"])
def test_uneven_grid_padded_and_masked(pattern):
  grid, shape = (3, 5, 7), (2, 2, 4)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q, k, v = (jax.random.normal(r, (2, *grid, 2, 4)) for r in keys)
  (qp, valid), (kp, _), (vp, _) = (pad_grid(t, shape) for t in (q, k, v))
  assert qp.shape[1:4] == (4, 6, 8) and valid.shape == (4, 6, 8) and int(valid.sum()) == 3 * 5 * 7
  got = grid_attention(qp, kp, vp, pattern, shape, valid=valid)
  allowed = _same_group(qp.shape[1:4], pattern, shape) & np.asarray(valid).reshape(1, -1)
  np.testing.assert_allclose(got, _dense(qp, kp, vp, jnp.asarray(allowed)[None]), atol=1e-5)
  # Whatever sits in the padding never reaches a real token.
  noisy = grid_attention(qp, kp + 100.0 * ~valid[..., None, None], vp - 50.0 * ~valid[..., None, None],
                         pattern, shape, valid=valid)
  np.testing.assert_allclose(noisy[:, :3, :5, :7], got[:, :3, :5, :7], atol=1e-5)


def test_uneven_grid_without_padding_is_an_error():
  x = jnp.zeros((1, 5, 6, 1, 2))
  with pytest.raises(ValueError, match="not divisible"):
    grid_attention(x, x, x, "local", (2, 3))
  with pytest.raises(ValueError, match="rank"):
    grid_attention(x, x, x, "dilated", (5,))
  with pytest.raises(ValueError, match="unknown grid attention pattern"):
    grid_attention(x, x, x, "strided", (5, 6))


@pytest.mark.parametrize("grid,window,members", CASES)
def test_group_and_ungroup_are_inverse(grid, window, members):
  x = jnp.arange(2 * np.prod(grid) * 3).reshape(2, *grid, 3)
  for pattern, shape in (("local", window), ("dilated", members), ("global", grid)):
    grouped = group_tokens(x, pattern, shape)
    assert grouped.shape[1] == (np.prod(grid) if pattern == "global" else np.prod(shape))
    np.testing.assert_array_equal(ungroup_tokens(grouped, grid, pattern, shape), x)


def test_group_ids_follow_the_definition():
  # Dilated group i holds the tokens g·(S/G) + i.
  np.testing.assert_array_equal(group_ids((8,), "dilated", (2,)), [0, 1, 2, 3, 0, 1, 2, 3])
  np.testing.assert_array_equal(group_ids((8,), "local", (2,)), [0, 0, 1, 1, 2, 2, 3, 3])


def _dependency(f, grid):
  """Bool [N, N]: does output token a depend on input token b (through gradients)."""
  x = jax.random.normal(jax.random.PRNGKey(2), (1, *grid, 1, 3))
  jac = jax.jit(jax.jacobian(lambda x: f(x).sum(-1)))(x)  # [1, *grid, 1, 1, *grid, 1, 3]
  n = int(np.prod(grid))
  return np.asarray(jnp.abs(jac).reshape(n, n, -1).sum(-1) > 0)


@pytest.mark.parametrize("grid,window,members", CASES)
def test_gradients_stay_inside_groups_and_stacking_reaches_everything(grid, window, members):
  local = lambda x: grid_attention(x, x, x, "local", window)
  dilated = lambda x: grid_attention(x, x, x, "dilated", members)
  np.testing.assert_array_equal(_dependency(local, grid), _same_group(grid, "local", window))
  np.testing.assert_array_equal(_dependency(dilated, grid), _same_group(grid, "dilated", members))
  assert not _dependency(local, grid).all() and not _dependency(dilated, grid).all()
  assert _dependency(lambda x: dilated(local(x)), grid).all()


@pytest.mark.slow
@pytest.mark.parametrize("pattern,impl", [("local", "pallas_tpu"), ("dilated", "pallas_gpu")])
def test_kernel_backends_of_attention_agree(pattern, impl):
  """The grouped call, with its padding key mask, runs through `attention`'s Pallas kernels (interpreted
  on CPU) and matches the XLA path."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  q, k, v = (jax.random.normal(r, (1, 4, 8, 8, 2, 16)) for r in keys)
  valid = jnp.ones((4, 8, 8), bool).at[:, -1].set(False)
  run = lambda impl: grid_attention(q, k, v, pattern, (2, 4, 4), valid=valid, impl=impl)
  np.testing.assert_allclose(run(impl), run("xla"), atol=2e-5)
