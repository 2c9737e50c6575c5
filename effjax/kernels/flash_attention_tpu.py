"""TPU (Mosaic) kernels for block-sparse flash attention; called through `flash_attention.flash_attention`.

Arrays are in kernel layout: q [B, H, Lq_pad, D], k/v [B, H, Lk_pad, D(v)], coordinates qc [Lq_pad],
kc [Lk_pad], optional key mask km int32 [B, Lk_pad], lse/delta [B, H, Lq_pad].

Block sparsity: the grid is (B, H, P) over the P visited tiles of the plan. The tile list (q block,
k block, flags) is scalar-prefetched into SMEM and the BlockSpec index maps read it, so the pipeline
only DMAs and computes the listed tiles. Tiles of one q block (forward, dQ) or one k block (dK/dV) are
consecutive, so their output block stays resident in VMEM while f32 accumulators live in scratch; the
FIRST flag initialises them and the LAST flag writes the result. Fully visible tiles skip the mask
unless a key mask is given.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from effjax.kernels.attention_patterns import FIRST, LAST, MASKED
from effjax.kernels.dispatch import EMPTY_LSE, MASK_VALUE, NT


def default_blocks(lq, lk, head_dim=None):
  """(block_q, block_k): the key block is a multiple of 128 lanes unless it covers all keys (any head dim)."""
  del head_dim
  bq = min(128, -(-lq // 8) * 8)
  bk = 128 if lk > 128 else -(-lk // 8) * 8
  return bq, bk


def _visible(qc_ref, kc_ref, km_ref, bounds):
  """Bool [bq, bk]: lo <= c_k - c_q <= hi and the key is not masked out."""
  d = kc_ref[...] - qc_ref[...]          # [1, bk] - [bq, 1]
  ok = (d >= bounds[0]) & (d <= bounds[1])
  if km_ref is not None:
    ok = ok & (km_ref[...] != 0)
  return ok


def _flag(fl_ref, bit):
  return (fl_ref[pl.program_id(2)] & bit) != 0


def _both_paths(fl_ref, body, has_km):
  """Runs body(masked=True) on MASKED tiles and body(masked=False) on fully visible ones (with no key mask)."""
  if has_km:
    body(True)
    return
  pl.when(_flag(fl_ref, MASKED))(functools.partial(body, True))
  pl.when(jnp.logical_not(_flag(fl_ref, MASKED)))(functools.partial(body, False))


def _fwd_kernel(qi_ref, kj_ref, fl_ref, q_ref, k_ref, v_ref, qc_ref, kc_ref, *rest, scale, bounds, has_km):
  del qi_ref, kj_ref
  km_ref = rest[0] if has_km else None
  o_ref, lse_ref, m_sc, l_sc, acc_sc = rest[int(has_km):]

  @pl.when(_flag(fl_ref, FIRST))
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def tile(masked):
    v = v_ref[...]
    s = lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=jnp.float32) * scale
    if masked:
      ok = _visible(qc_ref, kc_ref, km_ref, bounds)
      s = jnp.where(ok, s, MASK_VALUE)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new)
    if masked:
      p = jnp.where(ok, p, 0.0)
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_sc[...] = alpha * acc_sc[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_sc[...] = m_new

  _both_paths(fl_ref, tile, has_km)

  @pl.when(_flag(fl_ref, LAST))
  def _finish():
    l = l_sc[...]
    empty = l == 0.0
    safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc_sc[...] / safe).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, EMPTY_LSE, m_sc[...] + jnp.log(safe))


def _probs(q, k, lse, qc_ref, kc_ref, km_ref, bounds, scale, masked):
  """Recomputed attention probabilities P [bq, bk] of one tile."""
  s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - lse)
  if masked:
    p = jnp.where(_visible(qc_ref, kc_ref, km_ref, bounds), p, 0.0)
  return p


def _dq_kernel(qi_ref, kj_ref, fl_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, *rest,
               scale, bounds, has_km):
  del qi_ref, kj_ref
  km_ref = rest[0] if has_km else None
  dq_ref, dq_sc = rest[int(has_km):]

  @pl.when(_flag(fl_ref, FIRST))
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def tile(masked):
    k = k_ref[...]
    p = _probs(q_ref[...], k, lse_ref[...], qc_ref, kc_ref, km_ref, bounds, scale, masked)
    dp = lax.dot_general(do_ref[...], v_ref[...], NT, preferred_element_type=jnp.float32)
    ds = p * (dp - dl_ref[...]) * scale
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  _both_paths(fl_ref, tile, has_km)

  @pl.when(_flag(fl_ref, LAST))
  def _finish():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_kernel(qi_ref, kj_ref, fl_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, *rest,
                scale, bounds, has_km):
  del qi_ref, kj_ref
  km_ref = rest[0] if has_km else None
  dk_ref, dv_ref, dk_sc, dv_sc = rest[int(has_km):]

  @pl.when(_flag(fl_ref, FIRST))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def tile(masked):
    q, do = q_ref[...], do_ref[...]
    p = _probs(q, k_ref[...], lse_ref[...], qc_ref, kc_ref, km_ref, bounds, scale, masked)
    dv_sc[...] += jnp.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = lax.dot_general(do, v_ref[...], NT, preferred_element_type=jnp.float32)
    ds = p * (dp - dl_ref[...]) * scale
    dk_sc[...] += jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

  _both_paths(fl_ref, tile, has_km)

  @pl.when(_flag(fl_ref, LAST))
  def _finish():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _specs(plan, q, k, v):
  """BlockSpecs shared by the three kernels; index maps read the scalar-prefetched tile list."""
  bq, bk = plan.block_q, plan.block_k
  qmap = lambda b, h, p, qi, kj, fl: (b, h, qi[p], 0)
  kmap = lambda b, h, p, qi, kj, fl: (b, h, kj[p], 0)
  return dict(
      q=pl.BlockSpec((None, None, bq, q.shape[-1]), qmap),
      o=pl.BlockSpec((None, None, bq, v.shape[-1]), qmap),      # output / its cotangent
      k=pl.BlockSpec((None, None, bk, k.shape[-1]), kmap),
      v=pl.BlockSpec((None, None, bk, v.shape[-1]), kmap),
      row=pl.BlockSpec((None, None, bq, 1), qmap),               # per-query LSE / delta
      qc=pl.BlockSpec((bq, 1), lambda b, h, p, qi, kj, fl: (qi[p], 0)),
      kc=pl.BlockSpec((1, bk), lambda b, h, p, qi, kj, fl: (0, kj[p])),
      km=pl.BlockSpec((None, 1, bk), lambda b, h, p, qi, kj, fl: (b, 0, kj[p])))


def _call(kernel, pairs, in_specs, out_specs, out_shape, scratch, args, interpret):
  b, h = args[0].shape[:2]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3, grid=(b, h, pairs.shape[1]), in_specs=in_specs, out_specs=out_specs,
      scratch_shapes=scratch)
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape, interpret=interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
  )(jnp.asarray(pairs[0]), jnp.asarray(pairs[1]), jnp.asarray(pairs[2]), *args)


def _coords(qc, kc):
  return jnp.asarray(qc).reshape(-1, 1), jnp.asarray(kc).reshape(1, -1)


def forward(q, k, v, km, qc, kc, plan, *, scale, bounds, interpret=False):
  """Returns (o [B, H, Lq_pad, Dv], lse [B, H, Lq_pad] f32)."""
  s = _specs(plan, q, k, v)
  b, h, lq, _ = q.shape
  dv = v.shape[-1]
  in_specs = [s["q"], s["k"], s["v"], s["qc"], s["kc"]]
  args = [q, k, v, *_coords(qc, kc)]
  if km is not None:
    in_specs.append(s["km"])
    args.append(km[:, None, :])
  kernel = functools.partial(_fwd_kernel, scale=scale, bounds=bounds, has_km=km is not None)
  o, lse = _call(
      kernel, plan.q_major, in_specs, [s["o"], s["row"]],
      [jax.ShapeDtypeStruct((b, h, lq, dv), q.dtype), jax.ShapeDtypeStruct((b, h, lq, 1), jnp.float32)],
      [pltpu.VMEM((plan.block_q, 1), jnp.float32), pltpu.VMEM((plan.block_q, 1), jnp.float32),
       pltpu.VMEM((plan.block_q, dv), jnp.float32)],
      args, interpret)
  return o, lse[..., 0]


def backward(q, k, v, km, qc, kc, lse, delta, do, plan, *, scale, bounds, interpret=False):
  """Returns (dq, dk, dv) in the kernel layout."""
  s = _specs(plan, q, k, v)
  kw = dict(scale=scale, bounds=bounds, has_km=km is not None)
  in_specs = [s["q"], s["k"], s["v"], s["o"], s["row"], s["row"], s["qc"], s["kc"]]
  args = [q, k, v, do, lse[..., None], delta[..., None], *_coords(qc, kc)]
  if km is not None:
    in_specs.append(s["km"])
    args.append(km[:, None, :])
  f32 = jnp.float32
  dq = _call(functools.partial(_dq_kernel, **kw), plan.q_major, in_specs, s["q"],
             jax.ShapeDtypeStruct(q.shape, q.dtype), [pltpu.VMEM((plan.block_q, q.shape[-1]), f32)],
             args, interpret)
  dk, dv = _call(functools.partial(_dkv_kernel, **kw), plan.k_major, in_specs, [s["k"], s["v"]],
                 [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 [pltpu.VMEM((plan.block_k, k.shape[-1]), f32), pltpu.VMEM((plan.block_k, v.shape[-1]), f32)],
                 args, interpret)
  return dq, dk, dv
