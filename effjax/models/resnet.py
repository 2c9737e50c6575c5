"""Bottleneck ResNets as timm builds them: ECA-ResNet (Wang et al. 2020), ResNet-RS (Bello et al. 2021) and
ResNets with cSE / sSE / scSE gates (Roy et al. 2018).

Images [B, H, W, C] -> logits [B, num_classes]. Every convolution is followed by BatchNorm (ε = 1e-5, torch
momentum 0.1); activations are ReLU.

  stem   effjax.layers.resnet_blocks.stem (stem_type "", "deep", "deep_tiered"; w = stem_width), then a 3×3/2 max
         pool, or with `replace_stem_pool` a 3×3/2 conv (+ BN + ReLU)
  stage i  (i = 0..3, stride 1, 2, 2, 2; planes = widths[i]) of effjax.layers.resnet_blocks.Bottleneck blocks:
         y = ReLU(shortcut(x) + DropPath(gate(BN(conv1×1(ReLU(BN(conv3×3/s(ReLU(BN(conv1×1(x)))))))))))
         width planes, output 4·planes; shortcut = identity, or (avg_down) 2×2/s average pool (ceil mode, padding
         not counted) -> 1×1 conv -> BN, or (not avg_down) 1×1/s conv -> BN, when the shape changes.
  head   Linear(Dropout_{head_dropout}(mean_{H,W} x))   (dropout in training only; timm's drop_rate, the
         dropout_rate of the official ResNet-RS configs)

Stochastic depth (`drop_path_rate` = r, `drop_path_schedule`): "block" (timm) gives block k of the K blocks the rate
r·k/(K − 1); "stage" (TF Model Garden's ResNet, which the official ResNet-RS configs train) gives every block of
stage i of S the rate r·(i + 2)/(S + 1), i.e. get_stochastic_depth_rate(r, i + 2, 5) for the 4 stages.

`gate` is one of effjax.layers.squeeze_excite.GATES ("eca", "se" = "cse" with `rd_ratio`, "sse", "scse") or "".
`VARIANTS` holds timm's ecaresnet* and resnetrs* definitions. Intermediates sown: `stem`, `layer{1..4}`.
`convert_official(state_dict)` maps a timm ResNet state dict to params, `convert_official_variables` to
{"params", "batch_stats"}.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from effjax.layers.common import torch_default_bias, torch_default_init, with_variants
from effjax.layers.resnet_blocks import Bottleneck, stem
from effjax.weights.mapping import BATCH_NORM_BUFFERS, OfficialStateDict, params_only

HEAD = r"^fc/"  # params a new task replaces: config.init_from.skip's default

_ECA = dict(stem_width=32, avg_down=True, gate="eca")
_RS = dict(stem_width=32, stem_type="deep", replace_stem_pool=True, avg_down=True, gate="se", rd_ratio=0.25)
VARIANTS = {
    "ecaresnet26t": dict(layers=(2, 2, 2, 2), stem_type="deep_tiered", **_ECA),
    "ecaresnet50d": dict(layers=(3, 4, 6, 3), stem_type="deep", **_ECA),
    "ecaresnet50t": dict(layers=(3, 4, 6, 3), stem_type="deep_tiered", **_ECA),
    "ecaresnetlight": dict(layers=(1, 1, 11, 3), **_ECA),
    "ecaresnet101d": dict(layers=(3, 4, 23, 3), stem_type="deep", **_ECA),
    "ecaresnet200d": dict(layers=(3, 24, 36, 3), stem_type="deep", **_ECA),
    "ecaresnet269d": dict(layers=(3, 30, 48, 8), stem_type="deep", **_ECA),
    "resnetrs50": dict(layers=(3, 4, 6, 3), **_RS),
    "resnetrs101": dict(layers=(3, 4, 23, 3), **_RS),
    "resnetrs152": dict(layers=(3, 8, 36, 3), **_RS),
    "resnetrs200": dict(layers=(3, 24, 36, 3), **_RS),
    "resnetrs270": dict(layers=(4, 29, 53, 4), **_RS),
    "resnetrs350": dict(layers=(4, 36, 72, 4), **_RS),
    "resnetrs420": dict(layers=(4, 44, 87, 4), **_RS),
}


class ResNet(nn.Module):
  """timm-style bottleneck ResNet (see the module docstring); `Model(variant="ecaresnet50d", ...)` builds timm's
  models of VARIANTS."""
  num_classes: int
  layers: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  stem_type: str = ""
  replace_stem_pool: bool = False
  avg_down: bool = False
  gate: str = ""
  rd_ratio: float = 1 / 16
  drop_path_rate: float = 0.0
  drop_path_schedule: str = "block"
  head_dropout: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"ResNet expects images [B, H, W, C], got shape {images.shape}")
    if len(self.layers) != len(self.widths):
      raise ValueError(f"layers {tuple(self.layers)} and widths {tuple(self.widths)} must have the same length")
    rates = drop_path_rates(self.layers, self.drop_path_rate, self.drop_path_schedule)
    x = stem(images, self.stem_type, self.stem_width, "conv" if self.replace_stem_pool else "max", train)
    self.sow("intermediates", "stem", x)
    for i, (n, planes) in enumerate(zip(self.layers, self.widths)):
      for j in range(n):
        x = Bottleneck(planes, 2 if (i > 0 and j == 0) else 1, self.avg_down, self.gate, self.rd_ratio, rates[i][j],
                       impl=self.impl, name=f"layer{i + 1}_block{j}")(x, train)
      self.sow("intermediates", f"layer{i + 1}", x)
    x = nn.Dropout(self.head_dropout, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, bias_init=torch_default_bias(x.shape[-1]),
                    name="fc")(x)


Model = with_variants(ResNet, VARIANTS, "ResNet")


def drop_path_rates(layers, rate, schedule):
  """Per-block stochastic-depth rates [[rate of block j of stage i]] (see the module docstring)."""
  if schedule == "block":
    total = sum(layers)
    starts = [sum(layers[:i]) for i in range(len(layers))]
    return [[rate * (s + j) / max(total - 1, 1) for j in range(n)] for s, n in zip(starts, layers)]
  if schedule == "stage":
    return [[rate * (i + 2) / (len(layers) + 1)] * n for i, n in enumerate(layers)]
  raise ValueError(f"unknown drop_path_schedule {schedule!r}; expected 'block' or 'stage'")


def convert_official_variables(state_dict) -> dict:
  """timm ResNet state dict (names -> arrays; torch tensors accepted) -> {"params", "batch_stats"} of `Model`.

  Convolutions OIHW -> HWIO; BatchNorm weight/bias -> scale/bias and running_mean/var -> mean/var (its
  num_batches_tracked is dropped); SE 1×1 convs -> Dense; the ECA Conv1d [1, 1, k] -> [k]. Missing or unexpected
  keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  params, stats = {}, {}

  def put(name, pair):
    params[name], stats[name] = pair

  if "conv1.0.weight" in sd:
    for i, (conv, bn) in enumerate([("conv1.0", "conv1.1"), ("conv1.3", "conv1.4"), ("conv1.6", "bn1")]):
      put(f"stem{i}", sd.conv_bn(conv, bn))
  else:
    put("stem0", sd.conv_bn("conv1", "bn1"))
  if "maxpool.0.weight" in sd:
    put("stem_pool", sd.conv_bn("maxpool.0", "maxpool.1"))
  blocks = sorted({tuple(int(n) for n in (k[5], k.split(".")[1])) for k in sd if k.startswith("layer")})
  for i, j in blocks:
    pre, name = f"layer{i}.{j}", f"layer{i}_block{j}"
    block, block_stats = {}, {}
    for c in (1, 2, 3):
      block[f"conv{c}"], block_stats[f"conv{c}"] = sd.conv_bn(f"{pre}.conv{c}", f"{pre}.bn{c}")
    if f"{pre}.downsample.1.weight" in sd:
      avg = f"{pre}.downsample.2.weight" in sd   # avg_down: (pool, conv, bn); else (conv, bn)
      first = 1 if avg else 0
      conv, bn = f"{pre}.downsample.{first}", f"{pre}.downsample.{first + 1}"
      block["down"], block_stats["down"] = sd.conv_bn(conv, bn)
    if any(k.startswith(f"{pre}.se.") for k in sd):
      block["se"] = sd.gate(f"{pre}.se")
    params[name], stats[name] = block, block_stats
  params["fc"] = sd.linear("fc")
  sd.check_all_used(ignored=BATCH_NORM_BUFFERS)
  return {"params": params, "batch_stats": {k: v for k, v in stats.items() if v}}


convert_official = params_only(convert_official_variables)
