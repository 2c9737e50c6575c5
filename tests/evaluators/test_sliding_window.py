"""Sliding-window inference against a loop-by-loop numpy re-implementation of nnU-Net v1's tiled prediction
(network_architecture/neural_network.py: _compute_steps_for_sliding_window, _get_gaussian with
scipy.ndimage.gaussian_filter, pad_nd_image, per-tile softmax · Gaussian summed and divided by the summed Gaussian,
mirroring averaged over flips)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from effjax.evaluators import _sliding_window as sw

K = 3


def _logits(tile):
  """A translation-variant per-voxel 'network': logits depend on the voxel's value and its position in the tile,
  so every tile layout and weighting gives different probabilities. [B, *P, 1] -> [B, *P, K]."""
  grid = np.stack(np.meshgrid(*[np.arange(p) for p in tile.shape[1:-1]], indexing="ij"), -1)  # [*P, 3]
  mix = np.array([[0.3, -0.2, 0.1], [-0.1, 0.25, 0.2], [0.2, 0.1, -0.3]], np.float32)
  return 2.0 * tile * np.array([1.0, -1.0, 0.5], np.float32) + jnp.asarray(grid @ mix, jnp.float32)


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(image, patch, step, mirror_axes):
  """nnU-Net v1's algorithm written out with numpy loops (batch 1, channels last)."""
  spatial = image.shape[1:-1]
  pad = [((max(p - s, 0)) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)]
  x = np.pad(image, [(0, 0)] + pad + [(0, 0)])
  steps = []
  for s, p in zip(x.shape[1:-1], patch):
    n = int(np.ceil((s - p) / (p * step))) + 1
    actual = (s - p) / (n - 1) if n > 1 else 99999999999
    steps.append([int(np.round(actual * i)) for i in range(n)])
  impulse = np.zeros(patch)
  impulse[tuple(p // 2 for p in patch)] = 1
  g = ndimage.gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
  g = (g / g.max()).astype(np.float32)
  g[g == 0] = g[g != 0].min()
  if np.prod([len(s) for s in steps]) == 1:
    g = np.ones(patch, np.float32)
  out = np.zeros(x.shape[:-1] + (K,), np.float64)
  count = np.zeros(x.shape[:-1] + (K,), np.float64)
  for start in itertools.product(*steps):
    sl = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
    tile = x[sl]
    preds = []
    for r in range(len(mirror_axes) + 1):
      for axes in itertools.combinations([1 + a for a in mirror_axes], r):
        preds.append(np.flip(_softmax(np.asarray(_logits(np.flip(tile, axes)))), axes))
    out[sl] += np.mean(preds, 0) * g[None, ..., None]
    count[sl] += g[None, ..., None]
  probs = out / count
  return probs[(slice(None),) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pad, spatial))]


def test_window_starts_match_nnunet_example():
  assert sw.window_starts(110, 64, 0.5) == [0, 23, 46]  # the example in nnU-Net's comment
  assert sw.window_starts(64, 64, 0.5) == [0]
  assert sw.window_starts(160, 64, 0.5) == [0, 32, 64, 96]


def test_gaussian_matches_scipy_filter_of_an_impulse():
  patch = (6, 17, 10)
  impulse = np.zeros(patch)
  impulse[3, 8, 5] = 1
  want = ndimage.gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
  want = want / want.max()
  np.testing.assert_allclose(sw.gaussian_importance(patch), np.where(want == 0, want[want > 0].min(), want),
                             rtol=1e-6, atol=1e-12)


# (image spatial shape, patch, mirror axes): several tiles per axis, one axis padded (4 < 6), mirroring
CASES = [((11, 13, 9), (6, 8, 5), ()), ((4, 13, 12), (6, 8, 6), (0, 2))]


@pytest.mark.parametrize("shape, patch, mirror", CASES)
def test_sliding_window_matches_nnunet_reference(shape, patch, mirror):
  image = np.random.default_rng(0).normal(size=(1, *shape, 1)).astype(np.float32)
  got = jax.jit(lambda im: sw.predict(_logits, im, patch, 0.5, mirror_axes=mirror))(image)
  want = _reference(image, patch, 0.5, mirror)
  assert got.shape == (1, *shape, K)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="patch_size"):
    sw.predict(_logits, np.zeros((1, 4, 4, 1), np.float32), (4, 4, 4))
  with pytest.raises(ValueError, match="step_size"):
    sw.window_starts(10, 4, 0.0)


def test_dice_evaluator_predicts_by_patches():
  import types

  import ml_collections

  from effjax.evaluators import dice
  seen = []

  def per_voxel(model, variables, batch):  # a per-voxel 'network' that reads the class from the image
    seen.append(batch["image"].shape)
    return 5.0 * jax.nn.one_hot(jnp.round(batch["image"][..., 0]).astype(jnp.int32), K)
  labels = np.random.default_rng(1).integers(0, K, size=(2, 6, 10, 8)).astype(np.int32)
  config = ml_collections.ConfigDict(dict(model=dict(num_classes=K), evaluator=dict(dice=dict(
      png_volumes=0, patch_size=(4, 6, 8), step_size=0.5, mirror_axes=(1,)))))
  evaluator = dice.Evaluator(config, types.SimpleNamespace(predict=per_voxel, padding_key="mask"), model=None)
  batch = {"image": jnp.asarray(labels[..., None], jnp.float32), "label": labels, "mask": jnp.ones(2)}
  out = evaluator.run({}, [batch], step=1, workdir=None)
  assert out["dice_mean"] == pytest.approx(1.0) and out["volumes"] == 2
  assert set(seen) == {(2, 4, 6, 8, 1)}  # traced once per mirror: on patches only, never the whole volume
