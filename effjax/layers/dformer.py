"""D-Former's rank-generic blocks (Wu et al., 2022) on token grids x [B, S_1..S_n, C], shared by the 3-D
segmentation network effjax.models.dformer and the 2-D / 1-D classifier effjax.models.dilated_vit.

A `Stage` starts with a dynamic position encoding (`PositionConv`: x + depthwise 3^n conv(x)) and alternates
`DilatedBlock`s:
  LS-MSA (even blocks): attention inside non-overlapping local windows of shape group_size, and
  GS-MSA (odd blocks): attention inside dilated groups with group_size members per axis, spaced by
                       stride I = P / group_size, where P is the grid padded to a multiple of the stage interval;
each  x ← x + Attn(LN(x)),  x ← x + MLP(LN(x))   (pre-LN, exact GELU, LayerNorm ε 1e-5), attention through
`effjax.kernels.attention` with grid patterns. A stage ends with `PatchMerging` (2^n neighbours concatenated, LN,
linear -> 2C), `PatchExpand` (linear, depth-to-space ×2, LN) or nothing. `SegmentationHead`: expand by `factors`
(linear, depth-to-space, LN), then a 1×1 conv to the classes.
"""
import itertools
import math

import flax.linen as nn
import jax.numpy as jnp

from effjax.kernels import attention_patterns as ap
from effjax.kernels.attention import attention
from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.layers import remat as remat_lib
from effjax.layers.common import TORCH_LN_EPS, DropPath
from effjax.layers.transformer import Mlp


def layer_norm(name):
  """LayerNorm with PyTorch's ε, as every D-Former norm."""
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
    y, valid = pad_grid(layer_norm("norm1")(x), multiple)
    pattern = make_pattern(y.shape[1:-1])
    padded_axes = [p != s for p, s in zip(y.shape[1:-1], grid)]
    dilated = pattern.kind == "grid_dilated"
    if not any(padded_axes) or (dilated and self.official_padding_mask and not any(padded_axes[1:])):
      valid = None
    y = GroupAttention(self.num_heads, self.impl, name="attn")(y, pattern, valid)
    y = y[(slice(None),) + tuple(slice(0, s) for s in grid)]
    x = x + DropPath(self.drop_path_rate)(y, train)
    y = Mlp(int(width * self.mlp_ratio), name="mlp")(layer_norm("norm2")(x))
    return x + DropPath(self.drop_path_rate)(y, train)


class DepthwiseConv(nn.Module):
  """Depthwise 'same' convolution with bias through `effjax.kernels.depthwise_conv`, with the parameters of
  nn.Conv(C, kernel_size, padding="SAME", feature_group_count=C): kernel [*k, 1, C], bias [C]."""
  kernel_size: tuple
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    w = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel_size, 1, c))
    b = self.param("bias", nn.initializers.zeros, (c,))
    return depthwise_conv(x, w[..., 0, :].astype(x.dtype), impl=self.impl) + b.astype(x.dtype)


class PositionConv(nn.Module):
  """Dynamic position encoding (PEG): x + depthwise 3^n conv(x) with bias, on [B, S_1..S_n, C]."""
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    return x + DepthwiseConv((3,) * (x.ndim - 2), self.impl, name="proj")(x)


class PatchMerging(nn.Module):
  """[B, S_1..S_n, C] -> [B, S/2, 2C]: the 2^n neighbours concatenated in row-major offset order, LN, linear."""

  @nn.compact
  def __call__(self, x):
    n, grid = x.ndim - 2, x.shape[1:-1]
    if any(s % 2 for s in grid):
      raise ValueError(f"patch merging needs an even token grid, got {tuple(grid)}")
    parts = [x[(slice(None),) + tuple(slice(o, None, 2) for o in offset)]
             for offset in itertools.product((0, 1), repeat=n)]
    x = layer_norm("norm")(jnp.concatenate(parts, axis=-1))
    return nn.Dense(2 * x.shape[-1] // 2 ** n, use_bias=False, name="reduction")(x)


class PatchExpand(nn.Module):
  """[B, S_1..S_n, C] -> [B, 2S, C/2]: linear C -> 2^(n-1)·C, depth-to-space ×2 per axis, LN."""

  @nn.compact
  def __call__(self, x):
    n, c = x.ndim - 2, x.shape[-1]
    x = nn.Dense(2 ** (n - 1) * c, use_bias=False, name="expand")(x)
    return layer_norm("norm")(depth_to_space(x, (2,) * n))


class SegmentationHead(nn.Module):
  """[B, S_1..S_n, C] -> [B, S·factors, num_classes]: linear C -> prod(factors)·C, depth-to-space, LN, 1×1 conv."""
  factors: tuple
  num_classes: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = nn.Dense(math.prod(self.factors) * c, use_bias=False, name="expand")(x)
    x = layer_norm("norm")(depth_to_space(x, tuple(self.factors)))
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
    x = PositionConv(self.impl, name="pos_block")(x)
    for i in range(self.depth):
      x = block(self.num_heads, "local" if i % 2 == 0 else "dilated", tuple(self.group_size), self.interval,
                self.mlp_ratio, self.drop_path_rates[i] if self.drop_path_rates else 0.0, self.fallback_axes,
                self.official_padding_mask, self.impl, name=f"blocks_{i}")(x, train)
    if self.resample == "merge":
      x = PatchMerging(name="downsample")(x)
    elif self.resample == "expand":
      x = PatchExpand(name="upsample")(x)
    return x
