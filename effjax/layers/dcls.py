"""DclsConv: a convolution whose dense kernel is built by DCLS from learnable tap positions.

    y = conv(x, K(weight, P, SIG)) + bias,   K = effjax.kernels.dcls.construct_kernel (see there)

Cross-correlation as torch's F.conv2d (no kernel flip); inputs are channels-last [B, *spatial, C].
Parameters keep the official names and layouts, so official weights load unchanged:
weight [O, I/groups, kernel_count], P and SIG [n, O, I/groups, kernel_count], bias [O].

Positions must stay within ±dks // 2: after every optimiser update call `clamp_dcls_positions(params, dks)`
or chain `clamp_positions_after_update(dks)` last in the optax optimiser.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from effjax.kernels import dcls

_SPATIAL = "DHW"


def _dimension_numbers(n):
  s = _SPATIAL[-n:] if n <= 3 else None
  if s is None:
    raise ValueError(f"DclsConv supports 1-3 spatial dims, got {n}")
  return (f"N{s}C", f"{s}IO", f"N{s}C")


class DclsConv(nn.Module):
  """Convolution with learnable spacings.

  Attributes:
    features: output channels O.
    kernel_count: taps per (out, in) channel pair.
    dilated_kernel_size: dense kernel size per spatial axis (one int per axis).
    groups: feature groups (groups = input channels gives a depthwise convolution).
    version: "v1" (bilinear), "gauss" or "max" (triangle).
    padding: per-axis symmetric zero padding (int or tuple) or "SAME" / "VALID"; default dks // 2.
    strides: per-axis stride.
    use_bias: add a bias of shape [O].
    impl: kernel-construction implementation passed to `dcls.construct_kernel`.
  """
  features: int
  kernel_count: int
  dilated_kernel_size: Sequence[int]
  groups: int = 1
  version: str = "gauss"
  padding: int | Sequence[int] | str | None = None
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    """x [B, *spatial, C_in] -> [B, *spatial', features]."""
    dks = tuple(self.dilated_kernel_size)
    n = len(dks)
    if x.ndim != n + 2:
      raise ValueError(f"DclsConv with a {n}-D kernel expects [B, *{n} spatial, C], got shape {x.shape}")
    c_in = x.shape[-1]
    if c_in % self.groups or self.features % self.groups:
      raise ValueError(f"channels in={c_in} and out={self.features} must be divisible by groups={self.groups}")
    shape = (self.features, c_in // self.groups, self.kernel_count)
    fan_in = shape[1] * shape[2]
    bound = fan_in ** -0.5   # torch kaiming_uniform(a=√5) and the conv bias init
    uniform = lambda key, s: jax.random.uniform(key, s, jnp.float32, -bound, bound)
    weight = self.param("weight", uniform, shape)

    def init_positions(key, s):
      lim = jnp.asarray([d // 2 for d in dks], jnp.float32).reshape(-1, 1, 1, 1)
      return jnp.clip(0.5 * jax.random.normal(key, s), -lim, lim)
    P = self.param("P", init_positions, (n,) + shape)
    sig = None
    if self.version in ("gauss", "max"):
      sig = self.param("SIG", nn.initializers.constant(0.23 if self.version == "gauss" else 0.0), (n,) + shape)
    kernel = dcls.construct_kernel(weight, P, sig, dks, self.version, impl=self.impl)   # [O, I/g, *dks]
    kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2)).astype(x.dtype)                     # [*dks, I/g, O]
    if not isinstance(self.padding, str):
      pad = [d // 2 for d in dks] if self.padding is None else self.padding
      pad = [pad] * n if isinstance(pad, (int, np.integer)) else list(pad)
      padding = [(p, p) for p in pad]
    else:
      padding = self.padding
    strides = (self.strides,) * n if isinstance(self.strides, int) else tuple(self.strides)
    y = jax.lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=self.groups,
                                     dimension_numbers=_dimension_numbers(n))
    if self.use_bias:
      y = y + self.param("bias", uniform, (self.features,)).astype(y.dtype)
    return y


def clamp_dcls_positions(params, dilated_kernel_size):
  """Clamps every DclsConv position array (a leaf named "P" beside a "weight") to ±dks // 2."""
  def walk(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: walk(v) for k, v in tree.items()}
    if "P" in out and "weight" in out and out["P"].shape[0] == len(dilated_kernel_size):
      out["P"] = dcls.clamp_positions(out["P"], dilated_kernel_size)
    return out
  return walk(dict(params))


def clamp_positions_after_update(dilated_kernel_size):
  """optax transform (chain it last): turns updates u into clamp(params + u) - params for DCLS positions."""
  def update(updates, state, params=None):
    if params is None:
      raise ValueError("clamp_positions_after_update needs params in optimizer.update(grads, state, params)")
    new = clamp_dcls_positions(jax.tree.map(lambda p, u: p + u, params, updates), dilated_kernel_size)
    return jax.tree.map(lambda n, p: n - p, new, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
