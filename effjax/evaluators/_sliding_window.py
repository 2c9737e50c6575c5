"""Sliding-window inference for dense (3-D) segmentation, as nnU-Net (v1, which D-Former and nnFormer run) predicts.

A volume larger than the training patch P is covered by overlapping tiles; per axis of size S (zero-padded
symmetrically to P first when S < P) the tiles start at
  n = ceil((S − P) / (P·step_size)) + 1,   start_i = round(i · (S − P) / (n − 1)),   i = 0..n−1
(one tile at 0 when S = P), so neighbouring tiles overlap by at least 1 − step_size (0.5: half a patch). Each tile's
softmax probabilities are weighted by a Gaussian importance map g (σ = P/8 per axis, centred at P//2, peak 1; the
tile centre is trusted more than its border) and the result is
  p(x) = Σ_tiles g(x − start) · softmax(f(tile))(x − start) / Σ_tiles g(x − start),
optionally averaged over mirrored inputs (test-time augmentation: every subset of `mirror_axes` flipped, predicted,
flipped back). Tiles run one after another in a lax.scan, so memory is one tile's activations.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np


def window_starts(size, patch, step_size=0.5):
  """Tile start offsets along one axis of length `size` >= `patch` (nnU-Net's _compute_steps_for_sliding_window)."""
  if not 0 < step_size <= 1:
    raise ValueError(f"sliding window step_size must be in (0, 1], got {step_size}")
  if size < patch:
    raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad it first")
  if size == patch:
    return [0]
  n = int(np.ceil((size - patch) / (patch * step_size))) + 1
  return [int(np.round((size - patch) / (n - 1) * i)) for i in range(n)]


def gaussian_importance(patch_size, sigma_scale=1 / 8):
  """float32 [*patch_size]: Π_a exp(−(x_a − P_a//2)² / (2 (σ_a P_a)²)), cut (to 0) beyond 4σ_a + 0.5 like
  scipy.ndimage.gaussian_filter of a centred impulse, scaled to peak 1; zeros are raised to the smallest nonzero
  value (nnU-Net: no voxel may get zero total weight)."""
  g = np.ones((), np.float64)
  for p in patch_size:
    sigma = p * sigma_scale
    d = np.arange(p) - p // 2
    g = np.multiply.outer(g, np.where(np.abs(d) <= int(4 * sigma + 0.5), np.exp(-0.5 * (d / sigma) ** 2), 0.0))
  g = (g / g.max()).astype(np.float32)
  g[g == 0] = g[g != 0].min()
  return g


def predict(logits_fn, image, patch_size, step_size=0.5, gaussian=True, mirror_axes=()):
  """Class probabilities [B, *S, K] of `image` [B, *S, C] by sliding windows of `patch_size` (len(S) ints).

  logits_fn: [B, *patch_size, C] -> logits [B, *patch_size, K] (jax-traceable). mirror_axes: spatial axes (0-based
  over S) to mirror for test-time augmentation. Shapes are static: tile starts and the weight normaliser are
  computed with numpy at trace time.
  """
  spatial = image.shape[1:-1]
  if len(patch_size) != len(spatial):
    raise ValueError(f"patch_size {tuple(patch_size)} does not match the image's spatial shape {spatial}")
  if any(a not in range(len(spatial)) for a in mirror_axes):
    raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be spatial axes in 0..{len(spatial) - 1}")
  patch_size = tuple(int(p) for p in patch_size)
  pads = [((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0) for s, p in zip(spatial, patch_size)]
  x = jnp.pad(image, [(0, 0)] + pads + [(0, 0)])
  padded = x.shape[1:-1]
  starts = np.array(list(itertools.product(*(window_starts(s, p, step_size) for s, p in zip(padded, patch_size)))))
  weight = gaussian_importance(patch_size) if gaussian and len(starts) > 1 else np.ones(patch_size, np.float32)
  norm = np.zeros(padded, np.float32)
  for start in starts:
    norm[tuple(slice(s, s + p) for s, p in zip(start, patch_size))] += weight
  flips = [axes for r in range(len(mirror_axes) + 1) for axes in itertools.combinations(mirror_axes, r)]

  def tile_probs(tile):
    total = 0.0
    for axes in flips:
      axes = tuple(1 + a for a in axes)
      total += jnp.flip(jax.nn.softmax(logits_fn(jnp.flip(tile, axes)).astype(jnp.float32), -1), axes)
    return total / len(flips)

  def body(acc, start):
    zero = jnp.zeros((), start.dtype)
    tile = jax.lax.dynamic_slice(x, (zero, *start, zero), (x.shape[0], *patch_size, x.shape[-1]))
    probs = tile_probs(tile) * weight[None, ..., None]
    index = (zero, *start, zero)
    current = jax.lax.dynamic_slice(acc, index, probs.shape)
    return jax.lax.dynamic_update_slice(acc, current + probs, index), None

  num_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(
      (x.shape[0], *patch_size, x.shape[-1]), x.dtype)).shape[-1]
  acc = jnp.zeros((x.shape[0], *padded, num_classes), jnp.float32)
  acc, _ = jax.lax.scan(body, acc, jnp.asarray(starts, jnp.int32))
  probs = acc / norm[None, ..., None]
  return probs[(slice(None),) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, spatial))]
