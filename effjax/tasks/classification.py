"""Image/sequence classification: softmax cross-entropy with optional label smoothing, Mixup and CutMix.

The task contract (init_variables, loss, predict) and the shared plumbing are in effjax/tasks/_base.py.

Batch contract: {"image": float [B, ...], "label": int32 [B], "mask": float [B]} where `mask` is 0 for
padding examples that the evaluation pipeline adds to fill the last batch.

Training batches can be mixed on device with the step's rng (so runs are deterministic and resume
exactly): each example is paired with the example at the mirrored batch position (x_i with x_{B-1-i})
with one ratio λ ~ Beta(α, α) per batch, and trained on the soft label λ·ỹ_i + (1 − λ)·ỹ_{B-1-i}, where
ỹ is the label-smoothed one-hot (as in timm):
  Mixup (Zhang et al. 2018):  x = λ·x_i + (1 − λ)·x_{B-1-i}
  CutMix (Yun et al. 2019):   a box of area ≈ (1 − λ)·H·W at a uniform centre, clipped to the image, is
                              pasted from x_{B-1-i}; λ is then reset to 1 − (box area)/(H·W).
With both α > 0, each batch uses one of the two with probability 1/2. Evaluation is never mixed.

Training loss (`loss`): "softmax" cross-entropy against the soft targets, or "bce" (timm's BinaryCrossEntropy, the
ResNet-strikes-back recipes): per-class sigmoid binary cross-entropy against the same soft targets t, averaged
over classes and examples, −mean_k [t_k·log σ(z_k) + (1 − t_k)·log(1 − σ(z_k))]; with bce_target_thresh = τ ≥ 0 the
targets are first binarised, t_k ← [t_k > τ] (RSB A1/A2: τ = 0.2). Evaluation reports softmax cross-entropy.
"""
import jax
import jax.numpy as jnp
import optax

from effjax.tasks import _base


def mix_batch(rng, images, targets, mixup_alpha=0.0, cutmix_alpha=0.0):
  """Mixup / CutMix of a batch with its reverse.

  Args: images float [B, H, W, ...] (CutMix needs the two spatial axes); targets float [B, K] soft labels.
  Returns (images, targets, λ) with λ the weight of the original example (1.0 when both alphas are 0).
  """
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
  if not mixup_alpha and not cutmix_alpha:
    return images, targets, jnp.float32(1.0)
  choose_rng, mixup_rng, cutmix_rng = jax.random.split(rng, 3)
  other = images[::-1]
  candidates = []
  if mixup_alpha:
    lam = jax.random.beta(mixup_rng, mixup_alpha, mixup_alpha).astype(jnp.float32)
    candidates.append(((lam * images + (1 - lam) * other).astype(images.dtype), lam))
  if cutmix_alpha:
    if images.ndim < 3:
      raise ValueError(f"CutMix needs images [B, H, W, ...], got shape {images.shape}")
    candidates.append(_cutmix(cutmix_rng, images, other, cutmix_alpha))
  if len(candidates) == 1:
    mixed, lam = candidates[0]
  else:
    use_cutmix = jax.random.bernoulli(choose_rng)
    mixed = jnp.where(use_cutmix, candidates[1][0], candidates[0][0])
    lam = jnp.where(use_cutmix, candidates[1][1], candidates[0][1])
  return mixed, lam * targets + (1 - lam) * targets[::-1], lam


def _cutmix(rng, images, other, alpha):
  """Pastes a box of `other` into `images`; returns (images, 1 − box area / (H·W))."""
  lam_rng, y_rng, x_rng = jax.random.split(rng, 3)
  h, w = images.shape[1], images.shape[2]
  lam = jax.random.beta(lam_rng, alpha, alpha)
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(y_rng, (), 0, h), jax.random.randint(x_rng, (), 0, w)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  rows, cols = jnp.arange(h), jnp.arange(w)
  box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
  box = box.reshape((1, h, w) + (1,) * (images.ndim - 3))
  area = (y1 - y0) * (x1 - x0)
  return jnp.where(box, other, images), (1.0 - area / (h * w)).astype(jnp.float32)


class Task(_base.Task):
  """Classification; config.task: label_smoothing, mixup_alpha, cutmix_alpha (floats, 0 = off), loss ("softmax" or
  "bce"), bce_target_thresh (< 0: off)."""

  def __init__(self, config):
    super().__init__(config)
    self.label_smoothing = config.task.get("label_smoothing", 0.0)
    self.mixup_alpha = config.task.get("mixup_alpha", 0.0)
    self.cutmix_alpha = config.task.get("cutmix_alpha", 0.0)
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"config.task.label_smoothing must be in [0, 1), got {self.label_smoothing}")
    if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
      raise ValueError(f"config.task.mixup_alpha / cutmix_alpha must be >= 0, got {self.mixup_alpha}, "
                       f"{self.cutmix_alpha}")
    self.num_classes = config.model.num_classes
    self.loss_name = config.task.get("loss", "softmax")
    self.bce_target_thresh = config.task.get("bce_target_thresh", -1.0)
    if self.loss_name not in ("softmax", "bce"):
      raise ValueError(f"config.task.loss must be 'softmax' or 'bce', got {self.loss_name!r}")

  def init_variables(self, model, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  def targets(self, labels):
    """Label-smoothed one-hot targets [B, K] of int labels [B]."""
    return optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing)

  def cross_entropy(self, logits, targets, batch):
    """(mean cross-entropy against soft targets [B, K], accuracy against batch["label"]) over real examples."""
    weights = self.weights(batch, logits.shape[0])
    loss = _base.weighted_mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets), weights)
    return loss, _base.weighted_mean(jnp.argmax(logits, -1) == batch["label"], weights)

  def binary_cross_entropy(self, logits, targets, batch):
    """(mean per-class sigmoid BCE against soft targets [B, K] (see the module docstring), accuracy)."""
    if self.bce_target_thresh >= 0:
      targets = (targets > self.bce_target_thresh).astype(jnp.float32)
    weights = self.weights(batch, logits.shape[0])
    per_example = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(-1)
    return _base.weighted_mean(per_example, weights), _base.weighted_mean(jnp.argmax(logits, -1) == batch["label"],
                                                                          weights)

  def loss(self, model, variables, batch, rng, train):
    """Returns (mean loss, aux) with aux = {"metrics": {...}, "model_state": updated collections}.

    Training batches are mixed when mixup_alpha or cutmix_alpha > 0 (metric "mix_lambda" = λ); the
    accuracy metric then compares against the original labels.
    """
    images, targets, metrics = batch["image"], self.targets(batch["label"]), {}
    if train and (self.mixup_alpha or self.cutmix_alpha):
      mix_rng, rng = jax.random.split(rng)
      images, targets, metrics["mix_lambda"] = mix_batch(mix_rng, images, targets, self.mixup_alpha,
                                                         self.cutmix_alpha)
    logits, model_state = self.apply(model, variables, images, train=train, rngs={"dropout": rng})
    objective = self.binary_cross_entropy if self.loss_name == "bce" else self.cross_entropy
    loss, metrics["accuracy"] = objective(logits, targets, batch)
    return loss, {"metrics": metrics, "model_state": model_state}

  def predict(self, model, variables, batch, capture=None):
    """Logits [B, num_classes] in evaluation mode (with `capture`: see effjax/tasks/_base.py)."""
    return self.prediction(*self.apply(model, variables, batch["image"], train=False, capture=capture), capture)
