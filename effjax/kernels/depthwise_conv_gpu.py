"""GPU (Triton) kernels of the depthwise convolution; called through `depthwise_conv.depthwise_conv`.

Programs (b · outer position, W tile, C tile) compute a [bw, bc] output tile (taps in loops); dw programs
(tap, C tile) reduce g · shifted x over the batch and all positions. Triton tiles are powers of two, so the
last spatial axis and the channels are zero-padded to tile multiples (sliced off afterwards).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from effjax.kernels.depthwise_conv_tpu import outer_taps


def _split(t, shape):
  """Flat non-negative index t -> (leading quotient, multi-index over `shape`) with truncating ops."""
  idx = []
  for s in reversed(shape):
    idx.append(lax.rem(t, s))
    t = lax.div(t, s)
  return t, tuple(reversed(idx))


def _gpu_conv_kernel(x_ref, w_ref, o_ref, *, ksize, dil, outer, bw, bc):
  b, pos = _split(pl.program_id(0), outer)
  w0, c0 = pl.program_id(1) * bw, pl.program_id(2) * bc
  n_outer, decode = outer_taps(ksize)

  def outer_tap(t, acc):
    taps = decode(t)
    rows = tuple(p + i * d for p, i, d in zip(pos, taps, dil[:-1]))

    def tap(kx, acc):
      xs = x_ref[(b,) + rows + (pl.ds(w0 + kx * dil[-1], bw), pl.ds(c0, bc))].astype(jnp.float32)
      return acc + xs * w_ref[taps + (kx, pl.ds(c0, bc))].astype(jnp.float32)[None, :]
    return lax.fori_loop(0, ksize[-1], tap, acc)

  acc = lax.fori_loop(0, n_outer, outer_tap, jnp.zeros((bw, bc), jnp.float32))
  o_ref[(b,) + pos + (pl.ds(w0, bw), pl.ds(c0, bc))] = acc.astype(o_ref.dtype)


def _gpu_dw_kernel(x_ref, g_ref, dw_ref, *, ksize, dil, outer, bw, bc, batch, w_tiles):
  _, taps = _split(pl.program_id(0), ksize)
  c0 = pl.program_id(1) * bc
  n_pos = batch * math.prod(outer)

  def position(t, acc):
    b, pos = _split(t, outer)
    rows = tuple(p + i * d for p, i, d in zip(pos, taps[:-1], dil[:-1]))

    def w_tile(j, acc):
      w0 = j * bw
      xs = x_ref[(b,) + rows + (pl.ds(w0 + taps[-1] * dil[-1], bw), pl.ds(c0, bc))].astype(jnp.float32)
      return acc + xs * g_ref[(b,) + pos + (pl.ds(w0, bw), pl.ds(c0, bc))].astype(jnp.float32)
    return lax.fori_loop(0, w_tiles, w_tile, acc)

  acc = lax.fori_loop(0, n_pos, position, jnp.zeros((bw, bc), jnp.float32))
  dw_ref[taps + (pl.ds(c0, bc),)] = jnp.sum(acc, axis=0)


def _gpu_tiles(x, w, dil):
  """Tile sizes and the zero-padded x (halo + W/C tile padding) for the GPU kernels."""
  width, c = x.shape[-2], x.shape[-1]
  bw, bc = min(64, max(16, pl.next_power_of_2(width))), min(32, max(16, pl.next_power_of_2(c)))
  w_tiles, c_pad = -(-width // bw), -(-c // bc) * bc
  halo = [d * (k - 1) // 2 for k, d in zip(w.shape[:-1], dil)]
  widths = [(0, 0)] + [(h, h) for h in halo[:-1]] + [(halo[-1], halo[-1] + w_tiles * bw - width), (0, c_pad - c)]
  return bw, bc, w_tiles, c_pad, jnp.pad(x, widths)


def _whole(a):
  return pl.BlockSpec(a.shape, lambda *_: (0,) * a.ndim)


def _gpu_call(kernel, grid, ins, out, interpret):
  return pl.pallas_call(kernel, grid=grid, in_specs=[_whole(a) for a in ins], out_specs=_whole(out),
                        out_shape=out, interpret=interpret,
                        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1))(*ins)


def conv(x, w, dil, interpret):
  outer = x.shape[1:-2]
  bw, bc, w_tiles, c_pad, xp = _gpu_tiles(x, w, dil)
  wp = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, c_pad - w.shape[-1])])
  out = jax.ShapeDtypeStruct(x.shape[:-2] + (w_tiles * bw, c_pad), x.dtype)
  kernel = functools.partial(_gpu_conv_kernel, ksize=w.shape[:-1], dil=dil, outer=outer, bw=bw, bc=bc)
  y = _gpu_call(kernel, (x.shape[0] * math.prod(outer), w_tiles, c_pad // bc), [xp, wp], out, interpret)
  return y[..., :x.shape[-2], :x.shape[-1]]


def dw(x, g, ksize, dil, interpret):
  outer = x.shape[1:-2]
  bw, bc, w_tiles, c_pad, xp = _gpu_tiles(x, jnp.zeros(ksize + (1,)), dil)
  gp = jnp.pad(g, [(0, 0)] * (g.ndim - 2) + [(0, w_tiles * bw - g.shape[-2]), (0, c_pad - g.shape[-1])])
  kernel = functools.partial(_gpu_dw_kernel, ksize=ksize, dil=dil, outer=outer, bw=bw, bc=bc,
                             batch=x.shape[0], w_tiles=w_tiles)
  dw = _gpu_call(kernel, (math.prod(ksize), c_pad // bc), [xp, gp],
                 jax.ShapeDtypeStruct(ksize + (c_pad,), jnp.float32), interpret)
  return dw[..., :x.shape[-1]]
