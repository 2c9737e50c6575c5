"""HyperZ·Z·W operator: dispatched ops match their references and direct loops, gradients included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from effjax.kernels import hyperzzw


def _rand(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (1, 8, 8, 1), (3, 7, 2), (2, 13, 4)])
def test_global_mix_matches_reference_and_direct_loop(shape):
  ctx, v = _rand(0, shape), _rand(1, shape)
  out = hyperzzw.global_mix(ctx, v)
  np.testing.assert_allclose(out, hyperzzw.global_mix_reference(ctx, v), rtol=1e-5, atol=1e-5)
  c, w = np.asarray(ctx, np.float64), np.asarray(v, np.float64)
  if len(shape) == 4:
    direct = np.einsum("bikc,bkjc->bijc", c, w)
  else:
    direct = np.zeros_like(w)
    for t in range(shape[1]):
      for s in range(t + 1):
        direct[:, t] += c[:, t - s] * w[:, s]
  np.testing.assert_allclose(out, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (2, 9, 3)])
def test_global_mix_custom_vjp_matches_reference_gradients(shape):
  ctx, v, g = _rand(0, shape), _rand(1, shape), _rand(2, shape)
  _, vjp_op = jax.vjp(hyperzzw.global_mix, ctx, v)
  _, vjp_ref = jax.vjp(hyperzzw.global_mix_reference, ctx, v)
  for a, b in zip(vjp_op(g), vjp_ref(g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  check_grads(hyperzzw.global_mix, (ctx, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("x_shape,k", [((2, 6, 6, 3), 3), ((1, 9, 7, 2), 5), ((2, 11, 4), 7)])
def test_local_conv_matches_direct_loop(x_shape, k):
  x = _rand(0, x_shape)
  kernel = _rand(1, (k,) * (len(x_shape) - 2) + (x_shape[-1],))
  out = np.asarray(hyperzzw.local_conv(x, kernel))
  xp = np.pad(np.asarray(x), [(0, 0)] + [(k // 2, k // 2)] * (len(x_shape) - 2) + [(0, 0)])
  kn = np.asarray(kernel)
  direct = np.zeros(x_shape)
  if len(x_shape) == 4:
    for i in range(x_shape[1]):
      for j in range(x_shape[2]):
        direct[:, i, j] = np.einsum("bpqc,pqc->bc", xp[:, i:i + k, j:j + k], kn)
  else:
    for i in range(x_shape[1]):
      direct[:, i] = np.einsum("bpc,pc->bc", xp[:, i:i + k], kn)
  np.testing.assert_allclose(out, direct, rtol=1e-4, atol=1e-4)


def test_hyperzzw_global_and_2e():
  w, z, v = _rand(0, (4, 4, 2)), _rand(1, (3, 4, 4, 2)), _rand(2, (3, 4, 4, 2))
  out, ctx = hyperzzw.hyperzzw_global(w, z, v)
  np.testing.assert_allclose(ctx, z * w, rtol=1e-6)
  np.testing.assert_allclose(out, hyperzzw.global_mix_reference(z * w, v), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(hyperzzw.hyperzzw_2e(w, z), z * w * z, rtol=1e-6)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="impl"):
    hyperzzw.global_mix(_rand(0, (1, 4, 2)), _rand(1, (1, 4, 2)), impl="cuda")
  with pytest.raises(ValueError, match="square"):
    hyperzzw.global_mix_reference(_rand(0, (1, 4, 5, 2)), _rand(1, (1, 4, 5, 2)))
  with pytest.raises(ValueError, match="odd"):
    hyperzzw.local_conv(_rand(0, (1, 6, 2)), _rand(1, (4, 2)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 4), (2, 16, 4)])
def test_ops_and_gradients_lower_for_tpu_and_gpu(shape):
  ctx, v = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32)
  kernel = jax.ShapeDtypeStruct((5,) * (len(shape) - 2) + (shape[-1],), jnp.float32)

  def f(ctx, v, kernel):
    out = hyperzzw.global_mix(ctx, v) + hyperzzw.local_conv(v, kernel)
    return jnp.sum(out ** 2)

  exported = jax.export.export(jax.jit(jax.grad(f, argnums=(0, 1, 2))), platforms=["tpu", "cuda"])(ctx, v, kernel)
  assert exported.platforms == ("tpu", "cuda")
