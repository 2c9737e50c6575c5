"""FasterNet (Chen et al., 2023): PConv + pointwise MLP blocks, as timm's `fasternet_*`.
Images [B, H, W, C] -> logits [B, num_classes].

  stem      = BN(Conv_{4×4, stride 4}(x))                     (bias-free, width = width)
  stage i   = [BN(Conv_{2×2, stride 2}(x)), doubling the width] (i > 0), then depths[i] blocks
  block(x)  = x + DropPath(γ ⊙ Conv1×1(act(BN(Conv1×1(PConv(x))))))     hidden mlp_ratio·C, bias-free;
              γ only when layer_scale_init_value > 0
  head      = Linear(act(Conv1×1_{C -> feature_dim}(mean_{H,W} x)))      (the 1×1 conv is bias-free)

PConv: `effjax.layers.pconv.PartialConv` (3×3 over C // n_div channels). act is ReLU, or the exact GELU for
the t0 / t1 variants. BatchNorm: ε = 1e-5, torch momentum 0.1 ("batch_stats"). Intermediates sown: `stem`,
`stage{i}`. `convert_official(state_dict)` maps a timm state dict to params,
`convert_official_variables` to {"params", "batch_stats"}.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.layers.common import DropPath, batch_norm, with_variants
from effjax.layers.pconv import PartialConv
from effjax.weights.mapping import BATCH_NORM_BUFFERS, OfficialStateDict, params_only

HEAD = r"^classifier/"  # params a new task replaces: config.init_from.skip's default

_trunc02 = nn.initializers.truncated_normal(0.02)

VARIANTS = {  # timm fasternet_<name>
    "t0": dict(width=40, depths=(1, 2, 8, 2), act="gelu"),
    "t1": dict(width=64, depths=(1, 2, 8, 2), act="gelu"),
    "t2": dict(width=96, depths=(1, 2, 8, 2)),
    "s": dict(width=128, depths=(1, 2, 13, 2)),
    "m": dict(width=144, depths=(3, 4, 18, 3)),
    "l": dict(width=192, depths=(3, 4, 18, 3)),
}
ACTS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}


def _conv(features, k, name):
  return nn.Conv(features, (k, k), strides=(k, k), padding="VALID", use_bias=False, kernel_init=_trunc02, name=name)


class Block(nn.Module):
  n_div: int = 4
  mlp_ratio: float = 2.0
  act: str = "relu"
  layer_scale_init_value: float = 0.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    dim = x.shape[-1]
    y = PartialConv(self.n_div, kernel_init=_trunc02, name="pconv")(x)
    y = _conv(int(dim * self.mlp_ratio), 1, "fc1")(y)
    y = _conv(dim, 1, "fc2")(ACTS[self.act](batch_norm(train, "norm")(y)))
    if self.layer_scale_init_value > 0:
      y = y * self.param("layer_scale", nn.initializers.constant(self.layer_scale_init_value), (dim,))
    return x + DropPath(self.drop_path_rate)(y, train)


class FasterNet(nn.Module):
  """FasterNet classifier; `Model(variant="t0", ...)` builds timm's fasternet_<variant>."""
  num_classes: int
  width: int = 40
  depths: Sequence[int] = (1, 2, 8, 2)
  mlp_ratio: float = 2.0
  n_div: int = 4
  feature_dim: int = 1280
  act: str = "relu"
  layer_scale_init_value: float = 0.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"FasterNet expects images [B, H, W, C], got shape {images.shape}")
    if self.act not in ACTS:
      raise ValueError(f"unknown activation {self.act!r}; expected one of {list(ACTS)}")
    reduction = 4 * 2 ** (len(self.depths) - 1)
    if images.shape[1] % reduction or images.shape[2] % reduction:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by the total stride "
                       f"{reduction}")
    x = batch_norm(train, "stem_norm")(_conv(self.width, 4, "stem_conv")(images))
    self.sow("intermediates", "stem", x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    for i, depth in enumerate(self.depths):
      if i > 0:
        x = batch_norm(train, f"stage{i}_down_norm")(_conv(2 * x.shape[-1], 2, f"stage{i}_down")(x))
      for j in range(depth):
        x = Block(self.n_div, self.mlp_ratio, self.act, self.layer_scale_init_value, rates.pop(0),
                  name=f"stage{i}_block{j}")(x, train)
      self.sow("intermediates", f"stage{i}", x)
    x = jnp.mean(x, axis=(1, 2))
    x = ACTS[self.act](nn.Dense(self.feature_dim, use_bias=False, kernel_init=_trunc02, name="conv_head")(x))
    return nn.Dense(self.num_classes, kernel_init=_trunc02, name="classifier")(x)


Model = with_variants(FasterNet, VARIANTS, "FasterNet")


def convert_official_variables(state_dict) -> dict:
  """timm FasterNet state dict (names -> arrays; torch tensors accepted) -> {"params", "batch_stats"}.

  Convolutions OIHW -> HWIO; 1×1 convolutions of the head -> Dense kernels [in, out]; BatchNorm
  weight/bias/running_mean/running_var -> scale/bias and mean/var. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  params, stats = {}, {}

  conv = lambda prefix: sd.conv(prefix, bias=False)
  bn = sd.batch_norm
  params["stem_conv"] = conv("patch_embed.proj")
  params["stem_norm"], stats["stem_norm"] = bn("patch_embed.norm")
  blocks = sorted({tuple(int(n) for n in k.split(".")[1:4:2]) for k in sd if ".blocks." in k})
  for i in sorted({i for i, _ in blocks} - {0}):
    params[f"stage{i}_down"] = conv(f"stages.{i}.downsample.reduction")
    params[f"stage{i}_down_norm"], stats[f"stage{i}_down_norm"] = bn(f"stages.{i}.downsample.norm")
  for i, j in blocks:
    pre, name = f"stages.{i}.blocks.{j}", f"stage{i}_block{j}"
    norm, norm_stats = bn(f"{pre}.mlp.1")
    block = {"pconv": {"partial_conv3": conv(f"{pre}.spatial_mixing.partial_conv3")}, "fc1": conv(f"{pre}.mlp.0"),
             "norm": norm, "fc2": conv(f"{pre}.mlp.3")}
    if f"{pre}.layer_scale" in sd:
      block["layer_scale"] = sd[f"{pre}.layer_scale"]
    params[name], stats[name] = block, {"norm": norm_stats}
  params["conv_head"] = sd.linear("conv_head", bias=False)
  params["classifier"] = sd.linear("classifier")
  sd.check_all_used(ignored=BATCH_NORM_BUFFERS)
  return {"params": params, "batch_stats": stats}


convert_official = params_only(convert_official_variables)
