"""Channel and spatial recalibration gates on feature maps x [B, H, W, C] (channels-last); each returns x's shape.

  cSE  (Hu et al. 2018; Roy et al. 2018, channel SE, as timm's SEModule):
         s = σ(W₂ ReLU(W₁ mean_{H,W}(x) + b₁) + b₂),   y = x ⊙ s           W₁: C -> r, W₂: r -> C
  sSE  (Roy et al. 2018, spatial SE):  q = σ(x · w_sq),  y = x ⊙ q             w_sq: C -> 1 (1×1 conv, no bias)
  scSE (Roy et al. 2018, concurrent): y = cSE(x) + sSE(x)  (combine="add", the paper's choice) or
         max(cSE(x), sSE(x))  (combine="max")
  ECA  (Wang et al. 2020, as timm's EcaModule): s = σ(conv1d_k(mean_{H,W}(x)) over the channel axis), y = x ⊙ s,
         with k = max(odd(⌊|log₂ C + 1| / 2⌋), 3) (no bias), zero "same" padding.

Parameter names follow timm (cSE: fc1, fc2; ECA: conv) so that timm state dicts map one to one.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.layers.common import torch_kaiming_fan_out


def make_divisible(v, divisor=8, round_limit=0.0):
  """timm's make_divisible: v rounded to a multiple of `divisor` (at least `divisor`), bumped up by one
  divisor when rounding lost more than 1 − round_limit of v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < round_limit * v else new_v


def eca_kernel_size(channels, gamma=2, beta=1):
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class ChannelSE(nn.Module):
  """cSE: squeeze (global mean) -> 1×1 reduce to make_divisible(C·rd_ratio, 8) -> ReLU -> expand -> sigmoid gate."""
  rd_ratio: float = 1 / 16

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Dense(make_divisible(c * self.rd_ratio), kernel_init=torch_kaiming_fan_out, name="fc1")(s))
    s = nn.Dense(c, kernel_init=torch_kaiming_fan_out, name="fc2")(s)
    return x * jax.nn.sigmoid(s)


class SpatialSE(nn.Module):
  """sSE: a per-position gate σ(x · w_sq) from a bias-free 1×1 convolution C -> 1."""

  @nn.compact
  def __call__(self, x):
    q = nn.Dense(1, use_bias=False, kernel_init=torch_kaiming_fan_out, name="conv")(x)
    return x * jax.nn.sigmoid(q)


class ConcurrentSE(nn.Module):
  """scSE: cSE(x) + sSE(x) ("add") or their element-wise maximum ("max")."""
  rd_ratio: float = 1 / 16
  combine: str = "add"

  @nn.compact
  def __call__(self, x):
    if self.combine not in ("add", "max"):
      raise ValueError(f"scSE combine must be 'add' or 'max', got {self.combine!r}")
    c, s = ChannelSE(self.rd_ratio, name="cse")(x), SpatialSE(name="sse")(x)
    return c + s if self.combine == "add" else jnp.maximum(c, s)


class ECA(nn.Module):
  """Efficient channel attention: a k-tap 1-D convolution across the pooled channel vector, sigmoid gate.

  impl: the depthwise-conv implementation (`effjax.kernels.depthwise_conv`) of the 1-D convolution.
  """
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = eca_kernel_size(x.shape[-1])
    w = self.param("conv", lambda key, shape: jax.random.normal(key, shape) * math.sqrt(2 / k), (k,))  # kaiming
    s = jnp.mean(x, axis=(1, 2))[..., None]                    # [B, C, 1]: channels as a 1-D sequence
    s = depthwise_conv(s, w[:, None].astype(s.dtype), impl=self.impl)[..., 0]  # [B, C]
    return x * jax.nn.sigmoid(s)[:, None, None, :]


GATES = {"se": ChannelSE, "cse": ChannelSE, "sse": SpatialSE, "scse": ConcurrentSE, "eca": ECA}


def make_gate(name, rd_ratio=1 / 16, module_name=None, impl="auto"):
  """The gate called `name` (one of GATES; rd_ratio for cSE / scSE; impl for ECA's convolution) or None for ""."""
  if not name:
    return None
  if name not in GATES:
    raise ValueError(f"unknown attention gate {name!r}; expected one of {sorted(GATES)}")
  if name == "eca":
    return ECA(impl, name=module_name)
  if name == "sse":
    return GATES[name](name=module_name)
  return GATES[name](rd_ratio, name=module_name)
