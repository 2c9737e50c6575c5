"""Local-window and dilated-group attention over token grids of any rank (sequence, image, volume).

D-Former (Wu et al., 2022) alternates two sparse patterns over a token grid of shape S = (S_1, ..., S_n):

* **local** ("LS-MSA"): the grid is cut into non-overlapping windows of shape w; token a attends to the
  tokens of its own window, {b : ⌊b_i / w_i⌋ = ⌊a_i / w_i⌋ for every axis i}.
* **dilated** ("GS-MSA"): the grid is cut into dilated groups with G_i members along axis i, spaced by the
  stride I_i = S_i / G_i; group (i_1, ..., i_n) holds the tokens {g·I + i : 0 ≤ g < G} (per axis), so token
  a attends to {b : b_i ≡ a_i (mod I_i) for every axis i}.
* **global**: every token attends to every token (the grid is one group).

Both are expressed as reshape/transpose into [B·groups, group_len, H, D] around one dense call of
`effjax.kernels.attention.attention`, so a kernel implementation of that op serves these patterns too.
Every axis size must be divisible by the window / group shape; `pad_grid` pads with zeros to a multiple
and returns the validity mask that `grid_attention(..., valid=...)` turns into a key mask.
"""
import math
from collections.abc import Sequence

import jax.numpy as jnp

from effjax.kernels.attention import attention

PATTERNS = ("local", "dilated", "global")


def pad_grid(x, multiple: Sequence[int]):
  """Zero-pads the grid axes of x [B, S_1..S_n, ...] at the end up to multiples of `multiple`.

  Returns (x_padded [B, P_1..P_n, ...], valid bool [P_1..P_n]) with valid True on the original tokens.
  """
  n = len(multiple)
  grid = x.shape[1:1 + n]
  if any(m < 1 for m in multiple):
    raise ValueError(f"pad multiples must be positive, got {tuple(multiple)}")
  extra = [(-s) % m for s, m in zip(grid, multiple)]
  valid = jnp.ones(grid, bool)
  if not any(extra):
    return x, valid
  widths = [(0, 0)] + [(0, e) for e in extra] + [(0, 0)] * (x.ndim - 1 - n)
  return jnp.pad(x, widths), jnp.pad(valid, [(0, e) for e in extra])


def _check(grid, shape, pattern):
  if pattern not in PATTERNS:
    raise ValueError(f"unknown grid attention pattern {pattern!r}; expected one of {PATTERNS}")
  if len(shape) != len(grid):
    raise ValueError(f"{pattern} shape {tuple(shape)} has rank {len(shape)} but the token grid {tuple(grid)} "
                     f"has rank {len(grid)}")
  if pattern != "global" and any(g < 1 or s % g for s, g in zip(grid, shape)):
    raise ValueError(f"token grid {tuple(grid)} is not divisible by the {pattern} shape {tuple(shape)}; "
                     "pad it first with pad_grid (and pass valid=) or change the shape")


def group_tokens(x, pattern: str, shape: Sequence[int] = ()):
  """Gathers the attention groups: x [B, S_1..S_n, *rest] -> [B·num_groups, group_len, *rest].

  local: groups are windows of shape `shape`, members in row-major window order; dilated: `shape` is the
  number of members G per axis and token (g·S/G + i) is member g of group i; global: one group (`shape`
  then only gives the grid rank n).
  """
  n = len(shape)
  b, grid, rest = x.shape[0], x.shape[1:1 + n], x.shape[1 + n:]
  _check(grid, shape, pattern)
  if pattern == "global":
    return x.reshape(b, math.prod(grid), *rest)
  # Split every axis s into (outer, inner) = (s / w, w) for local and (G, s / G) for dilated.
  split = [(s // w, w) if pattern == "local" else (w, s // w) for s, w in zip(grid, shape)]
  x = x.reshape(b, *[d for pair in split for d in pair], *rest)
  outer = [1 + 2 * i for i in range(n)]
  inner = [2 + 2 * i for i in range(n)]
  groups, members = (outer, inner) if pattern == "local" else (inner, outer)
  tail = list(range(1 + 2 * n, x.ndim))
  x = x.transpose([0] + groups + members + tail)
  return x.reshape(b * math.prod(x.shape[1:1 + n]), math.prod(shape), *rest)


def ungroup_tokens(x, grid: Sequence[int], pattern: str, shape: Sequence[int] = ()):
  """Inverse of `group_tokens`: [B·num_groups, group_len, *rest] -> [B, *grid, *rest]."""
  n, rest = len(grid), x.shape[2:]
  _check(grid, shape, pattern)
  if pattern == "global":
    return x.reshape(-1, *grid, *rest)
  split = [(s // w, w) if pattern == "local" else (w, s // w) for s, w in zip(grid, shape)]
  group_dims = [p[0] if pattern == "local" else p[1] for p in split]
  member_dims = [p[1] if pattern == "local" else p[0] for p in split]
  x = x.reshape(-1, *group_dims, *member_dims, *rest)
  # Axis order is now [B, groups..., members...]; put each (outer, inner) pair back side by side.
  order = [0]
  for i in range(n):
    g, m = 1 + i, 1 + n + i
    order += [g, m] if pattern == "local" else [m, g]
  order += list(range(1 + 2 * n, x.ndim))
  return x.transpose(order).reshape(x.shape[0], *grid, *rest)


def grid_attention(q, k, v, pattern: str, shape: Sequence[int] = (), *, valid=None, scale=None, impl="auto"):
  """Attention restricted to local windows, dilated groups, or the whole grid.

  Args:
    q, k, v: [B, S_1..S_n, H, D] (v may have its own last dim); n = len(shape) (any n ≥ 1 for "global").
    pattern: "local", "dilated" or "global" (see the module docstring).
    shape: window shape (local) or members per axis G (dilated); every S_i must be divisible by it.
      Ignored for "global".
    valid: optional bool, broadcastable to [B, S_1..S_n]; False marks padding tokens, which are never
      attended to (their own outputs are computed but meaningless).
    scale: logit scale, default D^-1/2. impl: passed to `attention`.
  Returns:
    [B, S_1..S_n, H, Dv]: within each group, softmax(q kᵀ · scale, masked) v.
  """
  if q.ndim < 4:
    raise ValueError(f"grid attention expects q [B, *grid, H, D], got shape {q.shape}")
  grid = q.shape[1:-2]
  shape = grid if pattern == "global" else tuple(shape)
  _check(grid, shape, pattern)
  qg, kg, vg = (group_tokens(t, pattern, shape) for t in (q, k, v))
  key_mask = None
  if valid is not None:
    key_mask = group_tokens(jnp.broadcast_to(valid, (q.shape[0],) + grid), pattern, shape)
  out = attention(qg, kg, vg, key_mask=key_mask, scale=scale, impl=impl)
  return ungroup_tokens(out, grid, pattern, shape)


def group_ids(grid: Sequence[int], pattern: str, shape: Sequence[int] = ()):
  """Integer id [S_1..S_n] of the group each token belongs to (for visualisation and tests)."""
  shape = tuple(grid) if pattern == "global" else tuple(shape)
  grouped = group_tokens(jnp.zeros((1, *grid), jnp.int32), pattern, shape)
  labels = jnp.broadcast_to(jnp.arange(grouped.shape[0])[:, None], grouped.shape)
  return ungroup_tokens(labels, grid, pattern, shape)[0]
