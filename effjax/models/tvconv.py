"""MobileNetV2 with TVConv depthwise convolutions (Chen et al., CVPR 2022), the paper's face-recognition backbone;
`tvconv=False` gives the plain MobileNetV2 (Sandler et al. 2018) with 3×3 depthwise convolutions.
Images [B, H, W, C] -> logits [B, num_classes].

  stem    = ReLU6(BN(Conv3×3/stem_stride(x)))                      width r(32·α)
  stage i = row (t, c, n, s) of `blocks`: n inverted residuals of width r(c·α), the first with stride s:
            y = BN(Conv1×1(ReLU6(BN(DW_s(ReLU6(BN(Conv1×1_{C -> tC}(x))))))))   (no expansion conv when t = 1)
            out = x + y when s = 1 and the width is unchanged, else y
  head    = Linear(Dropout(mean_{H,W} ReLU6(BN(Conv1×1_{-> r(last_width·max(1, α))}(x)))))

DW_s is `effjax.layers.tvconv.TVConv` (3×3, stride s, `affinity_channels` maps, generator width `tvconv_hidden` and
`tvconv_hidden_layers` hidden layers: by default 4, 64 and 3 as in the official training; the affinity maps take each
layer's output size, so the model is tied to the image size it was initialised with) or, with tvconv=False, a
bias-free depthwise Conv3×3/s.
r(v) rounds to a multiple of 8, never below 90 % of v (MobileNetV2's rule). Convolutions are bias-free; BatchNorm
ε = 1e-5, torch momentum 0.1 ("batch_stats"). The default `blocks` and stem stride 1 are the official code's
96×96 face-recognition MobileNetV2 (maps 96 -> 6); its embedding head is replaced by a classifier.
Variants: the official width multipliers α (x0_1 ... x1_0). Intermediates sown: `stem`, `stage{i}`.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from effjax.kernels import dispatch
from effjax.layers.common import batch_norm, torch_kaiming_fan_out, with_variants
from effjax.layers.tvconv import TVConv

HEAD = r"^classifier/"  # params a new task replaces: config.init_from.skip's default

BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))  # (expansion t, width c, repeats n, first stride s)
VARIANTS = {f"x{a.replace('.', '_')}": dict(width_mult=float(a)) for a in ("0.1", "0.2", "0.3", "0.5", "1.0")}


def round_width(v: float, divisor: int = 8) -> int:
  """MobileNetV2's channel rounding: nearest multiple of `divisor` (at least `divisor`), not below 0.9·v."""
  r = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return r + divisor if r < 0.9 * v else r


def _conv1x1(features, name):
  return nn.Conv(features, (1, 1), use_bias=False, kernel_init=torch_kaiming_fan_out, name=name)


class InvertedResidual(nn.Module):
  features: int
  expansion: int
  stride: int = 1
  tvconv: bool = True
  affinity_channels: int = 4
  tvconv_hidden: int = 64
  tvconv_hidden_layers: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    c = x.shape[-1]
    hidden = int(round(c * self.expansion))
    y = x
    if self.expansion != 1:
      y = nn.relu6(batch_norm(train, "expand_norm")(_conv1x1(hidden, "expand")(y)))
    if self.tvconv:
      y = TVConv(3, self.stride, self.affinity_channels, self.tvconv_hidden, self.tvconv_hidden_layers,
                 name="dw")(y)
    else:
      y = nn.Conv(hidden, (3, 3), (self.stride,) * 2, padding=((1, 1), (1, 1)), feature_group_count=hidden,
                  use_bias=False, kernel_init=torch_kaiming_fan_out, name="dw")(y)
    y = nn.relu6(batch_norm(train, "dw_norm")(y))
    y = batch_norm(train, "project_norm")(_conv1x1(self.features, "project")(y))
    return x + y if self.stride == 1 and c == self.features else y


class TVConvMobileNetV2(nn.Module):
  """MobileNetV2 classifier with TVConv (or plain) depthwise layers; `Model(variant="x0_5", ...)`."""
  num_classes: int
  width_mult: float = 1.0
  blocks: Sequence[Sequence[int]] = BLOCKS
  stem_width: int = 32
  stem_stride: int = 1
  last_width: int = 512
  tvconv: bool = True
  affinity_channels: int = 4
  tvconv_hidden: int = 64
  tvconv_hidden_layers: int = 3
  dropout_rate: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"TVConvMobileNetV2 expects images [B, H, W, C], got shape {images.shape}")
    # Only "pallas" raises: no depthwise layer here has the kernel's form (a shared kernel at stride 1).
    dispatch.resolve("depthwise_conv", self.impl, unsupported=(
        "TVConv's kernel differs at every output position" if self.tvconv else
        "MobileNetV2 mixes strided and stride-1 depthwise convolutions in nn.Conv's parameter layout"))
    if any(len(row) != 4 for row in self.blocks):
      raise ValueError(f"blocks must be rows (expansion, width, repeats, stride), got {self.blocks}")
    x = nn.Conv(round_width(self.stem_width * self.width_mult), (3, 3), (self.stem_stride,) * 2,
                padding=((1, 1), (1, 1)), use_bias=False, kernel_init=torch_kaiming_fan_out, name="stem_conv")(images)
    x = nn.relu6(batch_norm(train, "stem_norm")(x))
    self.sow("intermediates", "stem", x)
    for i, (t, c, n, s) in enumerate(self.blocks):
      for j in range(n):
        x = InvertedResidual(round_width(c * self.width_mult), t, s if j == 0 else 1, self.tvconv,
                             self.affinity_channels, self.tvconv_hidden, self.tvconv_hidden_layers,
                             name=f"stage{i}_block{j}")(x, train)
      self.sow("intermediates", f"stage{i}", x)
    x = _conv1x1(round_width(self.last_width * max(1.0, self.width_mult)), "head_conv")(x)
    x = jnp.mean(nn.relu6(batch_norm(train, "head_norm")(x)), axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier")(x)


Model = with_variants(TVConvMobileNetV2, VARIANTS, "TVConvMobileNetV2")
