"""D-Former: a U-shaped dilated transformer for 3-D medical image segmentation (Wu et al., 2022).

Volume [B, D, H, W, C_in] -> Conv3d patch embedding (kernel = stride = (2, 4, 4)) -> encoder stages ->
bottleneck LayerNorm -> decoder stages with concatenated skip connections -> per-voxel logits.

Every stage starts with a dynamic position encoding (x + depthwise 3×3×3 conv(x)) and alternates
  LS-MSA (even blocks): attention inside non-overlapping local windows of shape group_size, and
  GS-MSA (odd blocks): attention inside dilated groups with group_size members per axis, spaced by
                       stride I = P / group_size, where P is the grid padded to a multiple of the stage
                       interval (8, 4, 2, 1);
so two consecutive blocks reach the whole volume at the cost of a window. Each block is
  x ← x + Attn(LN(x)),  x ← x + MLP(LN(x))       (pre-LN, exact GELU, LayerNorm eps 1e-5).
When a stage's grid is smaller than the group (H < group_size[1]) the blocks fall back to global attention.
Encoder stages end with patch merging (2×2×2 neighbours concatenated, LN, linear 8C -> 2C); decoder stages
end with patch expanding (linear C -> 4C, depth-to-space ×2, LN). Each of the len(depths) - 1 heads
expands its level ×(2, 4, 4) (linear, depth-to-space, LN) and applies a 1×1×1 conv to num_classes: head 0
at full resolution, head j at 1/2^j (deep supervision).

The blocks are rank-generic (token grids [B, S_1..S_n, C]) and live in `effjax.layers.dformer`, which
`effjax.models.dilated_vit` shares for images and sequences. `convert_official` maps the reference PyTorch state
dict (kkk55596/D-Former `SegNetwork`) onto these params; see experiments/dformer/README.md for the reference's
quirks and which of them the `fidelity` switch reproduces.
"""
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from effjax.layers.dformer import PatchExpand, SegmentationHead, Stage, layer_norm
from effjax.weights.mapping import conv_kernel, dense_kernel

HEAD = r"^classifier/"  # params a new task replaces: config.init_from.skip's default

FIDELITIES = ("official", "fixed")


