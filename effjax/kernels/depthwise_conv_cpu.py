"""Depthwise 'same' convolution on XLA:CPU, forward and both gradients, at a cost that scales with the kernel.

    y[b, p, c] = Σ_t w[t, c] · x[b, p + s_t, c],   s_t = d·(t - (k-1)/2)       (x [B, *S, C], w [*k, C])

XLA:CPU runs lax's grouped convolution (feature_group_count = C) as a generic loop nest and its kernel gradient
as a dense convolution, so a 7×7 depthwise layer costs more than the 1×1 layers around it and the cost grows with
k² (experiments/efficiency/DEPTHWISE.md has the levers table). Here instead:

  * inference with small kernels (k₁·k₂·… ≤ SHIFT_MAX_TAPS): y = Σ_t w[t] ⊙ shift_{s_t}(x), one fused loop over
    the output with one multiply-add per tap, vectorised over channels (channels-last stays minor-most);
  * large kernels, and every forward that is differentiated (custom_vjp's forward): the correlation theorem on
    an FFT grid N ≥ S + d·(k-1)/2 per axis (no wrap-around reaches the output): y = IFFT(X · conj H), with H
    the FFT of the kernel placed at the wrapped offsets s_t mod N;
  * backward (custom_vjp), by FFT for every kernel size: dx[p] = Σ_t w[t] g[p - s_t] = IFFT(G · H), and
    dw[t] = Σ_{b,p} x[b, p + s_t] g[b, p] = IFFT(Σ_b X · conj G)[s_t mod N]: one inverse FFT whatever the kernel
    size, where a tap-by-tap reduction reads x and g k² times.

Accumulation in float32; the result has x's dtype.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

SHIFT_MAX_TAPS = 49  # ≤ 7×7: shifted multiply-adds; above: FFT (measured crossover, DEPTHWISE.md)


def _smooth(n):
  """The smallest 2^a·3^b·5^c ≥ n (sizes the FFT handles fastest)."""
  while True:
    m = n
    for p in (2, 3, 5):
      while m % p == 0:
        m //= p
    if m == 1:
      return n
    n += 1


def _offsets(k, d):
  return [d * (t - (k - 1) // 2) for t in range(k)]


def _shift_conv(x, w, dil):
  """Σ_t w[t] ⊙ x shifted by s_t, zero padding; x [B, *S, C] float32, w [*k, C]."""
  ks = w.shape[:-1]
  pads = [(d * (k - 1) // 2,) * 2 for k, d in zip(ks, dil)]
  xp = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
  y = None
  for t in itertools.product(*(range(k) for k in ks)):
    window = xp[(slice(None),) + tuple(slice(d * ti, d * ti + s) for ti, d, s in zip(t, dil, x.shape[1:-1]))]
    term = window * w[t]
    y = term if y is None else y + term
  return jax.lax.optimization_barrier(y)  # computed once: XLA would otherwise fuse the k² taps into each consumer


def _grid(spatial, ks, dil):
  return tuple(_smooth(s + d * (k - 1) // 2) for s, k, d in zip(spatial, ks, dil))


def _last(n):
  return tuple(range(-n, 0))


def _kernel_spectrum(w, grid, dil):
  """rfftn of the kernel placed at offsets s_t mod N: [C, *grid'] complex (channels first: the FFT axes minor)."""
  idx = np.ix_(*[np.mod(_offsets(k, d), g) for k, d, g in zip(w.shape[:-1], dil, grid)])
  h = jnp.zeros(grid + w.shape[-1:], jnp.float32).at[idx].set(w.astype(jnp.float32))
  return jnp.fft.rfftn(jnp.moveaxis(h, -1, 0), axes=_last(len(grid)))


def _spectrum(x, grid):
  """x [B, *S, C] -> rfftn over S zero-padded to `grid`: [B, C, *grid'] (the transpose is explicit, so that XLA's
  layout assignment does not push a channels-major layout onto the neighbouring channels-last ops)."""
  return jnp.fft.rfftn(jnp.moveaxis(x, -1, 1), grid, axes=_last(len(grid)))


def _crop(y_spec, grid, spatial):
  """[B, C, *grid'] spectrum -> the inverse FFT's first `spatial` positions, channels-last [B, *S, C]."""
  y = jnp.fft.irfftn(y_spec, grid, axes=_last(len(grid)))
  return jnp.moveaxis(y[(Ellipsis,) + tuple(slice(0, s) for s in spatial)], 1, -1)


def _fft_conv(x, w, dil, transpose=False):
  """The forward convolution by FFT (transpose: the kernel flipped, i.e. dx from g), float32."""
  ks, spatial = w.shape[:-1], x.shape[1:-1]
  grid = _grid(spatial, ks, dil)
  h = _kernel_spectrum(w, grid, dil)
  return _crop(_spectrum(x, grid) * (h if transpose else jnp.conj(h)), grid, spatial)


def _conv(x, w, dil):
  return _shift_conv(x, w, dil) if math.prod(w.shape[:-1]) <= SHIFT_MAX_TAPS else _fft_conv(x, w, dil)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_cpu(x, w, dil):
  """x [B, *S, C] * w [*k, C] -> [B, *S, C] (see the module docstring); dil: per-axis dilation tuple."""
  return _conv(x.astype(jnp.float32), w.astype(jnp.float32), dil).astype(x.dtype)


def _fwd(x, w, dil):
  # training always takes the FFT: with its gradients it beat the shifted multiply-adds' forward even at 7×7
  return _fft_conv(x.astype(jnp.float32), w.astype(jnp.float32), dil).astype(x.dtype), (x, w)


def _bwd(dil, res, g):
  x, w = res
  ks, spatial, n = w.shape[:-1], x.shape[1:-1], w.ndim - 1
  g = g.astype(jnp.float32)
  dx = _fft_conv(g, w.astype(jnp.float32), dil, transpose=True).astype(x.dtype)
  grid = _grid(spatial, ks, dil)
  corr = jnp.fft.irfftn(jnp.sum(_spectrum(x.astype(jnp.float32), grid) * jnp.conj(_spectrum(g, grid)), axis=0),
                        grid, axes=_last(n))                                   # [C, *grid]: Σ_{b,p} x[p+s] g[p]
  corr = jnp.moveaxis(corr, 0, -1)
  dw = corr[np.ix_(*[np.mod(_offsets(k, d), gs) for k, d, gs in zip(ks, dil, grid)])]
  return dx, dw.astype(w.dtype)


depthwise_conv_cpu.defvjp(_fwd, _bwd)
