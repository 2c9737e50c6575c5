"""Bottleneck ResNets as timm builds them: ECA-ResNet (Wang et al. 2020), ResNet-RS (Bello et al. 2021) and
ResNets with cSE / sSE / scSE gates (Roy et al. 2018).

Images [B, H, W, C] -> logits [B, num_classes]. Every convolution is followed by BatchNorm (ε = 1e-5, torch
momentum 0.1); activations are ReLU.

  stem   ""            7×7/2 conv to 64                                       then 3×3/2 max pool, or with
         "deep"        3×3/2 (w) -> 3×3 (w) -> 3×3 (2w), w = stem_width       `replace_stem_pool` a 3×3/2 conv
         "deep_tiered" 3×3/2 (3·(w//4)) -> 3×3 (w) -> 3×3 (2w)                (+ BN + ReLU)
  stage i  (i = 0..3, stride 1, 2, 2, 2; planes = channels[i]) of Bottleneck blocks:
         y = ReLU(shortcut(x) + DropPath(gate(BN(conv1×1(ReLU(BN(conv3×3/s(ReLU(BN(conv1×1(x)))))))))))
         width planes, output 4·planes; shortcut = identity, or (avg_down) 2×2/s average pool (ceil mode, padding
         not counted) -> 1×1 conv -> BN, or (not avg_down) 1×1/s conv -> BN, when the shape changes.
  head   Linear(mean_{H,W} x)

`gate` is one of effjax.layers.squeeze_excite.GATES ("eca", "se" = "cse" with `rd_ratio`, "sse", "scse") or "".
`VARIANTS` holds timm's ecaresnet* and resnetrs* definitions. Intermediates sown: `stem`, `layer{1..4}`.
`convert_official(state_dict)` maps a timm ResNet state dict to params, `convert_official_variables` to
{"params", "batch_stats"}.
"""
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from effjax.layers.common import DropPath, torch_default_bias, torch_default_init, with_variants
from effjax.layers.squeeze_excite import make_gate
from effjax.models.crate import OfficialStateDict

HEAD = r"^fc/"  # params a new task replaces: config.init_from.skip's default

_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # timm ResNet conv init

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
    x = nn.Conv(self.features, (k, k), (self.stride,) * 2, padding=((p, p), (p, p)), use_bias=False,
                feature_group_count=self.groups, kernel_init=_kaiming_fan_out, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn",
                     scale_init=nn.initializers.zeros if self.zero_scale else nn.initializers.ones)(x)
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
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
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

  @nn.compact
  def __call__(self, x, train=False):
    out = 4 * self.planes if self.out_features is None else self.out_features
    y = ConvBN(self.planes, 1, act=self.act, name="conv1")(x, train)
    y = ConvBN(self.planes, 3, self.stride, act=self.act, groups=self.groups, name="conv2")(y, train)
    gate = make_gate(self.gate, self.rd_ratio, module_name="se")
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


class ResNet(nn.Module):
  """timm-style bottleneck ResNet (see the module docstring); `Model(variant="ecaresnet50d", ...)` builds timm's
  models of VARIANTS."""
  num_classes: int
  layers: Sequence[int] = (3, 4, 6, 3)
  channels: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  stem_type: str = ""
  replace_stem_pool: bool = False
  avg_down: bool = False
  gate: str = ""
  rd_ratio: float = 1 / 16
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"ResNet expects images [B, H, W, C], got shape {images.shape}")
    if len(self.layers) != len(self.channels):
      raise ValueError(f"layers {tuple(self.layers)} and channels {tuple(self.channels)} must have the same length")
    x = stem(images, self.stem_type, self.stem_width, "conv" if self.replace_stem_pool else "max", train)
    self.sow("intermediates", "stem", x)
    total, index = sum(self.layers), 0
    for i, (n, planes) in enumerate(zip(self.layers, self.channels)):
      for j in range(n):
        rate = self.drop_path_rate * index / max(total - 1, 1)
        x = Bottleneck(planes, 2 if (i > 0 and j == 0) else 1, self.avg_down, self.gate, self.rd_ratio, rate,
                       name=f"layer{i + 1}_block{j}")(x, train)
        index += 1
      self.sow("intermediates", f"layer{i + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, bias_init=torch_default_bias(x.shape[-1]),
                    name="fc")(x)


Model = with_variants(ResNet, VARIANTS, "ResNet")


def convert_conv_bn(sd, conv, bn):
  """timm conv (OIHW) + BatchNorm2d names -> ({"conv": {kernel}, "bn": {scale, bias}}, {"bn": {mean, var}})."""
  params = {"conv": {"kernel": sd[f"{conv}.weight"].transpose(2, 3, 1, 0)},
            "bn": {"scale": sd[f"{bn}.weight"], "bias": sd[f"{bn}.bias"]}}
  return params, {"bn": {"mean": sd[f"{bn}.running_mean"], "var": sd[f"{bn}.running_var"]}}


def convert_gate(sd, prefix):
  """timm SEModule (fc1, fc2: 1×1 convs) or EcaModule (conv: Conv1d [1, 1, k]) -> gate params."""
  if f"{prefix}.conv.weight" in sd:
    return {"conv": sd[f"{prefix}.conv.weight"].reshape(-1)}
  dense = lambda n: {"kernel": sd[f"{prefix}.{n}.weight"][:, :, 0, 0].T, "bias": sd[f"{prefix}.{n}.bias"]}
  return {"fc1": dense("fc1"), "fc2": dense("fc2")}


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
      put(f"stem{i}", convert_conv_bn(sd, conv, bn))
  else:
    put("stem0", convert_conv_bn(sd, "conv1", "bn1"))
  if "maxpool.0.weight" in sd:
    put("stem_pool", convert_conv_bn(sd, "maxpool.0", "maxpool.1"))
  blocks = sorted({tuple(int(n) for n in (k[5], k.split(".")[1])) for k in sd if k.startswith("layer")})
  for i, j in blocks:
    pre, name = f"layer{i}.{j}", f"layer{i}_block{j}"
    block, block_stats = {}, {}
    for c in (1, 2, 3):
      block[f"conv{c}"], block_stats[f"conv{c}"] = convert_conv_bn(sd, f"{pre}.conv{c}", f"{pre}.bn{c}")
    if f"{pre}.downsample.1.weight" in sd:
      avg = f"{pre}.downsample.2.weight" in sd   # avg_down: (pool, conv, bn); else (conv, bn)
      first = 1 if avg else 0
      conv, bn = f"{pre}.downsample.{first}", f"{pre}.downsample.{first + 1}"
      block["down"], block_stats["down"] = convert_conv_bn(sd, conv, bn)
    if any(k.startswith(f"{pre}.se.") for k in sd):
      block["se"] = convert_gate(sd, f"{pre}.se")
    params[name], stats[name] = block, block_stats
  params["fc"] = {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]}
  sd.check_all_used(ignored=(r".*num_batches_tracked",))
  return {"params": params, "batch_stats": {k: v for k, v in stats.items() if v}}


def convert_official(state_dict) -> dict:
  """Params of `Model` from a timm state dict (the contract of effjax.weights / config.init_from); the BatchNorm
  running statistics come with `convert_official_variables`."""
  return convert_official_variables(state_dict)["params"]
