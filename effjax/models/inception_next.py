"""InceptionNeXt (Yu et al., 2024): ConvNeXt's layout with the large depthwise kernel split into Inception branches,
as timm's `inception_next_*`. Images [B, H, W, C] -> logits [B, num_classes].

  token mixer: channels split into (C − 3g, g, g, g), g = ⌊C·branch_ratio⌋:
               [identity, DW 3×3, DW 1×band, DW band×1] (depthwise convolutions with bias), concatenated
  block(x)   = x + DropPath(γ ⊙ Conv1×1(GELU(Conv1×1(BN(mixer(x))))))       hidden mlp_ratio·C
  stem       = BN(Conv_{4×4, stride 4}(x));  stage i > 0 starts with BN -> Conv_{2×2, stride 2}
  head       = Linear(LayerNorm_{1e-6}(GELU(Linear_{C -> 3C}(mean_{H,W} x))))

BatchNorm: ε = 1e-5, torch momentum 0.1 (collection "batch_stats"). GELU is exact. The depthwise convolutions run
through `effjax.kernels.depthwise_conv`. Intermediates sown: `stem`, `stage{i}`.
`convert_official(state_dict)` maps a timm state dict to params, `convert_official_variables` to
{"params", "batch_stats"}.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.layers.common import DropPath, batch_norm, with_variants
from effjax.weights.mapping import BATCH_NORM_BUFFERS, OfficialStateDict, params_only

HEAD = r"^head_fc2/"  # params a new task replaces: config.init_from.skip's default

_trunc02 = nn.initializers.truncated_normal(0.02)

VARIANTS = {  # timm inception_next_<name>
    "atto": dict(depths=(2, 2, 6, 2), widths=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25),
    "tiny": dict(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), band_kernel_size=11, branch_ratio=0.125),
    "small": dict(depths=(3, 3, 27, 3), widths=(96, 192, 384, 768), band_kernel_size=11, branch_ratio=0.125),
    "base": dict(depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024), band_kernel_size=11, branch_ratio=0.125),
}


class InceptionDWConv(nn.Module):
  """The Inception token mixer on x [B, H, W, C] (see the module docstring)."""
  band_kernel_size: int = 11
  branch_ratio: float = 0.125
  square_kernel_size: int = 3
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    g = int(c * self.branch_ratio)
    if g < 1:
      raise ValueError(f"InceptionNeXt: {c} channels × branch_ratio {self.branch_ratio} leave no branch channels")
    s, b = self.square_kernel_size, self.band_kernel_size
    parts = [x[..., :c - 3 * g]]
    for i, (name, k) in enumerate([("dwconv_hw", (s, s)), ("dwconv_w", (1, b)), ("dwconv_h", (b, 1))]):
      xi = x[..., c - 3 * g + i * g: c - 2 * g + i * g]
      w = self.param(f"{name}_kernel", _trunc02, k + (g,))
      bias = self.param(f"{name}_bias", nn.initializers.zeros, (g,))
      parts.append(depthwise_conv(xi, w.astype(x.dtype), impl=self.impl) + bias.astype(x.dtype))
    return jnp.concatenate(parts, axis=-1)


class Block(nn.Module):
  mlp_ratio: float = 4
  band_kernel_size: int = 11
  branch_ratio: float = 0.125
  ls_init_value: float | None = 1e-6
  drop_path_rate: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    dim = x.shape[-1]
    y = InceptionDWConv(self.band_kernel_size, self.branch_ratio, impl=self.impl, name="mixer")(x)
    y = batch_norm(train, "norm")(y)
    y = nn.Dense(int(self.mlp_ratio * dim), kernel_init=_trunc02, name="fc1")(y)
    y = nn.Dense(dim, kernel_init=_trunc02, name="fc2")(nn.gelu(y, approximate=False))
    if self.ls_init_value:
      y = y * self.param("gamma", nn.initializers.constant(self.ls_init_value), (dim,)).astype(y.dtype)
    return x + DropPath(self.drop_path_rate)(y, train)


class InceptionNeXt(nn.Module):
  """InceptionNeXt classifier; `Model(variant="tiny", ...)` builds timm's inception_next_<variant>."""
  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  widths: Sequence[int] = (96, 192, 384, 768)
  mlp_ratios: Sequence[float] = (4, 4, 4, 3)
  band_kernel_size: int = 11
  branch_ratio: float = 0.125
  head_mlp_ratio: float = 3
  ls_init_value: float | None = 1e-6
  drop_path_rate: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"InceptionNeXt expects images [B, H, W, C], got shape {images.shape}")
    if not len(self.depths) == len(self.widths) == len(self.mlp_ratios):
      raise ValueError(f"depths {tuple(self.depths)}, widths {tuple(self.widths)} and mlp_ratios "
                       f"{tuple(self.mlp_ratios)} must have the same length")
    reduction = 4 * 2 ** (len(self.widths) - 1)
    if images.shape[1] % reduction or images.shape[2] % reduction:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by the total stride "
                       f"{reduction}")
    x = nn.Conv(self.widths[0], (4, 4), strides=(4, 4), padding="VALID", kernel_init=_trunc02, name="stem_conv")(images)
    x = batch_norm(train, "stem_norm")(x)
    self.sow("intermediates", "stem", x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    for i, (depth, dim, ratio) in enumerate(zip(self.depths, self.widths, self.mlp_ratios)):
      if i > 0:
        x = batch_norm(train, f"stage{i}_down_norm")(x)
        x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="VALID", kernel_init=_trunc02, name=f"stage{i}_down")(x)
      for j in range(depth):
        x = Block(ratio, self.band_kernel_size, self.branch_ratio, self.ls_init_value, rates.pop(0),
                  self.impl, name=f"stage{i}_block{j}")(x, train)
      self.sow("intermediates", f"stage{i}", x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.gelu(nn.Dense(int(self.head_mlp_ratio * x.shape[-1]), kernel_init=_trunc02, name="head_fc1")(x),
                approximate=False)
    x = nn.LayerNorm(epsilon=1e-6, name="head_norm")(x)
    return nn.Dense(self.num_classes, kernel_init=_trunc02, name="head_fc2")(x)


Model = with_variants(InceptionNeXt, VARIANTS, "InceptionNeXt")


def convert_official_variables(state_dict) -> dict:
  """timm InceptionNeXt state dict (names -> arrays; torch tensors accepted) -> {"params", "batch_stats"}.

  Convolutions OIHW -> HWIO (depthwise [g, 1, kh, kw] -> [kh, kw, g]); 1×1-conv MLP and Linear weights -> Dense
  kernels [in, out]; BatchNorm weight/bias/running_mean/running_var -> scale/bias and mean/var. Missing or
  unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  params, stats = {}, {}

  bn, dense, conv = sd.batch_norm, sd.linear, sd.conv
  params["stem_conv"] = conv("stem.0")
  params["stem_norm"], stats["stem_norm"] = bn("stem.1")
  blocks = sorted({tuple(int(n) for n in k.split(".")[1:4:2]) for k in sd if ".blocks." in k})
  for i in sorted({i for i, _ in blocks} - {0}):
    params[f"stage{i}_down_norm"], stats[f"stage{i}_down_norm"] = bn(f"stages.{i}.downsample.0")
    params[f"stage{i}_down"] = conv(f"stages.{i}.downsample.1")
  for i, j in blocks:
    pre, name = f"stages.{i}.blocks.{j}", f"stage{i}_block{j}"
    mixer = {}
    for conv_name in ("dwconv_hw", "dwconv_w", "dwconv_h"):
      mixer[f"{conv_name}_kernel"], mixer[f"{conv_name}_bias"] = sd.depthwise(f"{pre}.token_mixer.{conv_name}")
    norm, norm_stats = bn(f"{pre}.norm")
    block = {"mixer": mixer, "norm": norm, "fc1": dense(f"{pre}.mlp.fc1"), "fc2": dense(f"{pre}.mlp.fc2")}
    if f"{pre}.gamma" in sd:
      block["gamma"] = sd[f"{pre}.gamma"]
    params[name], stats[name] = block, {"norm": norm_stats}
  params.update(head_fc1=dense("head.fc1"), head_norm=sd.layer_norm("head.norm"), head_fc2=dense("head.fc2"))
  sd.check_all_used(ignored=BATCH_NORM_BUFFERS)
  return {"params": params, "batch_stats": stats}


convert_official = params_only(convert_official_variables)
