"""Depthwise (optionally dilated) convolution with large kernels over 1-D, 2-D and 3-D grids.

    y[b, p, c] = Σ_t w[t, c] · x[b, p + d·(t - (k-1)/2), c]       ("same" zero padding, stride 1)

x is channels-last [B, *S, C], w is [*k, C] with odd k per axis, d the per-axis dilation; this is
cross-correlation, like torch / lax convolutions.

This file holds the XLA reference, the custom_vjp and the dispatch; the kernels are in
`depthwise_conv_tpu` (Mosaic) and `depthwise_conv_gpu` (Triton). On CPU the XLA path is `depthwise_conv_cpu`
(shifted multiply-adds or FFT, whose cost scales with the kernel; lax's grouped convolution is slow there).
The backward pass reuses the forward
kernel: dx is the same convolution of the cotangent with the flipped kernel; dw comes from a second kernel
reducing g · shifted x over space for every tap.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from effjax.kernels import depthwise_conv_gpu, depthwise_conv_tpu, dispatch
from effjax.kernels.depthwise_conv_cpu import depthwise_conv_cpu

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


def _module(backend):
  return depthwise_conv_gpu if backend == "gpu" else depthwise_conv_tpu


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, dil, backend, interpret):
  return _module(backend).conv(x, w, dil, interpret)


def _depthwise_fwd(x, w, dil, backend, interpret):
  return _module(backend).conv(x, w, dil, interpret), (x, w)


def _depthwise_bwd(dil, backend, interpret, res, g):
  x, w = res
  mod = _module(backend)
  dx = mod.conv(g, jnp.flip(w, axis=tuple(range(x.ndim - 2))), dil, interpret)
  return dx, mod.dw(x, g, w.shape[:-1], dil, interpret).astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x, w, *, dilation=1, impl="auto", backend=None, interpret=None):
  """Depthwise 'same' convolution x [B, *S, C] * w [*k, C] -> [B, *S, C]; see the module docstring.

  impl ("auto" | "xla" | "pallas", `dispatch.resolve`): "xla" is lax's grouped convolution (cuDNN on GPU), on CPU
  `depthwise_conv_cpu`.
  backend / interpret: override the platform's kernel and interpret mode for "pallas".
  """
  dil = _check(x, w, dilation)
  kernel = dispatch.resolve("depthwise_conv", impl, backend=backend, interpret=interpret,
                            pattern=f"{x.ndim - 2}d", dtype=x.dtype)
  if kernel is None:
    if dispatch.platform() == "cpu":
      return depthwise_conv_cpu(x, w, dil)
    return depthwise_conv_reference(x, w, dilation=dil)
  return _depthwise(x, w, dil, kernel.backend, kernel.interpret)
