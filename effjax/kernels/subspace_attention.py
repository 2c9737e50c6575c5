"""Subspace self-attention for CRATE's MSSA, where query = key = value = W = Uᵀz:

    O = softmax(W Wᵀ · scale) W                  W, O: [B, L, H, D]

TPU kernels (Mosaic), in kernel layout [B, H, L_pad, D]:
* forward, grid (B, H, q blocks): the whole W of one (b, h) sits in VMEM (its block index does not change
  along the q axis, so it is DMA'd once) and every tile is sliced from it: W is read from HBM once, not
  three times (q, k, v). Online softmax over key tiles; padded keys are masked.
* backward, grid (B, H, pairs i <= j): S = W Wᵀ is symmetric, so one S_ij tile gives the probabilities of
  both (query i, key j) and (query j, key i). With E = dS_ij + dS_jiᵀ (scaled),
      dW_i += E W_j + P_jiᵀ dO_j,      dW_j += Eᵀ W_i + P_ijᵀ dO_i      (i < j; only the first for i = j),
  i.e. 7 tile matmuls per pair of tiles instead of 2 x 7 for separate dQ and dK/dV kernels over every tile,
  and dQ + dK + dV is accumulated directly in one f32 VMEM buffer.
On GPU the op runs the generic block-sparse flash kernel with q = k = v (`flash_attention`, Triton).
The resident-W design needs L_pad · D to fit VMEM; longer sequences use the generic kernel as well.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from effjax.kernels import dispatch
from effjax.kernels.attention import attention_reference
from effjax.kernels.dispatch import MASK_VALUE, NT
from effjax.kernels.flash_attention import flash_attention

MAX_RESIDENT_BYTES = 4 << 20


def subspace_attention_reference(w, *, scale=None):
  """softmax(w wᵀ · scale) w with w [B, L, H, D] (XLA)."""
  return attention_reference(w, w, w, scale=scale)


def _xla_forward(w, scale):
  """Head-major (w [B, H, L, D]) forward: (out [B, H, L, D], probabilities [B, H, L, L] in float32)."""
  s = jnp.einsum("bhld,bhmd->bhlm", w, w, preferred_element_type=jnp.float32) * scale
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhlm,bhmd->bhld", p.astype(w.dtype), w), p


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _xla_head_major(w, scale):
  return _xla_forward(w, scale)[0]


def _xla_fwd(w, scale):
  o, p = _xla_forward(w, scale)
  return o, (w, p, o)


def _xla_bwd(scale, res, do):
  """With P = softmax(S), S = scale·W Wᵀ and O = P W (W is query, key and value at once):
  dS = P ⊙ (dO Wᵀ − rowsum(dO ⊙ O)) and dW = Pᵀ dO + scale·(dS + dSᵀ) W: the query and key gradients share
  one matmul (autodiff of the generic attention spends two)."""
  w, p, o = res
  dp = jnp.einsum("bhld,bhmd->bhlm", do, w, preferred_element_type=jnp.float32)
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  ds = p * (dp - delta)
  e = ((ds + jnp.swapaxes(ds, -1, -2)) * scale).astype(w.dtype)
  dw = jnp.einsum("bhml,bhmd->bhld", p.astype(w.dtype), do) + jnp.einsum("bhlm,bhmd->bhld", e, w)
  return (dw.astype(w.dtype),)


_xla_head_major.defvjp(_xla_fwd, _xla_bwd)


def subspace_attention_xla(w, *, scale=None):
  """The "xla" path: the reference's maths in head-major layout with a backward that uses q = k = v (see
  `_xla_bwd`); on the 2-core CPU it makes a CRATE-T training step ≈ 10% faster than autodiff of
  `attention_reference` (experiments/crate/README.md, levers). w [B, L, H, D] -> [B, L, H, D]."""
  scale = w.shape[-1] ** -0.5 if scale is None else float(scale)
  return _xla_head_major(w.transpose(0, 2, 1, 3), scale).transpose(0, 2, 1, 3)


def _rows(i, block):
  return pl.ds(pl.multiple_of(i * block, block), block)


def _fwd_kernel(w_ref, o_ref, lse_ref, *, scale, length, block):
  q = w_ref[_rows(pl.program_id(2), block), :]

  def body(j, carry):
    acc, m, l = carry
    kv = w_ref[_rows(j, block), :]
    s = lax.dot_general(q, kv, NT, preferred_element_type=jnp.float32) * scale
    col = j * block + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(col < length, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    acc = alpha * acc + jnp.dot(p.astype(kv.dtype), kv, preferred_element_type=jnp.float32)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True)

  init = (jnp.zeros(o_ref.shape, jnp.float32), jnp.full((block, 1), MASK_VALUE, jnp.float32),
          jnp.zeros((block, 1), jnp.float32))
  acc, m, l = lax.fori_loop(0, w_ref.shape[0] // block, body, init)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _bwd_kernel(bi_ref, bj_ref, w_ref, do_ref, lse_c_ref, lse_r_ref, dl_c_ref, dl_r_ref, dw_ref, acc_ref, *,
                scale, length, block):
  p = pl.program_id(2)
  i, j = bi_ref[p], bj_ref[p]

  @pl.when(p == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  ri, rj = _rows(i, block), _rows(j, block)
  wi, wj, doi, doj = w_ref[ri, :], w_ref[rj, :], do_ref[ri, :], do_ref[rj, :]
  s = lax.dot_general(wi, wj, NT, preferred_element_type=jnp.float32) * scale         # S_ij = S_jiᵀ
  row = i * block + lax.broadcasted_iota(jnp.int32, s.shape, 0)
  col = j * block + lax.broadcasted_iota(jnp.int32, s.shape, 1)
  valid = (row < length) & (col < length)
  p_ij = jnp.where(valid, jnp.exp(s - lse_c_ref[ri, :]), 0.0)                       # query i, key j
  p_ji_t = jnp.where(valid, jnp.exp(s - lse_r_ref[:, rj]), 0.0)                     # (query j, key i)ᵀ
  ds_ij = p_ij * (lax.dot_general(doi, wj, NT, preferred_element_type=jnp.float32) - dl_c_ref[ri, :])
  ds_ji_t = p_ji_t * (lax.dot_general(wi, doj, NT, preferred_element_type=jnp.float32) - dl_r_ref[:, rj])
  e = (ds_ij + ds_ji_t) * scale
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  acc_ref[ri, :] += dot(e.astype(wj.dtype), wj) + dot(p_ji_t.astype(doj.dtype), doj)

  @pl.when(i != j)
  def _mirror():  # transposes in f32, then cast for the MXU
    acc_ref[rj, :] += dot(e.T.astype(wi.dtype), wi) + dot(p_ij.T.astype(doi.dtype), doi)

  @pl.when(p == pl.num_programs(2) - 1)
  def _finish():
    dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


def _whole(shape):
  return pl.BlockSpec((None, None) + shape, lambda b, h, *_: (b, h, 0, 0))


def _forward(w, *, scale, length, block, interpret):
  b, h, lp, d = w.shape
  kernel = functools.partial(_fwd_kernel, scale=scale, length=length, block=block)
  return pl.pallas_call(
      kernel, grid=(b, h, lp // block), in_specs=[_whole((lp, d))],
      out_specs=[pl.BlockSpec((None, None, block, d), lambda b, h, i: (b, h, i, 0)),
                 pl.BlockSpec((None, None, block, 1), lambda b, h, i: (b, h, i, 0))],
      out_shape=[jax.ShapeDtypeStruct(w.shape, w.dtype), jax.ShapeDtypeStruct((b, h, lp, 1), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel")),
      interpret=interpret)(w)


def _backward(w, do, lse, delta, *, scale, length, block, interpret):
  b, h, lp, d = w.shape
  n = lp // block
  pairs = np.array([(i, j) for i in range(n) for j in range(i, n)], np.int32).T
  kernel = functools.partial(_bwd_kernel, scale=scale, length=length, block=block)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, pairs.shape[1]),
      in_specs=[_whole((lp, d)), _whole((lp, d)), _whole((lp, 1)), _whole((1, lp)), _whole((lp, 1)),
                _whole((1, lp))],
      out_specs=_whole((lp, d)), scratch_shapes=[pltpu.VMEM((lp, d), jnp.float32)])
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct(w.shape, w.dtype), interpret=interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
  )(jnp.asarray(pairs[0]), jnp.asarray(pairs[1]), w, do, lse, lse.swapaxes(2, 3), delta, delta.swapaxes(2, 3))


def _make_core(scale, length, block, interpret):
  kw = dict(scale=scale, length=length, block=block, interpret=interpret)

  @jax.custom_vjp
  def core(w):
    return _forward(w, **kw)[0]

  def fwd(w):
    o, lse = _forward(w, **kw)
    return o, (w, o, lse)

  def bwd(res, do):
    w, o, lse = res
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    return (_backward(w, do, lse, delta, **kw),)

  core.defvjp(fwd, bwd)
  return core


def subspace_attention_tpu(w, *, scale=None, block=128, interpret=False):
  """The TPU kernels above; w [B, L, H, D] -> [B, L, H, D]."""
  b, length, h, d = w.shape
  block = min(block, -(-length // 8) * 8)
  lp = -(-length // block) * block
  scale = d ** -0.5 if scale is None else float(scale)
  wk = jnp.pad(w, ((0, 0), (0, lp - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  out = _make_core(scale, length, block, interpret)(wk)
  return out.transpose(0, 2, 1, 3)[:, :length]


def subspace_attention(w, *, scale=None, impl="auto", block=128, backend=None, interpret=None):
  """Dispatch (`dispatch.resolve`): "xla" (`subspace_attention_xla`); "pallas" (the TPU kernels above,
  interpret mode on CPU; the Triton flash kernel on GPU; the generic flash kernel when W does not fit VMEM);
  "auto" = "pallas" where validated, else "xla". w: [B, L, H, D] -> [B, L, H, D]."""
  if w.ndim != 4:
    raise ValueError(f"subspace attention expects w [B, L, H, D], got shape {w.shape}")
  kernel = dispatch.resolve("subspace_attention", impl, backend=backend, interpret=interpret, pattern="full",
                            dtype=w.dtype, head_dim=w.shape[-1])
  if kernel is None:
    return subspace_attention_xla(w, scale=scale)
  lp = -(-w.shape[1] // block) * block
  if kernel.backend == "gpu" or lp * w.shape[-1] * 4 > MAX_RESIDENT_BYTES:
    return flash_attention(w, w, w, scale=scale, backend=kernel.backend, interpret=kernel.interpret)
  return subspace_attention_tpu(w, scale=scale, block=block, interpret=kernel.interpret)
