"""Resampling a learned position embedding to another token grid (fine-tuning at another resolution).

An embedding [..., k + gh·gw, d] holds k prefix rows (class token) and a row-major gh×gw grid. The grid is
resized as a gh×gw image with d channels by `jax.image.resize(method="bilinear")`: half-pixel centres (the
grid corners are not pinned, as in big_vision's `resample_posemb` and timm), antialiased when shrinking. The
prefix rows are kept as they are. Resizing to the same grid returns the embedding unchanged.
"""
import math

import jax
import numpy as np

NAME = r"(^|/)(pos_embedding|pos_embed|x_pos_emb)$"  # effjax param names of learned position embeddings


def _square(n):
  r = math.isqrt(n)
  return (r, r) if r * r == n else None


def infer_grids(n_old: int, n_new: int):
  """(prefix rows k, old grid, new grid) with both grids square; ValueError when no k in (1, 0) fits."""
  for k in (1, 0):
    old, new = _square(n_old - k), _square(n_new - k)
    if old and new:
      return k, old, new
  raise ValueError(f"cannot resample a position embedding of {n_old} tokens to {n_new}: no square grids with "
                   f"0 or 1 prefix tokens fit; give the grids explicitly")


def resample(posemb, num_tokens: int, old_grid=None, new_grid=None):
  """[..., n, d] -> [..., num_tokens, d]. Grids (gh, gw) are inferred as squares unless given."""
  posemb = np.asarray(posemb)
  n, d = posemb.shape[-2:]
  if old_grid is None and new_grid is None:
    _, old_grid, new_grid = infer_grids(n, num_tokens)
  elif old_grid is None or new_grid is None:  # the given grid fixes the prefix; the other grid is square
    k = n - old_grid[0] * old_grid[1] if old_grid else num_tokens - new_grid[0] * new_grid[1]
    other = _square((num_tokens if old_grid else n) - k) if k >= 0 else None
    if other is None:
      raise ValueError(f"cannot resample {n} -> {num_tokens} tokens with grid {old_grid or new_grid}: the other "
                       f"grid is not square")
    old_grid, new_grid = old_grid or other, new_grid or other
  k = n - old_grid[0] * old_grid[1]
  if k < 0 or num_tokens - new_grid[0] * new_grid[1] != k:
    raise ValueError(f"grids {old_grid} -> {new_grid} do not fit {n} -> {num_tokens} tokens with the same prefix")
  lead = posemb.shape[:-2]
  grid = posemb[..., k:, :].reshape(*lead, *old_grid, d)
  resized = jax.image.resize(grid, (*lead, *new_grid, d), method="bilinear")
  resized = np.asarray(resized, posemb.dtype).reshape(*lead, new_grid[0] * new_grid[1], d)
  return np.concatenate([posemb[..., :k, :], resized], axis=-2)
