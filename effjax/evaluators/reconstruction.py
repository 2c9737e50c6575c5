"""Masked-autoencoder reconstructions: masked-patch MSE over the eval split, and a PNG of a few images.

Works with a task whose `predict` returns {"pred", "mask"} and that has `patch_size` and `norm_pix_loss`
(effjax/tasks/mae.py). Every eval batch uses the task's fixed evaluation masking.
config.evaluator.reconstruction: num_images (8, shown in the PNG; 0 disables it).
The PNG (<workdir>/reconstruction/step_<step>.png) shows rows: input, masked input, reconstruction with
the visible patches pasted back, raw prediction.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers.patches import patchify, unpatchify
from effjax.tasks.mae import reconstruction_loss


class Evaluator:
  """Returns {"mse_masked", "mse_visible", "examples"} over the real (mask = 1) examples."""

  def __init__(self, config, task, model):
    opts = dict(config.evaluator.get("reconstruction", {}))
    self.num_images = int(opts.pop("num_images", 8))
    if opts:
      raise ValueError(f"unknown config.evaluator.reconstruction option(s) {sorted(opts)}; valid: ['num_images']")
    self.patch_size = task.patch_size
    self.norm_pix_loss = task.norm_pix_loss

    @jax.jit
    def measure(variables, batch):
      out = task.predict(model, variables, batch)
      w = batch[task.padding_key]
      args = (batch["image"], out["mask"], self.patch_size, self.norm_pix_loss, w)
      masked_weight = jnp.sum(out["mask"] * w[:, None])
      visible_weight = jnp.sum((1 - out["mask"]) * w[:, None])
      sums = {"masked": reconstruction_loss(out["pred"], *args) * masked_weight,
              "visible": reconstruction_loss(out["pred"], batch["image"], 1 - out["mask"], *args[2:]) * visible_weight,
              "masked_weight": masked_weight, "visible_weight": visible_weight, "count": jnp.sum(w)}
      return sums, out
    self._measure = measure

  def run(self, variables, batches, *, step, workdir):
    totals, first = None, None
    for batch in batches:
      sums, out = self._measure(variables, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if first is None:
        first = jax.device_get((batch["image"], out["pred"], out["mask"]))
    totals = jax.device_get(totals)
    if self.num_images and workdir and first is not None and jax.process_index() == 0:
      save_grid(*first, self.patch_size, os.path.join(workdir, "reconstruction", f"step_{step}.png"), self.num_images)
    return {"mse_masked": totals["masked"] / max(float(totals["masked_weight"]), 1.0),
            "mse_visible": totals["visible"] / max(float(totals["visible_weight"]), 1.0),
            "examples": float(totals["count"])}


def compose(images, pred, mask, patch_size):
  """(masked input, reconstruction with visible patches pasted back, raw prediction), each [B, H, W, C]."""
  b, h, w, c = images.shape
  grid = (h // patch_size, w // patch_size)
  target = patchify(images, patch_size)
  m = mask[..., None]
  masked = unpatchify(np.where(m > 0, np.nan, target), patch_size, grid, c)
  pasted = unpatchify(np.where(m > 0, pred, target), patch_size, grid, c)
  return np.asarray(masked), np.asarray(pasted), np.asarray(unpatchify(pred, patch_size, grid, c))


def save_grid(images, pred, mask, patch_size, path, num_images=8):
  """Writes the PNG described in the module docstring for the first `num_images` examples."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  images, pred, mask = (np.asarray(a, np.float32)[:num_images] for a in (images, pred, mask))
  rows = [images, *compose(images, pred, mask, patch_size)]
  titles = ["input", "masked", "reconstruction", "prediction"]
  n = images.shape[0]
  lo, hi = np.nanmin(images), np.nanmax(images)
  fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.4 * len(rows)), squeeze=False)
  for r, (row, title) in enumerate(zip(rows, titles)):
    for i in range(n):
      img = np.clip((row[i] - lo) / max(hi - lo, 1e-6), 0, 1)
      ax = axes[r, i]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(title, fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
