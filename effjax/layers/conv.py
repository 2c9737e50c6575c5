"""2-D convolution (and 3×3/2-style max pooling) whose gradients run fast on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as a convolution with batch and features swapped, which misses
its fast paths: 8× the forward's time for a 1×1 convolution at 56² (256 -> 128 channels, batch 8), 3-5× for 3×3
with jaxlib's default YNNPACK convolutions (1.0-1.5× with XLA's own, which the trainer's compile options,
effjax.runtime, now select);
and `select_and_scatter`, the gradient of max pooling, took 18× its forward (experiments/efficiency/README.md,
"Convolution backward"). Here, on CPU only (elsewhere lax's own gradients), for 1×1 kernels:

  dW = Σ_{b,h,w} x[b, s·h, s·w, :]ᵀ g[b, h, w, :]                      (one [C, O] matmul)

(XLA:CPU first copies the matmul's left operand into [C, B·H·W] order: the smaller of x and g goes there, behind an
optimization barrier, so that the copy does not recompute the BatchNorm/ReLU that produced it, which made the copy
3× slower; the ECA-ResNet-50d step took 16% less CPU time, experiments/efficiency/TIMM.md "Training-step levers")

(the same per tap of a k×k kernel was no faster: the k² strided copies of x cost what the matmuls saved), and
  max pool: dx = Σ_t scatter_t(g ⊙ [t = first argmax of the window])   (strided pads, fused; torch's tie rule)

dx of the convolution stays lax's (as fast as the forward on CPU). x [B, H, W, C], kernel [kh, kw, C, O].
"""
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from effjax.kernels import dispatch

_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, strides, padding, groups=1):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv1x1_cpu(x, w, strides):
  return _lax_conv(x, w, strides, ((0, 0), (0, 0)))


def _conv1x1_fwd(x, w, strides):
  return _conv1x1_cpu(x, w, strides), (x, w)


def _conv1x1_bwd(strides, res, g):
  x, w = res
  dx = jax.vjp(lambda x: _lax_conv(x, w, strides, ((0, 0), (0, 0))), x)[1](g)[0]
  xs = x[:, ::strides[0], ::strides[1]][:, :g.shape[1], :g.shape[2]]
  if xs.shape[-1] <= g.shape[-1]:  # XLA:CPU copies the lhs transposed: let it be the smaller one, computed before
    dw = jnp.einsum("bhwc,bhwo->co", lax.optimization_barrier(xs), g, preferred_element_type=jnp.float32)
  else:
    dw = jnp.einsum("bhwo,bhwc->oc", lax.optimization_barrier(g), xs, preferred_element_type=jnp.float32).T
  return dx, dw.reshape(w.shape).astype(w.dtype)


_conv1x1_cpu.defvjp(_conv1x1_fwd, _conv1x1_bwd)


def conv2d(x, w, strides=(1, 1), padding=((0, 0), (0, 0)), groups=1):
  """Cross-correlation x [B, H, W, C] * w [kh, kw, C/groups, O] -> [B, H', W', O] (explicit padding pairs)."""
  strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
  if groups == 1 and w.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)) and dispatch.platform() == "cpu":
    return _conv1x1_cpu(x, w, strides)
  return _lax_conv(x, w, strides, padding, groups)


class Conv(nn.Module):
  """flax.linen.Conv's parameters ("kernel" [kh, kw, C/groups, O], "bias" [O]) over `conv2d`; explicit padding."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Sequence[Sequence[int]] = ((0, 0), (0, 0))
  use_bias: bool = True
  feature_group_count: int = 1
  kernel_init: object = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    shape = (*self.kernel_size, x.shape[-1] // self.feature_group_count, self.features)
    y = conv2d(x, self.param("kernel", self.kernel_init, shape).astype(x.dtype), self.strides, self.padding,
               self.feature_group_count)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
    return y


def _window_slices(xp, window, strides, out):
  return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + strides[0] * (out[0] - 1) + 1,
                                       j + strides[1] * (out[1] - 1) + 1, xp.shape[3]), (1, *strides, 1))
          for i in range(window[0]) for j in range(window[1])]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, strides, padding):
  return nn.max_pool(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
  return _max_pool_cpu(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, g):
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  taps = _window_slices(xp, window, strides, g.shape[1:3])
  first = jnp.argmax(jnp.stack(taps), axis=0)                       # torch / select_and_scatter: the first max
  dxp = jnp.zeros(xp.shape, g.dtype)
  for t in range(len(taps)):
    i, j = divmod(t, window[1])
    hi = [(0, 0, 0), (i, xp.shape[1] - i - strides[0] * (g.shape[1] - 1) - 1, strides[0] - 1),
          (j, xp.shape[2] - j - strides[1] * (g.shape[2] - 1) - 1, strides[1] - 1), (0, 0, 0)]
    dxp = dxp + lax.pad(jnp.where(first == t, g, 0), jnp.zeros((), g.dtype), hi)
  (pt, _), (pl, _) = padding
  return (dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]],)


_max_pool_cpu.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window, strides, padding):
  """nn.max_pool(x, window, strides, padding) (explicit padding pairs) with the CPU gradient of the docstring."""
  window, strides, padding = tuple(window), tuple(strides), tuple(tuple(p) for p in padding)
  if dispatch.platform() == "cpu":
    return _max_pool_cpu(x, window, strides, padding)
  return nn.max_pool(x, window, strides, padding)
