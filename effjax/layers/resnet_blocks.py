"""The convolutional blocks of timm's bottleneck ResNets, shared by effjax.models.resnet and effjax.models.halonet.

Feature maps x [B, H, W, C]; every convolution is bias-free and followed by BatchNorm (ε = 1e-5, torch momentum 0.1).

  ConvBN      act(BN(conv_{k×k/s}(x)))            (padding k // 2; `groups` channel groups; effjax.layers.conv: fast
                                                  CPU gradients, as the stem's max pool)
  stem        stride 4: ""            7×7/2 conv to 64                                  then a 3×3/2 max pool ("max"),
                        "deep"        3×3/2 (w) -> 3×3 (w) -> 3×3 (2w), w = stem_width    a 3×3/2 ConvBN ("conv"),
                        "deep_tiered" 3×3/2 (3·(w//4)) -> 3×3 (w) -> 3×3 (2w)            or a stride-2 last conv ("")
  Bottleneck  y = act(shortcut(x) + DropPath(gate(BN(conv1×1(act(BN(conv3×3/s(act(BN(conv1×1(x)))))))))))
              width planes, output 4·planes (or out_features); shortcut = identity, or (avg_down) 2×2/s average
              pool (ceil mode, padding not counted) -> 1×1 conv -> BN, or (not avg_down) 1×1/s conv -> BN, when
              the shape changes; `gate` (effjax.layers.squeeze_excite) after the last BN, or on the 3×3
              convolution's output with gate_mid (timm's ByobNet bottleneck).

`effjax.weights.mapping.OfficialStateDict.conv_bn` maps a timm conv + BatchNorm pair onto a ConvBN's variables.
"""
from collections.abc import Callable

import flax.linen as nn

from effjax.layers.common import DropPath, batch_norm, torch_kaiming_fan_out
from effjax.layers.conv import Conv, max_pool
from effjax.layers.squeeze_excite import make_gate

STEM_TYPES = ("", "deep", "deep_tiered")


class ConvBN(nn.Module):
  """Bias-free k×k convolution (padding k // 2, torch-style; `groups` channel groups) -> BatchNorm [-> act if relu]."""
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  zero_scale: bool = False
  act: Callable = nn.relu
  groups: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    k, p = self.kernel, self.kernel // 2
    x = Conv(self.features, (k, k), (self.stride,) * 2, padding=((p, p), (p, p)), use_bias=False,
             feature_group_count=self.groups, kernel_init=torch_kaiming_fan_out, name="conv")(x)
    x = batch_norm(train, "bn", scale_init=nn.initializers.zeros if self.zero_scale else nn.initializers.ones)(x)
    return self.act(x) if self.relu else x


def stem(x, stem_type, stem_width, pool, train, act=nn.relu):
  """The stride-4 stem of the module docstring, built inside the calling module (params stem0..2, stem_pool).

  pool: "max" (3×3/2 max pool), "conv" (a 3×3/2 ConvBN, ResNet-RS) or "" (no pool: the last stem convolution
  has stride 2 instead, as timm's ByobNet stems without a pool layer).
  """
  if stem_type not in STEM_TYPES:
    raise ValueError(f"unknown stem_type {stem_type!r}; expected one of {STEM_TYPES}")
  if pool not in ("max", "conv", ""):
    raise ValueError(f"unknown stem pool {pool!r}; expected 'max', 'conv' or ''")
  if not (stem_type or pool):
    raise ValueError("the 7×7 stem (stem_type '') needs a pool ('max' or 'conv')")
  last_stride = 1 if pool else 2
  if stem_type:
    w = stem_width
    first = 3 * (w // 4) if stem_type == "deep_tiered" else w
    x = ConvBN(first, 3, 2, act=act, name="stem0")(x, train)
    x = ConvBN(w, 3, act=act, name="stem1")(x, train)
    x = ConvBN(2 * w, 3, last_stride, act=act, name="stem2")(x, train)
  else:
    x = ConvBN(64, 7, 2, act=act, name="stem0")(x, train)
  if pool == "conv":
    return ConvBN(x.shape[-1], 3, 2, act=act, name="stem_pool")(x, train)
  if pool == "max":
    return max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  return x


def _avg_pool_ceil(x):
  """torch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on [B, H, W, C]."""
  pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
  return nn.avg_pool(x, (2, 2), (2, 2), padding=pad, count_include_pad=False)


class Bottleneck(nn.Module):
  """timm Bottleneck (expansion 4) with an optional recalibration gate after the last BN.

  timm's ByobNet bottleneck is the same block with `out_features` (any width), its activation `act`, grouped 3×3
  convolutions (`groups`) and the gate on the 3×3 convolution's output (`gate_mid`).
  """
  planes: int
  stride: int = 1
  avg_down: bool = False
  gate: str = ""
  rd_ratio: float = 1 / 16
  drop_path_rate: float = 0.0
  out_features: int | None = None
  act: Callable = nn.relu
  groups: int = 1
  gate_mid: bool = False
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    out = 4 * self.planes if self.out_features is None else self.out_features
    y = ConvBN(self.planes, 1, act=self.act, name="conv1")(x, train)
    y = ConvBN(self.planes, 3, self.stride, act=self.act, groups=self.groups, name="conv2")(y, train)
    gate = make_gate(self.gate, self.rd_ratio, module_name="se", impl=self.impl)
    if gate is not None and self.gate_mid:
      y = gate(y)
    y = ConvBN(out, 1, relu=False, zero_scale=True, name="conv3")(y, train)
    if gate is not None and not self.gate_mid:
      y = gate(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out:
      if self.avg_down:
        shortcut = ConvBN(out, 1, relu=False, name="down")(_avg_pool_ceil(x) if self.stride > 1 else x, train)
      else:
        shortcut = ConvBN(out, 1, self.stride, relu=False, name="down")(x, train)
    return self.act(shortcut + DropPath(self.drop_path_rate)(y, train))