class Model(nn.Module):
  """D-Former segmentation network.

  Input volumes [B, D, H, W, in_channels] with D, H, W divisible by patch_size · 2^(len(depths) - 1).
  Output logits [B, D, H, W, num_classes]; with deep_supervision a tuple of len(depths) - 1 logit maps,
  full resolution first, then 1/2, 1/4, ... per axis.
  fidelity "official" reproduces the reference's behaviour where it is a bug (global fallback decided
  by H alone; GS-MSA padding along D alone left unmasked); "fixed" checks every axis and masks all padding.
  They can differ only where a block sees H >= group_size[1] while D < group_size[0] or W < group_size[2], or a
  GS-MSA block pads D alone (tests/models/test_dformer_fidelity.py); where the padded grid fits one window
  (local attention with the padding masked is then global attention) they agree, e.g. (1, 2, 4, 3, 4).
  """
  num_classes: int = 14
  in_channels: int = 1
  width: int = 96
  depths: tuple = (2, 2, 6, 2)
  num_heads: tuple = (3, 6, 12, 24)
  patch_size: tuple = (2, 4, 4)
  group_size: tuple = (2, 8, 8)
  intervals: tuple = (8, 4, 2, 1)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  deep_supervision: bool = True
  fidelity: str = "official"
  remat: str = "none"
  impl: str = "auto"

  def _check(self, x):
    if x.ndim != 5 or x.shape[-1] != self.in_channels:
      raise ValueError(f"D-Former expects volumes [B, D, H, W, {self.in_channels}], got shape {x.shape}")
    if not len(self.depths) == len(self.num_heads) == len(self.intervals) or len(self.depths) < 2:
      raise ValueError(f"depths {self.depths}, num_heads {self.num_heads} and intervals {self.intervals} must "
                       "have the same length ≥ 2")
    if self.fidelity not in FIDELITIES:
      raise ValueError(f"unknown fidelity {self.fidelity!r}; expected one of {FIDELITIES}")
    multiple = [p * 2 ** (len(self.depths) - 1) for p in self.patch_size]
    if any(s % m for s, m in zip(x.shape[1:4], multiple)):
      raise ValueError(f"volume size {x.shape[1:4]} is not divisible by {tuple(multiple)} "
                       "(patch size × 2^(stages - 1)); pad or crop the input")

  @nn.compact
  def __call__(self, x, train=False):
    self._check(x)
    n = len(self.depths)
    official = self.fidelity == "official"
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    stage = lambda i, **kw: Stage(
        self.depths[i], self.num_heads[i], tuple(self.group_size), self.intervals[i], self.mlp_ratio,
        tuple(rates[sum(self.depths[:i]):sum(self.depths[:i + 1])]), fallback_axes=(1,) if official else None,
        official_padding_mask=official, remat=self.remat, impl=self.impl, **kw)

    x = nn.Conv(self.width, tuple(self.patch_size), strides=tuple(self.patch_size), padding="VALID",
                name="patch_embed_proj")(x)
    x = layer_norm("patch_embed_norm")(x)
    skips = []
    for i in range(n):
      skips.append(x)
      x = stage(i, resample="merge" if i < n - 1 else None, name=f"layers_{i}")(x, train)
    x = layer_norm("norm")(x)

    levels = {}  # decoder features per resolution level, for the heads
    x = PatchExpand(name="layers_up_0")(x)
    levels[n - 2] = x
    for i in range(1, n):
      x = jnp.concatenate([x, skips[n - 1 - i]], axis=-1)
      x = nn.Dense(x.shape[-1] // 2, name=f"concat_back_dim_{i}")(x)
      x = stage(n - 1 - i, resample="expand" if i < n - 1 else None, name=f"layers_up_{i}")(x, train)
      if i < n - 1:
        levels[n - 2 - i] = x
    levels[0] = layer_norm("norm_up")(x)

    heads = [SegmentationHead(tuple(self.patch_size), self.num_classes, name=f"final_{j}")(levels[j])
             for j in range(n - 1)]
    return tuple(heads) if self.deep_supervision else heads[0]


def _official_to_flax_path(name):
  """'model_down.layers.0.blocks.1.attn.qkv.weight' -> ('layers_0', 'blocks_1', 'attn', 'qkv'), 'weight'."""
  name = re.sub(r"^model_down\.", "", name)
  name = name.replace("patch_embed.proj", "patch_embed_proj").replace("patch_embed.norm", "patch_embed_norm")
  name = name.replace("pos_block.proj.0", "pos_block.proj")
  name = re.sub(r"^final\.(\d+)\.0\.", r"final.\1.", name)
  name = re.sub(r"^final\.(\d+)\.1\.", r"final.\1.classifier.", name)
  name = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", name)
  *path, leaf = name.split(".")
  return tuple(path), leaf


def convert_official(state_dict):
  """Reference `SegNetwork.state_dict()` (numpy arrays) -> Flax params of `Model` (same sizes).

  Linear [out, in] -> kernel [in, out]; Conv3d OIDHW -> DHWIO (the depthwise PosCNN conv [C, 1, 3, 3, 3]
  becomes [3, 3, 3, 1, C]); the 1×1×1 output conv [K, C, 1, 1, 1] -> Dense kernel [C, K];
  LayerNorm weight -> scale.
  """
  flat = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    path, leaf = _official_to_flax_path(name)
    if leaf == "bias":
      key = "bias"
    elif leaf != "weight":
      raise ValueError(f"unexpected parameter {name!r} in the D-Former state dict")
    elif value.ndim == 1:
      key = "scale"
    elif value.ndim == 2 or path[-1] == "classifier":
      key, value = "kernel", dense_kernel(value)
    elif value.ndim == 5:
      key, value = "kernel", conv_kernel(value)
    else:
      raise ValueError(f"unexpected shape {value.shape} for {name!r}")
    flat[path + (key,)] = jnp.asarray(value)
  return traverse_util.unflatten_dict(flat)
