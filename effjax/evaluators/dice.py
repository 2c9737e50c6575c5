"""Per-class Dice over the eval split, and PNG slices of the predictions.

For each real (mask = 1) volume v and class k ≥ 1, Dice_vk = 2|P ∩ G| / (|P| + |G|) with P the argmax
prediction and G the ground truth; a class absent from both P and G in a volume is left out of that
class's mean (it has no defined Dice). Reports "dice_class{k}" (mean over volumes), "dice_mean" (mean of the
per-class means over classes 1..K-1) and "volumes". On process 0 it writes
<workdir>/dice/step_<step>.png: image | ground truth | prediction for the middle slice (along the first
spatial axis for volumes) of the first `evaluator.dice.png_volumes` eval volumes.
With `evaluator.dice.patch_size` set (the training patch, e.g. (64, 128, 128)) volumes are predicted by nnU-Net's
sliding-window inference (effjax/evaluators/_sliding_window.py; options step_size, default 0.5, and mirror_axes,
default ()), else by one forward pass over the whole input.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from effjax.evaluators import _sliding_window

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], np.uint8)


def colorize(labels):
  """int [..] -> uint8 RGB [.., 3] (classes beyond the palette wrap around)."""
  return PALETTE[np.asarray(labels) % len(PALETTE)]


def slice_panel(image, label, prediction, scale=4):
  """uint8 RGB panel [h·scale, 3·w·scale, 3] from one 2-D slice: image (first channel) | label | prediction."""
  gray = np.asarray(image, np.float32)[..., 0]
  lo, hi = np.percentile(gray, 1), np.percentile(gray, 99)
  gray = (np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
  panel = np.concatenate([np.repeat(gray[..., None], 3, -1), colorize(label), colorize(prediction)], axis=1)
  return np.kron(panel, np.ones((scale, scale, 1), np.uint8))


class Evaluator:
  """Per-class and mean foreground Dice; options in config.evaluator.dice: png_volumes (default 2), patch_size,
  step_size, mirror_axes (sliding-window inference)."""

  def __init__(self, config, task, model):
    self.num_classes = config.model.num_classes
    self.padding_key = task.padding_key
    options = config.evaluator.get("dice", {})
    self.png_volumes = options.get("png_volumes", 2)
    patch_size = tuple(options.get("patch_size", ()))

    def scores(variables, batch):  # logits or probabilities [B, *S, K]
      if not patch_size:
        return task.predict(model, variables, batch)
      return _sliding_window.predict(lambda x: task.predict(model, variables, {"image": x}), batch["image"],
                                     patch_size, options.get("step_size", 0.5),
                                     mirror_axes=tuple(options.get("mirror_axes", ())))

    @jax.jit
    def counts(variables, batch):
      pred = jnp.argmax(scores(variables, batch), -1)
      p = jax.nn.one_hot(pred, self.num_classes, dtype=jnp.int32)
      g = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.int32)
      axes = tuple(range(1, p.ndim - 1))
      return pred, {"inter": jnp.sum(p * g, axes), "pred": jnp.sum(p, axes), "true": jnp.sum(g, axes)}
    self._counts = counts

  def run(self, variables, batches, *, step, workdir):
    sums = np.zeros(self.num_classes)
    seen = np.zeros(self.num_classes)
    volumes, panels = 0, []
    for batch in batches:
      pred, c = self._counts(variables, batch)
      c = jax.device_get(c)
      real = np.asarray(jax.device_get(batch[self.padding_key])) > 0
      denom = c["pred"] + c["true"]
      defined = (denom > 0) & real[:, None]
      sums += np.where(defined, 2.0 * c["inter"] / np.maximum(denom, 1), 0.0).sum(0)
      seen += defined.sum(0)
      volumes += int(real.sum())
      if len(panels) < self.png_volumes and jax.process_index() == 0:
        panels += self._panels(batch, pred, real, self.png_volumes - len(panels))
    per_class = np.where(seen > 0, sums / np.maximum(seen, 1), np.nan)
    results = {f"dice_class{k}": per_class[k] for k in range(1, self.num_classes)}
    results["dice_mean"] = float(np.nanmean(per_class[1:])) if np.any(seen[1:] > 0) else float("nan")
    results["volumes"] = volumes
    if panels and workdir:
      os.makedirs(os.path.join(workdir, "dice"), exist_ok=True)
      Image.fromarray(np.concatenate(panels, axis=0)).save(os.path.join(workdir, "dice", f"step_{step:06d}.png"))
    return results

  def _panels(self, batch, pred, real, limit):
    image = np.asarray(jax.device_get(batch["image"]))
    label = np.asarray(jax.device_get(batch["label"]))
    pred = np.asarray(jax.device_get(pred))
    out = []
    for i in np.flatnonzero(real)[:limit]:
      if label.ndim == 4:  # volumes [B, D, H, W]: the middle slice along D
        mid = label.shape[1] // 2
        out.append(slice_panel(image[i, mid], label[i, mid], pred[i, mid]))
      else:
        out.append(slice_panel(image[i], label[i], pred[i]))
    return out
