"""Per family: switching a model's kernels between impl="xla" and impl="pallas" (interpret mode on CPU) keeps
its outputs and gradients within the kernel tolerances (FIT's test is with the FIT models)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.dformer import Stage
from effjax.layers.hyperzzw_blocks import FastMultiBranch
from effjax.layers.transformer import MultiHeadAttention
from effjax.models import crate, dilated_vit


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def outputs_and_grads(make, *inputs):
  """[(output, param grads of sum(output²))] for impl "xla" and "pallas" on the same params."""
  params = jax.jit(make("xla").init)(jax.random.key(0), *inputs)
  results = []
  for impl in ("xla", "pallas"):
    model = make(impl)
    loss = lambda p: jnp.sum(model.apply(p, *inputs) ** 2)
    results.append(jax.jit(lambda p: (model.apply(p, *inputs), jax.grad(loss)(p)))(params))
  return results


def assert_close(results):
  (out_x, grads_x), (out_p, grads_p) = results
  assert rel(out_p, out_x) <= 1e-5
  # One relative error over all gradients: some (e.g. the key bias, to which softmax is invariant) are
  # zero up to rounding, where a per-leaf relative error means nothing.
  flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
  assert rel(flat(grads_p), flat(grads_x)) <= 1e-5


@pytest.mark.slow
def test_crate_switches_impl():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 12, 1)), jnp.float32)
  assert_close(outputs_and_grads(
      lambda impl: crate.Model(num_classes=3, patch_size=4, width=16, depth=1, num_heads=2, impl=impl),
      images))


@pytest.mark.slow
def test_dilated_vit_switches_impl():
  """D-Former blocks on an uneven 6x5 token grid: padded local windows and dilated groups with key masks."""
  images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 12, 10, 1)), jnp.float32)
  assert_close(outputs_and_grads(
      lambda impl: dilated_vit.Model(num_classes=3, patch_size=(2, 2), width=16, depths=(2,), num_heads=(2,),
                                     group_size=(2, 2), intervals=(2,), impl=impl), images))


@pytest.mark.slow
def test_dformer_3d_block_pair_switches_impl():
  volume = jnp.asarray(np.random.default_rng(5).normal(size=(1, 2, 4, 6, 8)), jnp.float32)
  assert_close(outputs_and_grads(
      lambda impl: Stage(2, 2, (2, 2, 2), 2, impl=impl), volume))


@pytest.mark.slow
def test_terminator_branch_switches_impl():
  """The fused global HyperZ·Z·W kernel (three maps at once) and the four local depthwise-conv kernels."""
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 4)), jnp.float32)
  small = dict(global_hidden=8, local_hidden=8, channel_hidden=8, interact_channel_hidden=4,
               interact_spatial_hidden=8, omega_0=30.0, local_sizes=(3, 5, 3, 3))
  variables = FastMultiBranch(2, **small).init(jax.random.key(0), x)
  results = []
  for impl in ("xla", "pallas"):
    model = FastMultiBranch(2, impl=impl, **small)
    run = lambda p: model.apply({**variables, "params": p}, x)[0]
    loss = lambda p: jnp.sum(run(p) ** 2)
    results.append(jax.jit(lambda p: (run(p), jax.grad(loss)(p)))(variables["params"]))
  assert_close(results)


def test_transformer_attention_with_padding_mask_switches_impl():
  tokens = jnp.asarray(np.random.default_rng(1).normal(size=(2, 21, 16)), jnp.float32)
  mask = jnp.asarray(np.random.default_rng(2).random((2, 1, 1, 21)) > 0.2)  # becomes the kernel's key mask
  assert_close(outputs_and_grads(lambda impl: MultiHeadAttention(num_heads=2, impl=impl), tokens, mask))


def test_hyperzzw_ops_switch_impl():
  from effjax.kernels import hyperzzw
  rng = np.random.default_rng(3)
  rand = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  ctx, v, x, k = rand(2, 8, 8, 4), rand(2, 8, 8, 4), rand(2, 8, 8, 4), rand(3, 3, 4)
  for op, args in [(hyperzzw.global_mix, (ctx, v)), (hyperzzw.local_conv, (x, k))]:
    results = []
    for impl in ("xla", "pallas"):
      f = lambda *a: jnp.sum(op(*a, impl=impl) ** 2)
      results.append((op(*args, impl=impl), jax.grad(f, argnums=(0, 1))(*args)))
    (out_x, grads_x), (out_p, grads_p) = results
    assert rel(out_p, out_x) <= 1e-5
    for gp, gx in zip(grads_p, grads_x):
      assert rel(gp, gx) <= 1e-5
