"""Depthwise / dilated large-kernel convolution: TPU and GPU kernels vs XLA in interpret mode, race detector,
lowering."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from effjax.kernels import dispatch
from effjax.kernels.depthwise_conv import depthwise_conv, depthwise_conv_reference


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def value_and_grads(f, x, w):
  c = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
  loss = lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * c)
  return jax.jit(lambda x, w: (f(x, w), jax.grad(loss, (0, 1))(x, w)))(x, w)


@pytest.mark.parametrize("x_shape,k_shape,dilation,dtype,tol", [
    ((2, 37, 8), (7,), 2, jnp.float32, 1e-5),
    ((2, 11, 13, 8), (5, 3), (1, 2), jnp.float32, 1e-5),
    ((1, 5, 6, 7, 4), (3, 3, 3), 1, jnp.float32, 1e-5),
    ((2, 9, 10, 8), (7, 7), 1, jnp.bfloat16, 1e-2),
], ids=["1d-dilated", "2d-mixed-dilation", "3d", "2d-bf16"])
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_kernel_matches_reference(backend, x_shape, k_shape, dilation, dtype, tol):
  r = np.random.default_rng(len(x_shape) + len(k_shape))
  x = jnp.asarray(r.normal(size=x_shape), dtype)
  w = jnp.asarray(r.normal(size=k_shape + x_shape[-1:]), dtype)
  out, grads = value_and_grads(lambda x, w: depthwise_conv(x, w, dilation=dilation, impl="pallas", backend=backend),
                               x, w)
  out_r, grads_r = value_and_grads(lambda x, w: depthwise_conv_reference(x, w, dilation=dilation), x, w)
  assert rel(out, out_r) <= tol
  for g, gr in zip(grads, grads_r):
    assert rel(g, gr) <= tol


def test_race_detector_and_errors():
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
  r = np.random.default_rng(0)
  x, w = jnp.asarray(r.normal(size=(1, 6, 7, 4)), jnp.float32), jnp.asarray(r.normal(size=(3, 5, 4)), jnp.float32)
  params = pltpu.InterpretParams(detect_races=True)
  out, grads = value_and_grads(lambda x, w: depthwise_conv(x, w, impl="pallas", interpret=params), x, w)
  assert not tpu_interpreter.races.races_found
  out_r, grads_r = value_and_grads(lambda x, w: depthwise_conv(x, w), x, w)  # auto = XLA on CPU
  assert rel(out, out_r) <= 1e-5 and all(rel(a, b) <= 1e-5 for a, b in zip(grads, grads_r))
  with pytest.raises(ValueError, match="odd"):
    depthwise_conv(x, w[:2])
  with pytest.raises(ValueError, match="does not match"):
    depthwise_conv(x, w[..., :2])


@pytest.mark.parametrize("x_shape,k_shape,dilation", [((2, 256, 128), (31,), 2), ((2, 56, 56, 128), (31, 31), 1),
                                                      ((1, 16, 16, 16, 128), (7, 7, 7), 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers(platform, x_shape, k_shape, dilation):
  x = jax.ShapeDtypeStruct(x_shape, jnp.bfloat16)
  w = jax.ShapeDtypeStruct(k_shape + x_shape[-1:], jnp.bfloat16)
  backend = "tpu" if platform == "tpu" else "gpu"
  conv = lambda x, w: depthwise_conv(x, w, dilation=dilation, impl="pallas", backend=backend, interpret=False)
  f = lambda x, w: jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2), (0, 1))(x, w)
  text = dispatch.export(f, platform, x, w).mlir_module()
  assert text.count(dispatch.KERNEL_CALLS[platform]) == 3
