"""Depthwise (optionally dilated) convolution with large kernels over 1-D, 2-D and 3-D grids.

    y[b, p, c] = Σ_t w[t, c] · x[b, p + d·(t - (k-1)/2), c]       ("same" zero padding, stride 1)

x is channels-last [B, *S, C], w is [*k, C] with odd k per axis, d the per-axis dilation; this is
cross-correlation, like torch / lax convolutions.

TPU kernel (Mosaic), grid (B, C / bc): one step holds a zero-padded [*S_pad, bc] slab of x in VMEM
(channels on the 128 lanes) and accumulates tap-shifted slabs times the tap weights in f32: outer taps
in a loop, taps along the last spatial axis unrolled. The backward pass reuses it: dx is the same
convolution of the cotangent with the flipped kernel, and dw comes from a second kernel that reduces
g · shifted x over space for every tap (per batch element; the batch sum is in XLA).
The whole padded spatial slab must fit VMEM (e.g. 64x64 maps with a 31x31 kernel at bc=128).
A GPU (Triton) variant computes [bw, bc] output tiles per program (see below).
`impl="auto"` uses the TPU kernel on TPU and XLA's convolution elsewhere.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

IMPLS = ("auto", "xla", "pallas")
_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _check(x, w, dilation):
  n = x.ndim - 2
  if n not in _DIMS:
    raise ValueError(f"depthwise conv expects x [B, *S, C] with 1-3 spatial dims, got shape {x.shape}")
  if w.ndim != n + 1 or w.shape[-1] != x.shape[-1]:
    raise ValueError(f"kernel {w.shape} does not match x {x.shape}: expected [*k ({n} dims), {x.shape[-1]}]")
  if any(k % 2 == 0 for k in w.shape[:-1]):
    raise ValueError(f"kernel sizes must be odd for 'same' padding, got {w.shape[:-1]}")
  dilation = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
  if len(dilation) != n or any(d < 1 for d in dilation):
    raise ValueError(f"dilation must be a positive int or {n} positive ints, got {dilation}")
  return dilation


def depthwise_conv_reference(x, w, *, dilation=1):
  """XLA grouped convolution: x [B, *S, C], w [*k, C] -> [B, *S, C]."""
  dil = _check(x, w, dilation)
  n = x.ndim - 2
  pad = [(d * (k - 1) // 2,) * 2 for k, d in zip(w.shape[:-1], dil)]
  return lax.conv_general_dilated(x, w[..., None, :].astype(x.dtype), (1,) * n, pad, rhs_dilation=dil,
                                  dimension_numbers=_DIMS[n], feature_group_count=x.shape[-1],
                                  preferred_element_type=jnp.float32).astype(x.dtype)


def _outer_taps(ksize):
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
  n_outer, decode = _outer_taps(ksize)

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
  n_outer, decode = _outer_taps(ksize)
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


# ------------------------------------------------------------------------- GPU (Triton) kernels
# Programs (b · outer position, W tile, C tile) compute a [bw, bc] output tile (taps in loops); dw programs
# (tap, C tile) reduce g · shifted x over the batch and all positions. Triton tiles are powers of two, so
# the last spatial axis and the channels are zero-padded to tile multiples (sliced off afterwards).

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
  n_outer, decode = _outer_taps(ksize)

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


def _conv_gpu(x, w, dil, interpret):
  outer = x.shape[1:-2]
  bw, bc, w_tiles, c_pad, xp = _gpu_tiles(x, w, dil)
  wp = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, c_pad - w.shape[-1])])
  out = jax.ShapeDtypeStruct(x.shape[:-2] + (w_tiles * bw, c_pad), x.dtype)
  kernel = functools.partial(_gpu_conv_kernel, ksize=w.shape[:-1], dil=dil, outer=outer, bw=bw, bc=bc)
  y = _gpu_call(kernel, (x.shape[0] * math.prod(outer), w_tiles, c_pad // bc), [xp, wp], out, interpret)
  return y[..., :x.shape[-2], :x.shape[-1]]


def _dw_gpu(x, g, ksize, dil, interpret):
  outer = x.shape[1:-2]
  bw, bc, w_tiles, c_pad, xp = _gpu_tiles(x, jnp.zeros(ksize + (1,)), dil)
  gp = jnp.pad(g, [(0, 0)] * (g.ndim - 2) + [(0, w_tiles * bw - g.shape[-2]), (0, c_pad - g.shape[-1])])
  kernel = functools.partial(_gpu_dw_kernel, ksize=ksize, dil=dil, outer=outer, bw=bw, bc=bc,
                             batch=x.shape[0], w_tiles=w_tiles)
  dw = _gpu_call(kernel, (math.prod(ksize), c_pad // bc), [xp, gp],
                 jax.ShapeDtypeStruct(ksize + (c_pad,), jnp.float32), interpret)
  return dw[..., :x.shape[-1]]


def _pad(x, ksize, dil):
  return jnp.pad(x, [(0, 0)] + [(d * (k - 1) // 2,) * 2 for k, d in zip(ksize, dil)] + [(0, 0)])


def _conv(x, w, dil, backend, interpret):
  if backend == "gpu":
    return _conv_gpu(x, w, dil, interpret)
  ksize = w.shape[:-1]
  kernel = functools.partial(_conv_kernel, ksize=ksize, dil=dil)
  return _pallas(kernel, _pad(x, ksize, dil), w, jax.ShapeDtypeStruct(x.shape, x.dtype), x.shape[1:-1],
                 interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, dil, backend, interpret):
  return _conv(x, w, dil, backend, interpret)


def _depthwise_fwd(x, w, dil, backend, interpret):
  return _conv(x, w, dil, backend, interpret), (x, w)


def _depthwise_bwd(dil, backend, interpret, res, g):
  x, w = res
  n = x.ndim - 2
  dx = _conv(g, jnp.flip(w, axis=tuple(range(n))), dil, backend, interpret)
  ksize = w.shape[:-1]
  if backend == "gpu":
    return dx, _dw_gpu(x, g, ksize, dil, interpret).astype(w.dtype)
  kernel = functools.partial(_dw_kernel, ksize=ksize, dil=dil)
  dw = _pallas(kernel, _pad(x, ksize, dil), g, jax.ShapeDtypeStruct((x.shape[0],) + w.shape, jnp.float32),
               ksize, interpret)
  return dx, jnp.sum(dw, axis=0).astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x, w, *, dilation=1, impl="auto", backend=None, interpret=None):
  """Depthwise 'same' convolution x [B, *S, C] * w [*k, C] -> [B, *S, C]; see the module docstring.

  impl: "xla" (lax grouped conv), "pallas", "auto" (Pallas on TPU, XLA elsewhere: on GPU cuDNN's
  depthwise convolution is the default until the Triton kernel has been timed against it).
  backend: "tpu" or "gpu" kernel (default from the platform); interpret: default True off that platform.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown depthwise conv impl {impl!r}; expected one of {IMPLS}")
  dil = _check(x, w, dilation)
  platform = jax.default_backend()
  if impl == "xla" or (impl == "auto" and platform != "tpu"):
    return depthwise_conv_reference(x, w, dilation=dil)
  backend = backend or ("gpu" if platform == "gpu" else "tpu")
  return _depthwise(x, w, dil, backend, (platform != backend) if interpret is None else interpret)
