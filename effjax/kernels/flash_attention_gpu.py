"""GPU (Pallas Triton) kernels for block-sparse flash attention; called through `flash_attention`.

Same arrays as the TPU backend (kernel layout [B, H, L_pad, D]). Triton programs cannot take their
BlockSpec index maps from prefetched scalars, so block sparsity is a loop instead: program (i, b, h) owns
one q block (forward, dQ) or one k block (dK/dV) and loops over the row of the tile plan stored in CSR
form (`starts` [n+1], `cols` [P]), loading only the listed key (resp. query) tiles with dynamic slices.
Head dims are zero-padded to a power of two >= 16 (Triton block shapes), which changes no result.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from effjax.kernels.dispatch import EMPTY_LSE, MASK_VALUE


def default_blocks(lq, lk):
  """(block_q, block_k): powers of two, 64 unless the sequence is shorter."""
  return (min(64, max(16, pl.next_power_of_2(lq))), min(64, max(16, pl.next_power_of_2(lk))))


def _csr(pairs, major, n):
  """Tile list -> (starts [n + 1], cols [P]) of the `major` row (0: q blocks, 1: k blocks), padded to 2^k."""
  starts = np.searchsorted(pairs[major], np.arange(n + 1)).astype(np.int32)
  cols = pairs[1 - major].astype(np.int32)

  def pad(a):
    return jnp.asarray(np.pad(a, (0, pl.next_power_of_2(a.size) - a.size)))
  return pad(starts), pad(cols)


def _pad_dim(x, d):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, d - x.shape[-1])])


def _visible(qc, kc, km, bounds):
  d = kc[None, :] - qc[:, None]
  ok = (d >= bounds[0]) & (d <= bounds[1])
  if km is not None:
    ok = ok & (km[None, :] != 0)
  return ok


def _fwd_kernel(q_ref, k_ref, v_ref, qc_ref, kc_ref, starts_ref, cols_ref, *rest, scale, bounds, bk, has_km):
  km_ref = rest[0] if has_km else None
  o_ref, lse_ref = rest[int(has_km):]
  i = pl.program_id(0)
  q, qc = q_ref[...], qc_ref[...]

  def body(t, carry):
    acc, m, l = carry
    keys = pl.ds(pl.multiple_of(cols_ref[t] * bk, bk), bk)
    v = v_ref[keys, :]
    s = plgpu.dot(q, k_ref[keys, :], trans_b=True) * scale
    ok = _visible(qc, kc_ref[keys], km_ref[keys] if has_km else None, bounds)
    s = jnp.where(ok, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.where(ok, jnp.exp(s - m_new[:, None]), 0.0)
    acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  bq = q.shape[0]
  init = (jnp.zeros((bq, o_ref.shape[-1]), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = lax.fori_loop(starts_ref[i], starts_ref[i + 1], body, init)
  empty = l == 0.0
  safe = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, EMPTY_LSE, m + jnp.log(safe))


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, starts_ref, cols_ref, *rest,
               scale, bounds, bk, has_km):
  km_ref = rest[0] if has_km else None
  (dq_ref,) = rest[int(has_km):]
  i = pl.program_id(0)
  q, do, lse, dl, qc = q_ref[...], do_ref[...], lse_ref[...], dl_ref[...], qc_ref[...]

  def body(t, dq):
    keys = pl.ds(pl.multiple_of(cols_ref[t] * bk, bk), bk)
    k = k_ref[keys, :]
    ok = _visible(qc, kc_ref[keys], km_ref[keys] if has_km else None, bounds)
    p = jnp.where(ok, jnp.exp(plgpu.dot(q, k, trans_b=True) * scale - lse[:, None]), 0.0)
    dp = plgpu.dot(do, v_ref[keys, :], trans_b=True)
    ds = p * (dp - dl[:, None]) * scale
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(starts_ref[i], starts_ref[i + 1], body, jnp.zeros(dq_ref.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qc_ref, kc_ref, starts_ref, cols_ref, *rest,
                scale, bounds, bq, has_km):
  km_ref = rest[0] if has_km else None
  dk_ref, dv_ref = rest[int(has_km):]
  j = pl.program_id(0)
  k, v, kc = k_ref[...], v_ref[...], kc_ref[...]
  km = km_ref[...] if has_km else None

  def body(t, carry):
    dk, dv = carry
    rows = pl.ds(pl.multiple_of(cols_ref[t] * bq, bq), bq)
    q, do = q_ref[rows, :], do_ref[rows, :]
    ok = _visible(qc_ref[rows], kc, km, bounds)
    p = jnp.where(ok, jnp.exp(plgpu.dot(q, k, trans_b=True) * scale - lse_ref[rows][:, None]), 0.0)
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


def _call(kernel, grid, in_specs, out_specs, out_shape, args, interpret, name):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2), name=name)(*args)


def _padded(q, k, v):
  d, dv = (max(16, pl.next_power_of_2(x.shape[-1])) for x in (q, v))
  return _pad_dim(q, d), _pad_dim(k, d), _pad_dim(v, dv)


def forward(q, k, v, km, qc, kc, plan, *, scale, bounds, interpret=False):
  """Returns (o [B, H, Lq_pad, Dv], lse [B, H, Lq_pad] f32)."""
  b, h, lq, _ = q.shape
  dv_orig = v.shape[-1]
  qp, kp, vp = _padded(q, k, v)
  lk, bq, bk = k.shape[2], plan.block_q, plan.block_k
  starts, cols = _csr(plan.q_major, 0, lq // bq)
  full = lambda a: _block(a.shape, lambda i, bb, hh: (0,) * a.ndim)
  in_specs = [_block((None, None, bq, qp.shape[-1]), lambda i, bb, hh: (bb, hh, i, 0)),
              _block((None, None, lk, kp.shape[-1]), lambda i, bb, hh: (bb, hh, 0, 0)),
              _block((None, None, lk, vp.shape[-1]), lambda i, bb, hh: (bb, hh, 0, 0)),
              _block((bq,), lambda i, bb, hh: (i,)), full(kc), full(starts), full(cols)]
  args = [qp, kp, vp, jnp.asarray(qc), jnp.asarray(kc), starts, cols]
  if km is not None:
    in_specs.append(_block((None, lk), lambda i, bb, hh: (bb, 0)))
    args.append(km)
  kernel = functools.partial(_fwd_kernel, scale=scale, bounds=bounds, bk=bk, has_km=km is not None)
  o, lse = _call(
      kernel, (lq // bq, b, h), in_specs,
      [_block((None, None, bq, vp.shape[-1]), lambda i, bb, hh: (bb, hh, i, 0)),
       _block((None, None, bq), lambda i, bb, hh: (bb, hh, i))],
      [jax.ShapeDtypeStruct((b, h, lq, vp.shape[-1]), q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
      args, interpret, "flash_fwd")
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

  starts, cols = _csr(plan.q_major, 0, lq // bq)
  dq = _call(functools.partial(_dq_kernel, bk=bk, **kw), (lq // bq, b, h),
             [row(bq, qp.shape[-1]), whole(lk, kp.shape[-1]), whole(lk, vp.shape[-1]), row(bq, dop.shape[-1]),
              vec(bq), vec(bq), _block((bq,), lambda i, bb, hh: (i,)), full(tail[1]), full(starts), full(cols),
              *km_whole],
             row(bq, qp.shape[-1]), jax.ShapeDtypeStruct(qp.shape, q.dtype),
             [qp, kp, vp, dop, lse, delta, *tail, starts, cols, *args_tail], interpret, "flash_dq")

  starts, cols = _csr(plan.k_major, 1, lk // bk)
  dk, dv = _call(functools.partial(_dkv_kernel, bq=bq, **kw), (lk // bk, b, h),
                 [whole(lq, qp.shape[-1]), row(bk, kp.shape[-1]), row(bk, vp.shape[-1]), whole(lq, dop.shape[-1]),
                  allvec(lq), allvec(lq), full(tail[0]), _block((bk,), lambda i, bb, hh: (i,)), full(starts),
                  full(cols), *km_row],
                 [row(bk, kp.shape[-1]), row(bk, vp.shape[-1])],
                 [jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype)],
                 [qp, kp, vp, dop, lse, delta, *tail, starts, cols, *args_tail], interpret, "flash_dkv")
  return dq[..., :d], dk[..., :d], dv[..., :dv_orig]
