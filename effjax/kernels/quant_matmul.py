"""Weight-only quantized matmul with the dequantization inside the kernel (AWQ's W4A16 / W8A16 GEMM):

    y = x · Ŵ,   Ŵ[k, n] = (codes[k, n] − zero[k // g, n]) · delta[k // g, n]       x [M, K], codes [K, N]

with per-output-channel groups of g input rows (`effjax.layers.awq.quantize`). `quant_matmul_reference` is the
XLA path (dequantize the whole matrix, then one dot). `quant_matmul_pallas` tiles (M, N, K); each K tile is a
whole number of groups, and for every group in it the kernel dequantizes the [g, bn] code tile in registers and
accumulates x_tile · Ŵ_tile into the float32 output block, so the float weight matrix never exists in memory.
Checked in interpret mode against the reference (tests/kernels/test_quant_matmul.py); not yet in the dispatch
record (effjax/kernels/dispatch.py) nor validated on hardware, so `effjax.layers.awq` uses it only when asked
(impl="pallas").
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def dequantize(codes, delta, zero):
  """Ŵ [K, N] float32 from codes [K, N] (any unsigned int type) and delta/zero [K/g, N]."""
  k, n = codes.shape
  groups = delta.shape[0]
  w = (codes.astype(jnp.float32).reshape(groups, k // groups, n) - zero[:, None]) * delta[:, None]
  return w.reshape(k, n)


def quant_matmul_reference(x, codes, delta, zero):
  """XLA: dequantize, then one dot. x [M, K] -> [M, N]."""
  return x @ dequantize(codes, delta, zero).astype(x.dtype)


def quant_matmul(x, codes, delta, zero, impl="xla"):
  """x [..., K] -> [..., N]; impl "xla" (the reference) or "pallas" (the kernel; interpret mode on CPU)."""
  if impl not in ("xla", "pallas"):
    raise ValueError(f"quant_matmul impl must be 'xla' or 'pallas', got {impl!r}")
  rows = x.reshape(-1, x.shape[-1])
  if impl == "xla":
    y = quant_matmul_reference(rows, codes, delta, zero)
  else:
    y = quant_matmul_pallas(rows, codes, delta, zero, interpret=jax.default_backend() == "cpu").astype(x.dtype)
  return y.reshape(x.shape[:-1] + (codes.shape[1],))


def _tile(size, preferred, multiple=1):
  """The largest divisor of `size` that is a multiple of `multiple` and at most `preferred` (else size)."""
  best = size
  for t in range(multiple, min(size, preferred) + 1, multiple):
    if size % t == 0:
      best = t
  return best


def _kernel(x_ref, c_ref, d_ref, z_ref, o_ref, *, group):
  @pl.when(pl.program_id(2) == 0)
  def _():
    o_ref[...] = jnp.zeros_like(o_ref)

  acc = o_ref[...]
  for j in range(c_ref.shape[0] // group):  # the groups of this K tile, dequantized one [g, bn] slab at a time
    w = (c_ref[j * group:(j + 1) * group, :].astype(jnp.float32) - z_ref[j:j + 1, :]) * d_ref[j:j + 1, :]
    acc += jnp.dot(x_ref[:, j * group:(j + 1) * group].astype(jnp.float32), w,
                   preferred_element_type=jnp.float32)
  o_ref[...] = acc


@functools.partial(jax.jit, static_argnames=("block_m", "block_n", "block_k", "interpret"))
def quant_matmul_pallas(x, codes, delta, zero, *, block_m=128, block_n=256, block_k=512, interpret=False):
  """Pallas kernel of `quant_matmul_reference` (float32 result); M is padded to the row tile."""
  m, k = x.shape
  n = codes.shape[1]
  groups = delta.shape[0]
  if k % groups or codes.shape[0] != k or delta.shape != (groups, n) or zero.shape != (groups, n):
    raise ValueError(f"quant_matmul: x {x.shape}, codes {codes.shape}, delta {delta.shape}, zero {zero.shape} "
                     f"do not fit (codes [K, N], delta/zero [groups, N] with groups dividing K)")
  g = k // groups
  bk = _tile(k, max(block_k, g), g)
  bn = _tile(n, block_n)
  bm = min(block_m, -(-m // 8) * 8)
  mp = -(-m // bm) * bm
  xp = jnp.pad(x, ((0, mp - m), (0, 0)))
  out = pl.pallas_call(
      functools.partial(_kernel, group=g),
      grid=(mp // bm, n // bn, k // bk),
      in_specs=[pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)),
                pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j)),
                pl.BlockSpec((bk // g, bn), lambda i, j, kk: (kk, j)),
                pl.BlockSpec((bk // g, bn), lambda i, j, kk: (kk, j))],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
      out_shape=jax.ShapeDtypeStruct((mp, n), jnp.float32),
      interpret=interpret,
  )(xp, codes.astype(jnp.uint8), delta.astype(jnp.float32), zero.astype(jnp.float32))
  return out[:m]
