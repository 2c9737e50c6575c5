"""Diffusion evaluator: held-out denoising loss and generated sample grids written as PNG.

config.evaluator.samples: num_samples (16), steps (20), methods (("ddim",)), guidance (0.0), seed (0),
cache_interval (1: DeepCache off; k > 1 reuses the FIT denoiser's latent features for k - 1 of every k steps).
Writes <workdir>/samples/step_<step>_<method>.png (a near-square grid; class-conditional samples use
labels 0, 1, 2, ... cycling over the classes) and returns {"loss", "sample_mean_<method>",
"sample_std_<method>"}.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from effjax.tasks import diffusion


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """[N, H, W, C] floats in [0, 1] -> uint8 grid [rows·(H+pad)+pad, cols·(W+pad)+pad, C]."""
  n, h, w, c = images.shape
  cols = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for i, img in enumerate(images):
    r, q = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
  return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def write_png(path: str, grid: np.ndarray):
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


class Evaluator:

  def __init__(self, config, task, model):
    opts = config.evaluator.get("samples", {})
    self.num_samples = int(opts.get("num_samples", 16))
    self.steps = int(opts.get("steps", 20))
    self.methods = tuple(opts.get("methods", ("ddim",)))
    self.guidance = float(opts.get("guidance", 0.0))
    self.seed = int(opts.get("seed", 0))
    self.cache_interval = diffusion.check_cache_interval(opts.get("cache_interval", 1))
    self.task = task
    self.loss = jax.jit(lambda v, b: task.loss(model, v, b, jax.random.PRNGKey(self.seed), train=False)[0])
    self._samplers = {
        m: jax.jit(lambda v, rng, labels, shape, m=m: task.sample(
            model, v, rng, shape, steps=self.steps, method=m, labels=labels, guidance=self.guidance,
            cache_interval=self.cache_interval),
            static_argnums=3)
        for m in self.methods}

  def run(self, variables, batches, *, step, workdir):
    total, count, image_shape = 0.0, 0.0, None
    for batch in batches:
      n = float(jnp.sum(batch[self.task.padding_key]))
      total += float(self.loss(variables, batch)) * n
      count += n
      image_shape = tuple(batch["image"].shape[1:])
    results = {"loss": total / max(count, 1.0)}
    labels = None
    if self.task.num_classes:
      labels = jnp.arange(self.num_samples) % self.task.num_classes
    for method, sampler in self._samplers.items():
      samples = np.asarray(jax.device_get(sampler(variables, jax.random.PRNGKey(self.seed), labels,
                                                  (self.num_samples,) + image_shape)))
      if jax.process_index() == 0:
        write_png(os.path.join(workdir, "samples", f"step_{step}_{method}.png"), image_grid(samples))
      results[f"sample_mean_{method}"] = float(samples.mean())
      results[f"sample_std_{method}"] = float(samples.std())
    return results
