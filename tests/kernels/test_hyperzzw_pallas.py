"""HyperZ·Z·W Pallas kernels vs the XLA reference in effjax.kernels.hyperzzw (interpret mode, lowering)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import dispatch, hyperzzw
from effjax.kernels.hyperzzw_pallas import hyperzzw_global_pallas


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def outputs_and_grads(f, *args):
  """f's outputs and the gradients of a random linear functional of all of them."""
  outs = jax.eval_shape(f, *args)
  r = np.random.default_rng(5)
  cots = jax.tree.map(lambda s: jnp.asarray(r.normal(size=s.shape), jnp.float32), outs)
  loss = lambda *a: sum(jnp.sum(o.astype(jnp.float32) * c)
                       for o, c in zip(jax.tree.leaves(f(*a)), jax.tree.leaves(cots)))
  return jax.jit(lambda *a: (f(*a), jax.grad(loss, tuple(range(len(a))))(*a)))(*args)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("shared,dtype,tol", [(True, jnp.float32, 1e-5), (False, jnp.float32, 1e-5),
                                              (True, jnp.bfloat16, 1e-2)], ids=["shared", "per-example", "bf16"])
def test_fused_global_matches_reference(backend, shared, dtype, tol):
  r = np.random.default_rng(1)
  z, v = (jnp.asarray(r.normal(size=(2, 16, 16, 4)), dtype) for _ in range(2))
  w = jnp.asarray(r.normal(size=z.shape[1:] if shared else z.shape), dtype)
  got = outputs_and_grads(lambda w, z, v: hyperzzw_global_pallas(w, z, v, backend=backend, interpret=True), w, z, v)
  want = outputs_and_grads(hyperzzw.hyperzzw_global, w, z, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= tol


def test_fused_global_with_several_maps_matches_reference():
  """v with m·C channels: every map filtered by the same context (the Terminator's three maps, one call)."""
  r = np.random.default_rng(4)
  w, z = jnp.asarray(r.normal(size=(8, 8, 4)), jnp.float32), jnp.asarray(r.normal(size=(2, 8, 8, 4)), jnp.float32)
  v = jnp.asarray(r.normal(size=(2, 8, 8, 12)), jnp.float32)
  got = outputs_and_grads(lambda w, z, v: hyperzzw_global_pallas(w, z, v, interpret=True), w, z, v)
  want = outputs_and_grads(lambda w, z, v: hyperzzw.hyperzzw_global(w, z, v, impl="xla"), w, z, v)
  direct = [hyperzzw.global_mix_reference(z * w, v[..., 4 * i:4 * (i + 1)]) for i in range(3)]
  assert rel(want[0][0], jnp.concatenate(direct, axis=-1)) <= 1e-6
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= 1e-5


def test_global_mix_and_local_conv_match_reference():
  r = np.random.default_rng(2)
  ctx, v = (jnp.asarray(r.normal(size=(2, 8, 8, 16)), jnp.float32) for _ in range(2))
  got = outputs_and_grads(lambda c, v: hyperzzw.global_mix(c, v, impl="pallas"), ctx, v)
  want = outputs_and_grads(hyperzzw.global_mix_reference, ctx, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= 1e-5
  kernel = jnp.asarray(r.normal(size=(9, 9, 16)), jnp.float32)
  got = outputs_and_grads(lambda x, k: hyperzzw.local_conv(x, k, impl="pallas"), ctx, kernel)
  want = outputs_and_grads(hyperzzw.local_conv_reference, ctx, kernel)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= 1e-5
  with pytest.raises(ValueError, match="hyper-kernel"):
    hyperzzw_global_pallas(kernel, ctx, v)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_fused_global_lowers(platform):
  z = jax.ShapeDtypeStruct((8, 32, 32, 64), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((32, 32, 64), jnp.bfloat16)
  backend = "tpu" if platform == "tpu" else "gpu"
  op = lambda w, z, v: hyperzzw_global_pallas(w, z, v, backend=backend, interpret=False)[0]
  f = lambda w, z, v: jax.value_and_grad(lambda *a: jnp.sum(op(*a).astype(jnp.float32)), (0, 1, 2))(w, z, v)
  text = dispatch.export(f, platform, w, z, z).mlir_module()
  assert text.count(dispatch.KERNEL_CALLS[platform]) == 2


def test_tpu_kernels_pass_race_detector():
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
  from jax.experimental.pallas import tpu as pltpu
  r = np.random.default_rng(3)
  w, z, v = (jnp.asarray(r.normal(size=s), jnp.float32) for s in [(8, 8, 4), (1, 8, 8, 4), (1, 8, 8, 4)])
  params = pltpu.InterpretParams(detect_races=True)
  got = outputs_and_grads(lambda w, z, v: hyperzzw_global_pallas(w, z, v, backend="tpu", interpret=params), w, z, v)
  want = outputs_and_grads(hyperzzw.hyperzzw_global, w, z, v)
  assert not tpu_interpreter.races.races_found
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= 1e-5
