"""TPU (Mosaic) kernels of the depthwise convolution; called through `depthwise_conv.depthwise_conv`.

Grid (B, C / bc): one step holds a zero-padded [*S_pad, bc] slab of x in VMEM (channels on the 128 lanes)
and accumulates tap-shifted slabs times the tap weights in f32: outer taps in a loop, taps along the last
spatial axis unrolled. `dw` reduces g · shifted x over space for every tap (per batch element; the batch
sum is in XLA). The whole padded spatial slab must fit VMEM (e.g. 64x64 maps with a 31x31 kernel at bc=128).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu


def outer_taps(ksize):
  """Number of taps over all spatial axes but the last (looped), and a decoder of the flat index."""
  outer = ksize[:-1]

  def decode(t):
    idx = []
    for k in reversed(outer):  # t >= 0: truncating lax.rem/div (jnp's floor versions need `sign`)
      idx.append(lax.rem(t, k))
      t = lax.div(t, k)
    return tuple(reversed(idx))
  return math.prod(outer), decode


def _window(ref, start, last, size, dil_last):
  """ref[start_0 : +S_0, ..., last·d : +S_last, :] for dynamic leading starts and a static last start."""
  idx = tuple(pl.ds(s, n) for s, n in zip(start, size[:-1]))
  return ref[idx + (pl.ds(last * dil_last, size[-1]), slice(None))]


def _conv_kernel(x_ref, w_ref, o_ref, *, ksize, dil):
  size = o_ref.shape[:-1]
  n_outer, decode = outer_taps(ksize)

  def outer(t, acc):
    taps = decode(t)
    start = tuple(i * d for i, d in zip(taps, dil[:-1]))
    for kx in range(ksize[-1]):
      tap_w = w_ref[taps + (pl.ds(kx, 1), slice(None))].astype(jnp.float32)   # [1, bc]
      acc = acc + _window(x_ref, start, kx, size, dil[-1]).astype(jnp.float32) * tap_w
    return acc

  acc = lax.fori_loop(0, n_outer, outer, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _dw_kernel(x_ref, g_ref, dw_ref, *, ksize, dil):
  size = g_ref.shape[:-1]
  n_outer, decode = outer_taps(ksize)
  g = g_ref[...].astype(jnp.float32)

  def outer(t, carry):
    taps = decode(t)
    start = tuple(i * d for i, d in zip(taps, dil[:-1]))
    for kx in range(ksize[-1]):
      prod = _window(x_ref, start, kx, size, dil[-1]).astype(jnp.float32) * g
      for _ in range(len(size) - 1):
        prod = jnp.sum(prod, axis=0)
      dw_ref[taps + (pl.ds(kx, 1), slice(None))] = jnp.sum(prod, axis=0, keepdims=True)
    return carry

  lax.fori_loop(0, n_outer, outer, 0)


def _channel_block(c):
  return 128 if c % 128 == 0 else c


def _pallas(kernel, x_pad, other, out_shape, out_block, interpret):
  """Grid (B, C / bc) over channels-last slabs; `other` is the kernel (fwd) or the cotangent (dw)."""
  b, c = x_pad.shape[0], x_pad.shape[-1]
  bc = _channel_block(c)
  n = x_pad.ndim - 2
  slab = lambda shape: pl.BlockSpec((None,) + tuple(shape) + (bc,), lambda i, j: (i,) + (0,) * n + (j,))
  shared = lambda shape: pl.BlockSpec(tuple(shape) + (bc,), lambda i, j: (0,) * len(shape) + (j,))
  other_spec = shared(other.shape[:-1]) if other.ndim == n + 1 else slab(other.shape[1:-1])
  return pl.pallas_call(
      kernel, grid=(b, c // bc), in_specs=[slab(x_pad.shape[1:-1]), other_spec],
      out_specs=slab(out_block), out_shape=out_shape, interpret=interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")))(x_pad, other)


def _pad(x, ksize, dil):
  return jnp.pad(x, [(0, 0)] + [(d * (k - 1) // 2,) * 2 for k, d in zip(ksize, dil)] + [(0, 0)])


def conv(x, w, dil, interpret):
  """x [B, *S, C] * w [*k, C] -> [B, *S, C] ("same" padding, dilation `dil`)."""
  ksize = w.shape[:-1]
  kernel = functools.partial(_conv_kernel, ksize=ksize, dil=dil)
  return _pallas(kernel, _pad(x, ksize, dil), w, jax.ShapeDtypeStruct(x.shape, x.dtype), x.shape[1:-1], interpret)


def dw(x, g, ksize, dil, interpret):
  """Kernel gradient [*k, C] (f32) of the convolution of x, given the output cotangent g."""
  kernel = functools.partial(_dw_kernel, ksize=ksize, dil=dil)
  out = _pallas(kernel, _pad(x, ksize, dil), g, jax.ShapeDtypeStruct((x.shape[0],) + ksize + x.shape[-1:],
                                                                     jnp.float32), ksize, interpret)
  return jnp.sum(out, axis=0)
