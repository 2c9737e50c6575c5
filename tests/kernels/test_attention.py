"""Attention op: patterns, XLA reference, block-sparse Pallas kernels (interpret mode, TPU race detector,
TPU / CUDA lowering), dispatch, and the proof that the grid visits only non-empty tiles."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from effjax.kernels import attention_patterns as ap, dispatch
from effjax.kernels.attention import attention, attention_reference
from effjax.kernels.flash_attention import flash_attention


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def inputs(seed, b, lq, lk, h, d, dtype, key_dropout=0.0):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=(b, n, h, d)), dtype) for n in (lq, lk, lk))
  km = jnp.asarray(r.random((b, lk)) >= key_dropout) if key_dropout else None
  return q, k, v, km


def value_and_grads(f, q, k, v):
  """Output and gradients of sum(out * w) for a fixed random cotangent w."""
  w = jnp.asarray(np.random.default_rng(9).normal(size=q.shape[:3] + (v.shape[-1],)), jnp.float32)
  loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w)
  return jax.jit(lambda q, k, v: (f(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))(q, k, v)


def check(kernel, pattern, q, k, v, km, tol):
  ref = functools.partial(attention_reference, pattern=pattern, key_mask=km)
  out, grads = value_and_grads(kernel, q, k, v)
  out_r, grads_r = value_and_grads(ref, q, k, v)
  assert rel(out, out_r) <= tol
  for g, gr in zip(grads, grads_r):
    assert rel(g, gr) <= tol


# ---------------------------------------------------------------- patterns and the reference

def test_pattern_masks_match_their_definitions():
  i, j = np.arange(23)[:, None], np.arange(31)[None, :]
  cases = {ap.full(): np.ones((23, 31), bool), ap.causal(): j <= i, ap.local(3, 1): (j >= i - 3) & (j <= i + 1),
           ap.dilated(4): i % 4 == j % 4, ap.grouped(5, 7): i // 5 == j // 7, ap.chunk_causal(6): j // 6 <= i // 6}
  for pattern, want in cases.items():
    np.testing.assert_array_equal(pattern.mask(23, 31), want, err_msg=pattern.kind)
  r, c = np.unravel_index(np.arange(30), (5, 6))
  same = lambda a: a[:, None] == a[None, :]
  np.testing.assert_array_equal(ap.grid_local((5, 6), (2, 4)).mask(30, 30), same(r // 2) & same(c // 4))
  np.testing.assert_array_equal(ap.grid_dilated((5, 6), (2, 3)).mask(30, 30), same(r % 2) & same(c % 3))


def test_bad_patterns_and_impls_raise():
  with pytest.raises(ValueError, match="window"):
    ap.local(-1)
  with pytest.raises(ValueError, match="stride"):
    ap.dilated(0)
  with pytest.raises(ValueError, match="pattern"):
    ap.as_pattern("sideways")
  with pytest.raises(ValueError, match="grid"):
    ap.grid_local((4, 4), (2,))
  with pytest.raises(ValueError, match="needs 16 tokens"):
    ap.grid_dilated((4, 4), (2, 2)).mask(15, 15)
  q, k, v, _ = inputs(0, 1, 4, 4, 1, 8, jnp.float32)
  with pytest.raises(ValueError, match="impl"):
    attention(q, k, v, impl="cuda")
  with pytest.raises(ValueError, match="dense mask"):
    attention(q, k, v, bias=jnp.zeros((1, 1, 4, 4)), impl="pallas")


def test_reference_pattern_equals_dense_mask_and_empty_rows_are_zero():
  q, k, v, km = inputs(1, 2, 12, 12, 2, 8, jnp.float32, key_dropout=0.3)
  pattern = ap.local(2, 0)
  dense = jnp.asarray(pattern.mask(12, 12))[None, None] & km[:, None, None, :]
  got = attention(q, k, v, pattern=pattern, key_mask=km, impl="xla")
  np.testing.assert_allclose(got, attention_reference(q, k, v, mask=dense), rtol=1e-6, atol=1e-6)
  blind = attention(q, k, v, key_mask=jnp.zeros((2, 12), bool), impl="xla")
  np.testing.assert_array_equal(blind, 0.0)


# ---------------------------------------------------------------- kernels vs reference (interpret mode)

CASES = [  # pattern, Lq, Lk, key padding mask, blocks: ragged lengths everywhere
    (ap.full(), 37, 45, True, (16, 16)),
    (ap.causal(), 50, 50, False, (16, 16)),
    (ap.local(9, 4), 70, 70, True, (16, 16)),
    (ap.dilated(3), 45, 45, False, (8, 8)),
    (ap.grouped(6, 10), 30, 50, False, (8, 16)),
    (ap.chunk_causal(12), 41, 41, True, (16, 16)),
    (ap.grouped(8), 40, 16, False, (8, 8)),      # query groups 2-4 see no key: zero rows, forced visits
    (ap.grouped(8), 16, 40, True, (8, 8)),       # key blocks 2-4 are seen by no query: zero dK / dV
    (ap.grid_local((5, 6), (2, 4)), 30, 30, True, (8, 8)),    # 2-D windows, smaller at the edges
    (ap.grid_dilated((3, 4, 4), (1, 2, 2)), 48, 48, False, (8, 8)),  # 3-D dilated groups
]


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("pattern,lq,lk,padded,blocks", CASES, ids=[f"{c[0].kind}-{c[1]}x{c[2]}" for c in CASES])
def test_kernel_matches_reference_f32(backend, pattern, lq, lk, padded, blocks):
  q, k, v, km = inputs(lq * 7 + lk, 2, lq, lk, 2, 16, jnp.float32, key_dropout=0.25 if padded else 0.0)
  kernel = functools.partial(flash_attention, pattern=pattern, key_mask=km, backend=backend, interpret=True,
                             block_q=blocks[0], block_k=blocks[1])
  check(kernel, pattern, q, k, v, km, tol=1e-5)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_kernel_matches_reference_bf16(backend):
  pattern = ap.local(12, 12)
  q, k, v, km = inputs(3, 1, 40, 40, 2, 32, jnp.bfloat16, key_dropout=0.2)
  kernel = functools.partial(flash_attention, pattern=pattern, key_mask=km, backend=backend, interpret=True,
                             block_q=16, block_k=16)
  check(kernel, pattern, q, k, v, km, tol=1e-2)


def test_tpu_kernel_passes_race_detector():
  # The TPU-semantics interpreter simulates VMEM/HBM, the DMA pipeline and a happens-before race detector.
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
  q, k, v, km = inputs(4, 1, 24, 24, 1, 8, jnp.float32, key_dropout=0.2)
  pattern = ap.chunk_causal(8)
  params = pltpu.InterpretParams(detect_races=True)
  kernel = functools.partial(flash_attention, pattern=pattern, key_mask=km, interpret=params, block_q=8, block_k=8)
  check(kernel, pattern, q, k, v, km, tol=1e-5)
  assert tpu_interpreter.races is not None and not tpu_interpreter.races.races_found


# ---------------------------------------------------------------- block sparsity

def _nonempty_tiles(pattern, length, block, order):
  """Brute force: tiles of the dense mask (tokens in kernel order, padded) with any visible pair."""
  m = pattern.mask(length, length)[np.ix_(order, order)]
  n = -(-length // block)
  m = np.pad(m, ((0, n * block - length),) * 2).reshape(n, block, n, block)
  return int(m.any(axis=(1, 3)).sum()), n * n


@pytest.mark.parametrize("pattern,order", [
    (ap.local(16, 16), np.arange(100)),
    (ap.dilated(4), np.concatenate([np.arange(r, 100, 4) for r in range(4)])),  # dilated groups made contiguous
    (ap.grid_local((10, 10), (5, 5)),  # 2-D windows made contiguous: window-major, row-major inside
     np.arange(100).reshape(2, 5, 2, 5).transpose(0, 2, 1, 3).ravel()),
], ids=["local", "dilated", "grid_local"])
def test_grid_visits_only_nonempty_tiles(pattern, order):
  nonempty, dense = _nonempty_tiles(pattern, 100, 16, order)
  assert nonempty < dense / 2
  visits = []

  def record(token, grid_point, core):
    visits.append(tuple(int(x) for x in grid_point))
    return token

  q, k, v, _ = inputs(5, 1, 100, 100, 1, 8, jnp.float32)
  params = pltpu.InterpretParams(grid_point_recorder=record)
  out = flash_attention(q, k, v, pattern=pattern, interpret=params, block_q=16, block_k=16)
  assert len(visits) == nonempty                      # forward grid (B=1, H=1, tiles) visited once per tile
  np.testing.assert_allclose(out, attention_reference(q, k, v, pattern=pattern), rtol=1e-5, atol=1e-5)
  plan = ap.tile_plan(pattern, 100, 100, 16, 16)
  assert plan.num_visited == plan.k_major.shape[1] == nonempty  # backward grids use the same tiles
  starts = np.searchsorted(plan.q_major[0], np.arange(plan.nonempty.shape[0] + 1))
  assert starts[-1] == nonempty                       # GPU loops: CSR rows hold the same tiles


# ---------------------------------------------------------------- lowering for TPU (Mosaic) and CUDA (Triton)

@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower(platform, dtype):
  backend = "tpu" if platform == "tpu" else "gpu"
  spec = jax.ShapeDtypeStruct((2, 300, 4, 64), dtype)
  km = jax.ShapeDtypeStruct((2, 300), jnp.bool_)
  for pattern in (ap.causal(), ap.local(64, 64), ap.dilated(4)):
    def f(q, k, v, km, pattern=pattern):
      kernel = lambda q, k, v: flash_attention(q, k, v, pattern=pattern, key_mask=km, backend=backend)
      loss = lambda q, k, v: jnp.sum(kernel(q, k, v).astype(jnp.float32) ** 2)
      return kernel(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)
    exported = dispatch.export(f, platform, spec, spec, spec, km)
    text = exported.mlir_module()
    assert text.count(dispatch.KERNEL_CALLS[platform]) >= 3


# ---------------------------------------------------------------- dispatch

def test_impl_switch_keeps_outputs_and_converts_key_masks():
  q, k, v, km = inputs(6, 2, 20, 20, 2, 8, jnp.float32, key_dropout=0.3)
  mask = km[:, None, None, :]  # the form models pass; the kernel takes it as a key mask
  want = attention(q, k, v, mask=mask, pattern="causal", impl="auto")
  np.testing.assert_allclose(want, attention(q, k, v, mask=mask, pattern="causal", impl="xla"), rtol=0, atol=0)
  got = attention(q, k, v, mask=mask, pattern="causal", impl="pallas")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pattern,length", [
    (ap.grid_local((6, 8), (2, 4)), 48), (ap.grid_dilated((6, 8), (3, 2)), 48),
    (ap.grid_dilated((2, 4, 4), (1, 2, 2)), 32),
    (ap.dilated(4), 40), (ap.grouped(5), 40), (ap.grid_local((5, 7), (2, 4)), 35)])
def test_xla_path_gathers_equal_groups_and_matches_the_dense_reference(pattern, length):
  """The "xla" impl runs equal-group patterns as dense attention per group (no [L, L] logits); uneven
  groups (the last case) take the dense reference. Both agree with it, key masks included."""
  q, k, v, km = inputs(11, 2, length, length, 2, 8, jnp.float32, key_dropout=0.3)
  split = ap.groups(pattern, length, length)
  assert (split is None) == (pattern.kind == "grid_local" and length == 35)
  got = value_and_grads(lambda q, k, v: attention(q, k, v, pattern=pattern, key_mask=km, impl="xla"), q, k, v)
  want = value_and_grads(lambda q, k, v: attention_reference(q, k, v, pattern=pattern, key_mask=km), q, k, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert rel(a, b) <= 1e-5


# ---------------------------------------------------------------- blockwise XLA paths of banded / causal patterns

def _largest_array(closed):
  """Element count of the largest value (constant, input or intermediate, sub-jaxprs included) in a jaxpr."""
  def walk(jaxpr):
    avals = [v.aval for v in list(jaxpr.invars) + list(jaxpr.constvars)]
    for eqn in jaxpr.eqns:
      avals += [v.aval for v in eqn.outvars]
      for p in eqn.params.values():
        for sub in p if isinstance(p, (list, tuple)) else (p,):
          sub = getattr(sub, "jaxpr", sub)
          if hasattr(sub, "eqns"):
            avals.append(walk(sub))
    return max(int(np.prod(getattr(a, "shape", ()))) for a in avals)
  consts = [int(np.size(c)) for c in closed.consts]
  return max([walk(closed.jaxpr)] + consts)


BLOCKWISE = [(ap.local(5, 3), 300, 300), (ap.local(7, 0), 300, 260), (ap.causal(), 300, 300),
             (ap.chunk_causal(24), 260, 300)]


@pytest.mark.parametrize("pattern,lq,lk", BLOCKWISE, ids=lambda x: getattr(x, "kind", str(x)))
def test_xla_path_of_banded_and_causal_patterns_never_builds_lq_by_lk_arrays(pattern, lq, lk):
  q, k, v, km = inputs(11, 1, lq, lk, 1, 8, jnp.float32, key_dropout=0.2)
  f = lambda q, k, v: attention(q, k, v, pattern=pattern, key_mask=km, impl="xla")
  loss = lambda q, k, v: jnp.sum(f(q, k, v) ** 2)
  for jaxpr in (jax.make_jaxpr(f)(q, k, v), jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v)):
    assert _largest_array(jaxpr) < lq * lk / 2
  dense = jax.make_jaxpr(lambda q, k, v: attention_reference(q, k, v, pattern=pattern, key_mask=km))(q, k, v)
  assert _largest_array(dense) >= lq * lk   # the measure sees the reference's [Lq, Lk] logits
  check(f, pattern, q, k, v, km, 1e-5)
