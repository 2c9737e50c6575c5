"""GPU (Pallas Triton) kernels for block-sparse flash attention; called through `flash_attention`.

Same arrays as the TPU backend (kernel layout [B, H, L_pad, D]). Triton programs cannot take their
BlockSpec index maps from prefetched scalars, so block sparsity is a loop instead: program (i, b, h) owns
one q block (forward, dQ) or one k block (dK/dV) and loops over the row of the tile plan stored in CSR
form (`starts` [n+1], `cols` [P], `masked` [P]), loading only the listed key (resp. query) tiles with dynamic
slices. Tiles the pattern covers completely (`masked` 0) take a fast path without the visibility arithmetic
unless there is a key mask. Softmax runs in base 2 as in jax's own Pallas GPU attention: logits are scaled by
scale·log2(e), exponentials are exp2, and the saved LSE (shared by the backward kernels only) is base 2.
Head dims are zero-padded to a power of two >= 16 (Triton block shapes), which changes no result. Tiles:
64×64 up to head dim 128 and 32×32 above (shared memory); 4 warps up to head dim 64, else 8 (jax's choice).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from effjax.kernels.attention_patterns import MASKED
from effjax.kernels.dispatch import EMPTY_LSE, MASK_VALUE

LOG2E = float(np.log2(np.e))


def default_blocks(lq, lk, head_dim=64):
  """(block_q, block_k): powers of two, 64 (32 above head dim 128) unless the sequence is shorter."""
  b = 64 if head_dim <= 128 else 32
  return (min(b, max(16, pl.next_power_of_2(lq))), min(b, max(16, pl.next_power_of_2(lk))))


def _csr(pairs, major, n):
  """Tile list -> (starts [n + 1], cols [P], masked [P]) of the `major` row (0: q blocks, 1: k blocks), padded
  to powers of two; masked[t] = 1 where tile t needs the visibility test."""
  starts = np.searchsorted(pairs[major], np.arange(n + 1)).astype(np.int32)
  cols = pairs[1 - major].astype(np.int32)
  masked = (pairs[2] & MASKED != 0).astype(np.int32)

  def pad(a):
    return jnp.asarray(np.pad(a, (0, pl.next_power_of_2(a.size) - a.size)))
  return pad(starts), pad(cols), pad(masked)


def _pad_dim(x, d):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, d - x.shape[-1])])


def _visible(qc, kc, km, bounds):
  """Bool [bq, bk] of the visible pairs of a tile; None (all visible) for a full tile without a key mask."""
  ok = None
  if qc is not None:
    d = kc()[None, :] - qc()[:, None]
    ok = (d >= bounds[0]) & (d <= bounds[1])
  if km is not None:
    seen = km()[None, :] != 0
    ok = seen if ok is None else ok & seen
  return ok


def _tile(masked, step, qc, kc, km, bounds):
  """step(ok) on a tile: with the pattern test where masked[t], without it (the fast path) elsewhere."""
  return lax.cond(masked != 0, lambda: step(_visible(qc, kc, km, bounds)), lambda: step(_visible(None, kc, km, bounds)))


def _fwd_kernel(q_ref, k_ref, v_ref, qc_ref, kc_ref, starts_ref, cols_ref, masked_ref, *rest, scale, bounds, bk,
                has_km):
  km_ref = rest[0] if has_km else None
  o_ref, lse_ref = rest[int(has_km):]
  i = pl.program_id(0)
  q = q_ref[...]

  def body(t, carry):
    acc, m, l = carry
    keys = pl.ds(pl.multiple_of(cols_ref[t] * bk, bk), bk)
    v = v_ref[keys, :]
    s = plgpu.dot(q, k_ref[keys, :], trans_b=True) * (scale * LOG2E)

    def step(ok):
      s_ok = s if ok is None else jnp.where(ok, s, MASK_VALUE)
      m_new = jnp.maximum(m, jnp.max(s_ok, axis=1))
      p = jnp.exp2(s_ok - m_new[:, None])
      return m_new, (p if ok is None else jnp.where(ok, p, 0.0))

    m_new, p = _tile(masked_ref[t], step, lambda: qc_ref[...], lambda: kc_ref[keys],
                     (lambda: km_ref[keys]) if has_km else None, bounds)
    alpha = jnp.exp2(m - m_new)
    acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  bq = q.shape[0]
  init = (jnp.zeros((bq, o_ref.shape[-1]), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = lax.fori_loop(starts_ref[i], starts_ref[i + 1], body, init)
  empty = l == 0.0
  safe = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, EMPTY_LSE, m + jnp.log2(safe))


def _probs(q, k, lse, ok, scale):
  """P = 2^(q kᵀ · scale·log2(e) − LSE₂) of a tile, 0 where not `ok` (None: all visible)."""
  p = jnp.exp2(plgpu.dot(q, k, trans_b=True) * (scale * LOG2E) - lse[:, None])
  return p if ok is None else jnp.where(ok, p, 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, starts_ref, cols_ref, masked_ref,
               *rest, scale, bounds, bk, has_km):
  km_ref = rest[0] if has_km else None
  (dq_ref,) = rest[int(has_km):]
  i = pl.program_id(0)
  q, do, lse, dl = q_ref[...], do_ref[...], lse_ref[...], dl_ref[...]

  def body(t, dq):
    keys = pl.ds(pl.multiple_of(cols_ref[t] * bk, bk), bk)
    k = k_ref[keys, :]
    p = _tile(masked_ref[t], lambda ok: _probs(q, k, lse, ok, scale), lambda: qc_ref[...], lambda: kc_ref[keys],
              (lambda: km_ref[keys]) if has_km else None, bounds)
    dp = plgpu.dot(do, v_ref[keys, :], trans_b=True)
    ds = p * (dp - dl[:, None]) * scale
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(starts_ref[i], starts_ref[i + 1], body, jnp.zeros(dq_ref.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, starts_ref, cols_ref, masked_ref,
                *rest, scale, bounds, bq, has_km):
  """dK and dV of one key block in one pass over its query tiles (the fused dK/dV kernel)."""
  km_ref = rest[0] if has_km else None
  dk_ref, dv_ref = rest[int(has_km):]
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]

  def body(t, carry):
    dk, dv = carry
    rows = pl.ds(pl.multiple_of(cols_ref[t] * bq, bq), bq)
    q, do, lse = q_ref[rows, :], do_ref[rows, :], lse_ref[rows]
    p = _tile(masked_ref[t], lambda ok: _probs(q, k, lse, ok, scale), lambda: qc_ref[rows], lambda: kc_ref[...],
              (lambda: km_ref[...]) if has_km else None, bounds)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    dp = plgpu.dot(do, v, trans_b=True)
    ds = p * (dp - dl_ref[rows][:, None]) * scale
    return dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True), dv

  init = (jnp.zeros(dk_ref.shape, jnp.float32), jnp.zeros(dv_ref.shape, jnp.float32))
  dk, dv = lax.fori_loop(starts_ref[j], starts_ref[j + 1], body, init)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _block(shape, index_map):
  return pl.BlockSpec(shape, index_map)


def _call(kernel, grid, in_specs, out_specs, out_shape, args, interpret, name, head_dim):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
      compiler_params=plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2), name=name)(*args)


def _padded(q, k, v):
  d, dv = (max(16, pl.next_power_of_2(x.shape[-1])) for x in (q, v))
  return _pad_dim(q, d), _pad_dim(k, d), _pad_dim(v, dv)


def forward(q, k, v, km, qc, kc, plan, *, scale, bounds, interpret=False):
  """Returns (o [B, H, Lq_pad, Dv], lse [B, H, Lq_pad] f32)."""
  b, h, lq, _ = q.shape
  dv_orig = v.shape[-1]
  qp, kp, vp = _padded(q, k, v)
  lk, bq, bk = k.shape[2], plan.block_q, plan.block_k
  csr = _csr(plan.q_major, 0, lq // bq)
  full = lambda a: _block(a.shape, lambda i, bb, hh: (0,) * a.ndim)
  in_specs = [_block((None, None, bq, qp.shape[-1]), lambda i, bb, hh: (bb, hh, i, 0)),
              _block((None, None, lk, kp.shape[-1]), lambda i, bb, hh: (bb, hh, 0, 0)),
              _block((None, None, lk, vp.shape[-1]), lambda i, bb, hh: (bb, hh, 0, 0)),
              _block((bq,), lambda i, bb, hh: (i,)), full(kc), *map(full, csr)]
  args = [qp, kp, vp, jnp.asarray(qc), jnp.asarray(kc), *csr]
  if km is not None:
    in_specs.append(_block((None, lk), lambda i, bb, hh: (bb, 0)))
    args.append(km)
  kernel = functools.partial(_fwd_kernel, scale=scale, bounds=bounds, bk=bk, has_km=km is not None)
  o, lse = _call(
      kernel, (lq // bq, b, h), in_specs,
      [_block((None, None, bq, vp.shape[-1]), lambda i, bb, hh: (bb, hh, i, 0)),
       _block((None, None, bq), lambda i, bb, hh: (bb, hh, i))],
      [jax.ShapeDtypeStruct((b, h, lq, vp.shape[-1]), q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      args, interpret, "flash_fwd", qp.shape[-1])
  return o[..., :dv_orig], lse


def backward(q, k, v, km, qc, kc, lse, delta, do, plan, *, scale, bounds, interpret=False):
  """Returns (dq, dk, dv) in the kernel layout."""
  b, h, lq, d = q.shape
  lk, dv_orig = k.shape[2], v.shape[-1]
  qp, kp, vp = _padded(q, k, v)
  dop = _pad_dim(do, vp.shape[-1])
  bq, bk = plan.block_q, plan.block_k
  has_km = km is not None
  kw = dict(scale=scale, bounds=bounds, has_km=has_km)
  full = lambda a: _block(a.shape, lambda i, bb, hh: (0,) * a.ndim)
  tail = [jnp.asarray(qc), jnp.asarray(kc)]
  row = lambda n, dd: _block((None, None, n, dd), lambda i, bb, hh: (bb, hh, i, 0))
  whole = lambda n, dd: _block((None, None, n, dd), lambda i, bb, hh: (bb, hh, 0, 0))
  vec = lambda n: _block((None, None, n), lambda i, bb, hh: (bb, hh, i))
  allvec = lambda n: _block((None, None, n), lambda i, bb, hh: (bb, hh, 0))
  km_whole = [_block((None, lk), lambda i, bb, hh: (bb, 0))] if has_km else []
  km_row = [_block((None, bk), lambda i, bb, hh: (bb, i))] if has_km else []
  args_tail = [km] if has_km else []

  csr = _csr(plan.q_major, 0, lq // bq)
  dq = _call(functools.partial(_dq_kernel, bk=bk, **kw), (lq // bq, b, h),
             [row(bq, qp.shape[-1]), whole(lk, kp.shape[-1]), whole(lk, vp.shape[-1]), row(bq, dop.shape[-1]),
              vec(bq), vec(bq), _block((bq,), lambda i, bb, hh: (i,)), full(tail[1]), *map(full, csr), *km_whole],
             row(bq, qp.shape[-1]), jax.ShapeDtypeStruct(qp.shape, q.dtype),
             [qp, kp, vp, dop, lse, delta, *tail, *csr, *args_tail], interpret, "flash_dq", qp.shape[-1])

  csr = _csr(plan.k_major, 1, lk // bk)
  dk, dv = _call(functools.partial(_dkv_kernel, bq=bq, **kw), (lk // bk, b, h),
                 [whole(lq, qp.shape[-1]), row(bk, kp.shape[-1]), row(bk, vp.shape[-1]), whole(lq, dop.shape[-1]),
                  allvec(lq), allvec(lq), full(tail[0]), _block((bk,), lambda i, bb, hh: (i,)), *map(full, csr),
                  *km_row],
                 [row(bk, kp.shape[-1]), row(bk, vp.shape[-1])],
                 [jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
                 [qp, kp, vp, dop, lse, delta, *tail, *csr, *args_tail], interpret, "flash_dkv", qp.shape[-1])
  return dq[..., :d], dk[..., :d], dv[..., :dv_orig]
