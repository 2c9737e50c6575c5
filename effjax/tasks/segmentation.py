"""Dense segmentation (2-D or 3-D): cross-entropy + soft Dice, with deep supervision.

Batch contract: {"image": float [B, *S, C], "label": int [B, *S], "mask": optional float [B]} (mask 0 =
padding example). The model returns logits [B, *S, K], or with deep supervision a tuple of logit maps,
full resolution first, then coarser ones whose sizes divide S.

Per head j with labels y_j (y subsampled by nearest neighbour to the head's size) and probabilities p_j:
  L_j = ce_weight · CE(p_j, y_j) + dice_weight · (1 - mean_{k ≥ first} Dice_k),
  Dice_k = (2 Σ p·1[y=k] + ε) / (Σ p + Σ 1[y=k] + ε)   (sums over batch and voxels: "batch Dice"),
  L = Σ_j w_j L_j / Σ_j w_j   with w = config.task.deep_supervision_weights (missing heads weigh 0),
where first = 1 unless dice_include_background.
"""
import jax
import jax.numpy as jnp
import optax

from effjax.tasks import _base


def subsample_labels(labels, shape):
  """Nearest-neighbour subsampling [B, *S] -> [B, *shape], with S an integer multiple of shape."""
  grid = labels.shape[1:]
  if len(shape) != len(grid) or any(s % t for s, t in zip(grid, shape)):
    raise ValueError(f"head size {tuple(shape)} does not divide the label size {tuple(grid)}")
  return labels[(slice(None),) + tuple(slice(None, None, s // t) for s, t in zip(grid, shape))]


def soft_dice(probs, onehot, weights, eps=1e-5):
  """Per-class batch Dice [K] from probs / onehot [B, *S, K] and example weights [B]."""
  w = weights.reshape((-1,) + (1,) * (probs.ndim - 1))
  axes = tuple(range(probs.ndim - 1))
  intersection = jnp.sum(probs * onehot * w, axes)
  total = jnp.sum(probs * w, axes) + jnp.sum(onehot * w, axes)
  return (2.0 * intersection + eps) / (total + eps)


class Task(_base.Task):
  """Segmentation; config.task: ce_weight, dice_weight, deep_supervision_weights, dice_include_background."""

  def __init__(self, config):
    super().__init__(config)
    self.num_classes = config.model.num_classes
    self.ce_weight = config.task.get("ce_weight", 1.0)
    self.dice_weight = config.task.get("dice_weight", 1.0)
    self.head_weights = tuple(config.task.get("deep_supervision_weights", (1.0,)))
    self.first_class = 0 if config.task.get("dice_include_background", False) else 1
    if not self.head_weights or self.head_weights[0] <= 0 or min(self.head_weights) < 0:
      raise ValueError(f"deep_supervision_weights {self.head_weights} must start with a positive weight "
                       "for the full-resolution head and be non-negative")

  def init_variables(self, model, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  def _head_loss(self, logits, labels, weights):
    logits = logits.astype(jnp.float32)
    labels = subsample_labels(labels, logits.shape[1:-1])
    onehot = jax.nn.one_hot(labels, self.num_classes)
    ce = optax.softmax_cross_entropy(logits, onehot)
    ce = _base.weighted_mean(ce.reshape(ce.shape[0], -1).mean(-1), weights)
    dice = soft_dice(jax.nn.softmax(logits), onehot, weights)[self.first_class:].mean()
    return self.ce_weight * ce + self.dice_weight * (1.0 - dice), ce, dice

  def loss(self, model, variables, batch, rng, train):
    """Returns (loss, aux) with aux = {"metrics": {"ce", "soft_dice", "dice"}, "model_state": ...}."""
    outputs, model_state = self.apply(model, variables, batch["image"], train=train, rngs={"dropout": rng})
    heads = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    weights = self.weights(batch, batch["label"].shape[0])
    total, norm, metrics = 0.0, 0.0, {}
    for j, (logits, w) in enumerate(zip(heads, self.head_weights)):
      if w == 0:
        continue
      loss_j, ce, dice = self._head_loss(logits, batch["label"], weights)
      total, norm = total + w * loss_j, norm + w
      if j == 0:
        metrics = {"ce": ce, "soft_dice": dice}
    hard = jax.nn.one_hot(jnp.argmax(heads[0], -1), self.num_classes)
    onehot = jax.nn.one_hot(batch["label"], self.num_classes)
    metrics["dice"] = soft_dice(hard, onehot, weights)[self.first_class:].mean()
    return total / norm, {"metrics": metrics, "model_state": model_state}

  def predict(self, model, variables, batch, capture=None):
    """Full-resolution logits [B, *S, K] in evaluation mode (with `capture`: see effjax/tasks/_base.py)."""
    out, collections = self.apply(model, variables, batch["image"], train=False, capture=capture)
    return self.prediction(out[0] if isinstance(out, (tuple, list)) else out, collections, capture)
