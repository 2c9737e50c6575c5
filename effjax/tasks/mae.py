"""Masked autoencoding (He et al., 2022): reconstruct the pixels of randomly removed patches.

The model (e.g. `effjax/models/crate_mae.py`) is called as model.apply(variables, images, train=,
mask_ratio=, rngs={"masking": ...}) and returns {"pred": [B, N, p·p·C], "mask": [B, N] (1 = removed)}.
The loss is the mean over removed patches of the per-patch mean squared error against the patchified
image (optionally normalised per patch, `norm_pix_loss`). Masking is drawn from the step's rng, so a step is
reproducible; evaluation uses the fixed rng PRNGKey(config.task.eval_seed).

config.task: mask_ratio (0.75), norm_pix_loss (False), eval_seed (0). config.model.patch_size is read.
Batch contract: {"image": float [B, H, W, C], "mask": optional float [B] (0 = padding example)}.
"""
import jax
import jax.numpy as jnp

from effjax.layers.patches import patchify
from effjax.tasks import _base

OPTIONS = ("mask_ratio", "norm_pix_loss", "eval_seed")


def reconstruction_loss(pred, images, mask, patch_size: int, norm_pix_loss: bool = False, weights=None):
  """Mean over removed patches of mean_k (pred − target)²; pred [B, N, p·p·C], images [B, H, W, C], mask [B, N].

  norm_pix_loss: the target patch is standardised, (t − mean) / sqrt(var + 1e-6) with the unbiased variance
  (as torch.var in the official code). weights [B] (0 = padding) scale each example's patches.
  """
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  if weights is not None:
    mask = mask * weights[:, None]
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Task(_base.Task):
  """Masked autoencoding; see the module docstring."""

  def __init__(self, config):
    super().__init__(config)
    unknown = set(config.task) - set(OPTIONS)
    if unknown:
      raise ValueError(f"unknown config.task option(s) for mae: {sorted(unknown)}; valid: {list(OPTIONS)}")
    self.mask_ratio = float(config.task.get("mask_ratio", 0.75))
    self.norm_pix_loss = bool(config.task.get("norm_pix_loss", False))
    self.eval_seed = int(config.task.get("eval_seed", 0))
    self.patch_size = config.model.patch_size
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"config.task.mask_ratio must be in [0, 1), got {self.mask_ratio}")

  def init_variables(self, model, rng, batch):
    params_rng, masking_rng, dropout_rng = jax.random.split(rng, 3)
    return model.init({"params": params_rng, "masking": masking_rng, "dropout": dropout_rng}, batch["image"],
                      train=False, mask_ratio=self.mask_ratio)

  @staticmethod
  def _rngs(rng):
    masking_rng, dropout_rng = jax.random.split(rng)
    return {"masking": masking_rng, "dropout": dropout_rng}

  def forward(self, model, variables, images, rng, capture=None):
    """The model's output dict in evaluation mode, masking drawn from `rng` (`capture`: effjax/tasks/_base.py)."""
    out = self.apply(model, variables, images, train=False, rngs=self._rngs(rng), capture=capture,
                     mask_ratio=self.mask_ratio)
    return self.prediction(*out, capture)

  def loss(self, model, variables, batch, rng, train):
    """Returns (masked-patch MSE, aux) with aux = {"metrics": {...}, "model_state": updated collections}."""
    out, model_state = self.apply(model, variables, batch["image"], train=train, rngs=self._rngs(rng),
                                  mask_ratio=self.mask_ratio)
    weights = batch.get(self.padding_key)
    loss = reconstruction_loss(out["pred"], batch["image"], out["mask"], self.patch_size, self.norm_pix_loss, weights)
    visible = reconstruction_loss(out["pred"], batch["image"], 1.0 - out["mask"], self.patch_size,
                                  self.norm_pix_loss, weights)
    return loss, {"metrics": {"mse_visible": visible}, "model_state": model_state}

  def predict(self, model, variables, batch, capture=None):
    """Model outputs {"pred", "mask", ...} in evaluation mode with the fixed evaluation masking."""
    return self.forward(model, variables, batch["image"], jax.random.PRNGKey(self.eval_seed), capture)
