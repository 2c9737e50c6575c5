"""CRATE subspace self-attention (q = k = v): TPU kernels vs the reference, race detector, lowering."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from effjax.kernels import dispatch
from effjax.kernels.flash_attention import flash_attention
from effjax.kernels.subspace_attention import (
  subspace_attention,
  subspace_attention_reference,
  subspace_attention_tpu,
  subspace_attention_xla,
)


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def value_and_grad(f, w):
  c = jnp.asarray(np.random.default_rng(1).normal(size=w.shape), jnp.float32)
  return jax.jit(lambda w: (f(w), jax.grad(lambda w: jnp.sum(f(w).astype(jnp.float32) * c))(w)))(w)


@pytest.mark.parametrize("length,dtype,tol", [(37, jnp.float32, 1e-5), (64, jnp.float32, 1e-5),
                                              (45, jnp.bfloat16, 1e-2)])
def test_kernels_match_reference(length, dtype, tol):
  w = jnp.asarray(np.random.default_rng(length).normal(size=(2, length, 2, 16)), dtype)
  out, grad = value_and_grad(lambda w: subspace_attention_tpu(w, block=16, interpret=True), w)
  out_r, grad_r = value_and_grad(subspace_attention_reference, w)
  assert rel(out, out_r) <= tol and rel(grad, grad_r) <= tol


@pytest.mark.parametrize("length,dtype,tol", [(37, jnp.float32, 1e-5), (45, jnp.bfloat16, 1e-2)])
def test_xla_path_with_its_own_backward_matches_autodiff_of_the_reference(length, dtype, tol):
  w = jnp.asarray(np.random.default_rng(length).normal(size=(2, length, 3, 16)), dtype)
  out, grad = value_and_grad(lambda w: subspace_attention_xla(w, scale=0.3), w)
  out_r, grad_r = value_and_grad(lambda w: subspace_attention_reference(w, scale=0.3), w)
  assert out.dtype == grad.dtype == dtype
  assert rel(out, out_r) <= tol and rel(grad, grad_r) <= tol


def test_race_detector_and_dispatch():
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
  w = jnp.asarray(np.random.default_rng(2).normal(size=(1, 20, 1, 8)), jnp.float32)
  params = pltpu.InterpretParams(detect_races=True)
  out, grad = value_and_grad(lambda w: subspace_attention_tpu(w, block=8, interpret=params), w)
  assert not tpu_interpreter.races.races_found
  out_r, grad_r = value_and_grad(lambda w: subspace_attention(w, impl="auto"), w)   # XLA on CPU
  assert rel(out, out_r) <= 1e-5 and rel(grad, grad_r) <= 1e-5
  with pytest.raises(ValueError, match="impl"):
    subspace_attention(w, impl="cuda")


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers(platform):
  spec = jax.ShapeDtypeStruct((2, 197, 4, 64), jnp.bfloat16)
  # On GPU the op is the generic flash kernel with q = k = v.
  attend = subspace_attention_tpu if platform == "tpu" else lambda w: flash_attention(w, w, w, backend="gpu")
  f = lambda w: jax.value_and_grad(lambda w: jnp.sum(attend(w).astype(jnp.float32) ** 2))(w)
  text = dispatch.export(f, platform, spec).mlir_module()
  assert text.count(dispatch.KERNEL_CALLS[platform]) >= 2
