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

The blocks are rank-generic (token grids [B, S_1..S_n, C]); `effjax.models.dilated_vit` reuses them for
images and sequences. `convert_official` maps the reference PyTorch state dict (kkk55596/D-Former
`SegNetwork`) onto these params; see experiments/dformer/README.md for the reference's quirks and which of
them the `fidelity` switch reproduces.
"""
import itertools
import math
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.kernels import attention_patterns as ap
from effjax.kernels.attention import attention
from effjax.layers import remat as remat_lib
from effjax.layers.common import TORCH_LN_EPS, DropPath
from effjax.layers.transformer import Mlp

HEAD = r"^classifier/"  # params a new task replaces: config.init_from.skip's default

FIDELITIES = ("official", "fixed")


def _layer_norm(name):
  return nn.LayerNorm(epsilon=TORCH_LN_EPS, name=name)


def depth_to_space(x, factors):
  """[B, S_1..S_n, (f_1..f_n c)] -> [B, S_1 f_1, ..., S_n f_n, c] (einops '(p0 p1 p2 c)' order)."""
  n, grid = len(factors), x.shape[1:-1]
  c = x.shape[-1] // math.prod(factors)
  x = x.reshape(x.shape[0], *grid, *factors, c)
  order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]
  return x.transpose(order).reshape(x.shape[0], *[s * f for s, f in zip(grid, factors)], c)


class GroupAttention(nn.Module):
  """Multi-head self-attention under a grid pattern: [B, S_1..S_n, C] -> same; qkv split as (3, heads, C/heads).

  `pattern` is an `attention_patterns` pattern over the row-major token grid (grid_local, grid_dilated or
  full); `valid` [B|1, S_1..S_n] marks the keys that may be attended to.
  """
  num_heads: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, pattern, valid=None):
    b, c = x.shape[0], x.shape[-1]
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by num_heads {self.num_heads}")
    qkv = nn.Dense(3 * c, name="qkv")(x).reshape(b, -1, 3, self.num_heads, c // self.num_heads)
    key_mask = None if valid is None else jnp.broadcast_to(valid, x.shape[:-1]).reshape(b, -1)
    y = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], pattern=pattern, key_mask=key_mask,
                  impl=self.impl)
    return nn.Dense(c, name="proj")(y.reshape(x.shape))


def pad_grid(x, multiple):
  """Zero-pads the grid axes of x [B, S_1..S_n, C] at the end up to multiples of `multiple`.

  Returns (x_padded [B, P_1..P_n, C], valid bool [P_1..P_n]) with valid True on the original tokens.
  """
  extra = [(-s) % m for s, m in zip(x.shape[1:-1], multiple)]
  valid = jnp.ones(x.shape[1:-1], bool)
  if not any(extra):
    return x, valid
  return jnp.pad(x, [(0, 0)] + [(0, e) for e in extra] + [(0, 0)]), jnp.pad(valid, [(0, e) for e in extra])


class DilatedBlock(nn.Module):
  """One D-Former block on a token grid x [B, S_1..S_n, C] -> same shape.

  pattern "local" (LS-MSA): windows of shape group_size, grid zero-padded to a multiple of group_size.
  pattern "dilated" (GS-MSA): grid zero-padded to a multiple of `interval` per axis giving P; groups of
  G = P / I members with stride I = P // group_size (the reference derives the dilation this way; the
  interval only sets the padding). Padding is inserted after norm1 and masked out of the keys.
  Global attention replaces either pattern when S_a < group_size[a] on any of `fallback_axes`.
  `official_padding_mask`: reproduce the reference, which masks GS-MSA padding only when an axis other
  than the first was padded (padding along the first axis alone is attended to).
  """
  num_heads: int
  pattern: str
  group_size: tuple
  interval: int = 1
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  fallback_axes: tuple | None = None
  official_padding_mask: bool = False
  impl: str = "auto"

  def _layout(self, grid):
    """(pattern maker: padded grid -> attention pattern, pad multiple) for this grid."""
    n = len(grid)
    if len(self.group_size) != n:
      raise ValueError(f"group_size {tuple(self.group_size)} does not match the token grid {tuple(grid)}")
    axes = range(n) if self.fallback_axes is None else self.fallback_axes
    if any(grid[a] < self.group_size[a] for a in axes):
      return lambda padded: ap.full(), (1,) * n
    if self.pattern == "local":
      return lambda padded: ap.grid_local(padded, self.group_size), tuple(self.group_size)
    if self.pattern != "dilated":
      raise ValueError(f"unknown block pattern {self.pattern!r}; expected 'local' or 'dilated'")
    padded = [-(-s // self.interval) * self.interval for s in grid]
    strides = [p // g for p, g in zip(padded, self.group_size)]
    if any(i == 0 or p % i for p, i in zip(padded, strides)):
      raise ValueError(f"dilated groups {tuple(self.group_size)} do not tile the grid {tuple(grid)} padded to "
                       f"a multiple of interval {self.interval}")
    return lambda padded: ap.grid_dilated(padded, strides), (self.interval,) * n

  @nn.compact
  def __call__(self, x, train=False):
    grid, width = x.shape[1:-1], x.shape[-1]
    make_pattern, multiple = self._layout(grid)
    y, valid = pad_grid(_layer_norm("norm1")(x), multiple)
    pattern = make_pattern(y.shape[1:-1])
    padded_axes = [p != s for p, s in zip(y.shape[1:-1], grid)]
    dilated = pattern.kind == "grid_dilated"
    if not any(padded_axes) or (dilated and self.official_padding_mask and not any(padded_axes[1:])):
      valid = None
    y = GroupAttention(self.num_heads, self.impl, name="attn")(y, pattern, valid)
    y = y[(slice(None),) + tuple(slice(0, s) for s in grid)]
    x = x + DropPath(self.drop_path_rate)(y, train)
    y = Mlp(int(width * self.mlp_ratio), name="mlp")(_layer_norm("norm2")(x))
    return x + DropPath(self.drop_path_rate)(y, train)


class PositionConv(nn.Module):
  """Dynamic position encoding (PEG): x + depthwise 3^n conv(x) with bias, on [B, S_1..S_n, C]."""

  @nn.compact
  def __call__(self, x):
    n, c = x.ndim - 2, x.shape[-1]
    return x + nn.Conv(c, (3,) * n, padding="SAME", feature_group_count=c, name="proj")(x)


class PatchMerging(nn.Module):
  """[B, S_1..S_n, C] -> [B, S/2, 2C]: the 2^n neighbours concatenated in row-major offset order, LN, linear."""

  @nn.compact
  def __call__(self, x):
    n, grid = x.ndim - 2, x.shape[1:-1]
    if any(s % 2 for s in grid):
      raise ValueError(f"patch merging needs an even token grid, got {tuple(grid)}")
    parts = [x[(slice(None),) + tuple(slice(o, None, 2) for o in offset)]
             for offset in itertools.product((0, 1), repeat=n)]
    x = _layer_norm("norm")(jnp.concatenate(parts, axis=-1))
    return nn.Dense(2 * x.shape[-1] // 2 ** n, use_bias=False, name="reduction")(x)


class PatchExpand(nn.Module):
  """[B, S_1..S_n, C] -> [B, 2S, C/2]: linear C -> 2^(n-1)·C, depth-to-space ×2 per axis, LN."""

  @nn.compact
  def __call__(self, x):
    n, c = x.ndim - 2, x.shape[-1]
    x = nn.Dense(2 ** (n - 1) * c, use_bias=False, name="expand")(x)
    return _layer_norm("norm")(depth_to_space(x, (2,) * n))


class SegmentationHead(nn.Module):
  """[B, S_1..S_n, C] -> [B, S·factors, num_classes]: linear C -> prod(factors)·C, depth-to-space, LN, 1×1 conv."""
  factors: tuple
  num_classes: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = nn.Dense(math.prod(self.factors) * c, use_bias=False, name="expand")(x)
    x = _layer_norm("norm")(depth_to_space(x, tuple(self.factors)))
    return nn.Dense(self.num_classes, use_bias=False, name="classifier")(x)


class Stage(nn.Module):
  """Position conv, then `depth` blocks alternating local (even) / dilated (odd), then an optional resample.

  [B, S_1..S_n, C] -> [B, S/2, 2C] with resample="merge", [B, 2S, C/2] with "expand", else unchanged.
  """
  depth: int
  num_heads: int
  group_size: tuple
  interval: int
  mlp_ratio: float = 4.0
  drop_path_rates: tuple = ()
  resample: str | None = None
  fallback_axes: tuple | None = None
  official_padding_mask: bool = False
  remat: str = "none"
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    block = remat_lib.remat(DilatedBlock, self.remat)
    x = PositionConv(name="pos_block")(x)
    for i in range(self.depth):
      x = block(self.num_heads, "local" if i % 2 == 0 else "dilated", tuple(self.group_size), self.interval,
                self.mlp_ratio, self.drop_path_rates[i] if self.drop_path_rates else 0.0, self.fallback_axes,
                self.official_padding_mask, self.impl, name=f"blocks_{i}")(x, train)
    if self.resample == "merge":
      x = PatchMerging(name="downsample")(x)
    elif self.resample == "expand":
      x = PatchExpand(name="upsample")(x)
    return x


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
    x = _layer_norm("patch_embed_norm")(x)
    skips = []
    for i in range(n):
      skips.append(x)
      x = stage(i, resample="merge" if i < n - 1 else None, name=f"layers_{i}")(x, train)
    x = _layer_norm("norm")(x)

    levels = {}  # decoder features per resolution level, for the heads
    x = PatchExpand(name="layers_up_0")(x)
    levels[n - 2] = x
    for i in range(1, n):
      x = jnp.concatenate([x, skips[n - 1 - i]], axis=-1)
      x = nn.Dense(x.shape[-1] // 2, name=f"concat_back_dim_{i}")(x)
      x = stage(n - 1 - i, resample="expand" if i < n - 1 else None, name=f"layers_up_{i}")(x, train)
      if i < n - 1:
        levels[n - 2 - i] = x
    levels[0] = _layer_norm("norm_up")(x)

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
  params = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    path, leaf = _official_to_flax_path(name)
    if leaf == "bias":
      key = "bias"
    elif leaf != "weight":
      raise ValueError(f"unexpected parameter {name!r} in the D-Former state dict")
    elif value.ndim == 1:
      key = "scale"
    elif value.ndim == 2:
      key, value = "kernel", value.T
    elif path[-1] == "classifier":
      key, value = "kernel", value.reshape(value.shape[:2]).T
    elif value.ndim == 5:
      key, value = "kernel", value.transpose(2, 3, 4, 1, 0)
    else:
      raise ValueError(f"unexpected shape {value.shape} for {name!r}")
    node = params
    for part in path:
      node = node.setdefault(part, {})
    node[key] = jnp.asarray(value)
  return params
