"""Terminator training objective (Zhang 2024): smoothed cross-entropy + slow loss + norm penalties.

  L = CE_ε(logits, y) + λ_slow · L_slow + λ_reg · (Σ_fast ‖θ‖₂ + slow_factor · Σ_slow ‖W‖₂)

* CE_ε: cross-entropy with labels smoothed by ε (`label_smoothing`, official 0.09): target
  (1 − ε)·onehot + ε/K, identical to the official LabelSmoothingCrossEntropy.
* L_slow, the local feedback ("slow neural") loss between the global hyper-kernels W_i [*S, C_i] of
  the blocks: Σ_{i>j} mean((tile_c(W_j, C_i/C_j) − W_i)²), earlier kernels tiled along channels
  (`slow_loss`). Only during training, as in the official wrapper (λ_slow = `slow_loss_weight`, 1).
* Norm penalties (official LnLoss with l2_reg 5e-5): the Frobenius norms (not squared) of every
  fast-network parameter — path matching `fast_regex` but not `slow_net` — plus `slow_factor` (1e-6)
  times the norms of the slow networks' weight matrices matching `slow_regex` (the official code
  penalises the Conv2d weights of the 2D slow networks; the 1D channel slow nets are excluded).

Evaluation (train=False) reports the smoothed cross-entropy only, as the official validation loss.
"""
import re

import jax.numpy as jnp
from flax import traverse_util

from effjax.tasks import classification


def slow_loss(hyper_kernels):
  """Σ_{i>j} mean((tile(W_j) − W_i)²) over global hyper-kernels W_i [*S, C_i]; C_i a multiple of C_j."""
  total = jnp.zeros((), jnp.float32)
  for i in range(1, len(hyper_kernels)):
    deep = hyper_kernels[i]
    for j in range(i):
      shallow = hyper_kernels[j]
      if deep.shape[-1] % shallow.shape[-1] or deep.shape[:-1] != shallow.shape[:-1]:
        raise ValueError(f"slow loss: hyper-kernel {shallow.shape} cannot be tiled to {deep.shape}")
      tiled = jnp.tile(shallow, (1,) * (shallow.ndim - 1) + (deep.shape[-1] // shallow.shape[-1],))
      total = total + jnp.mean(jnp.square(tiled - deep))
  return total


def _safe_norm(x):
  """‖x‖₂ with gradient 0 at x = 0 (as PyTorch's norm backward), not NaN: zero-initialised biases."""
  squares = jnp.sum(jnp.square(x.astype(jnp.float32)))
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def norm_penalty(params, fast_regex, slow_regex, slow_factor):
  """(Σ ‖θ‖ over fast params, Σ ‖W‖ over slow weights) by "/"-joined param path; returns the weighted sum."""
  fast = re.compile(fast_regex)
  slow = re.compile(slow_regex)
  fast_sum = jnp.zeros((), jnp.float32)
  slow_sum = jnp.zeros((), jnp.float32)
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    norm = _safe_norm(value)
    if slow.search(path):
      slow_sum = slow_sum + norm
    elif fast.search(path) and "slow_net" not in path:
      fast_sum = fast_sum + norm
  return fast_sum + slow_factor * slow_sum


class Task(classification.Task):
  """Classification's targets, cross-entropy, accuracy and predict, plus the Terminator losses.

  config.task: label_smoothing (0.09), slow_loss_weight (1.0), l2_reg (5e-5), slow_factor (1e-6),
  fast_regex ("fast"), slow_regex (weights of slow_net_g / slow_net_l* / slow_net_gs)."""

  def __init__(self, config):
    super().__init__(config)
    t = config.task
    self.label_smoothing = t.get("label_smoothing", 0.09)
    self.slow_loss_weight = t.get("slow_loss_weight", 1.0)
    self.l2_reg = t.get("l2_reg", 5e-5)
    self.slow_factor = t.get("slow_factor", 1e-6)
    self.fast_regex = t.get("fast_regex", r"fast")
    self.slow_regex = t.get("slow_regex", r"slow_net_(g|gs|l\d)/.*kernel$")

  def loss(self, model, variables, batch, rng, train):
    """Returns (L, aux); aux["metrics"]: accuracy, ce (and slow_loss, reg_loss in training)."""
    (logits, hyper_kernels), model_state = self.apply(model, variables, batch["image"], train=train,
                                                      rngs={"dropout": rng}, return_hyper_kernels=True)
    ce, accuracy = self.cross_entropy(logits, self.targets(batch["label"]), batch)
    metrics = {"accuracy": accuracy, "ce": ce}
    loss = ce
    if train:
      slow = slow_loss(hyper_kernels)
      reg = self.l2_reg * norm_penalty(variables["params"], self.fast_regex, self.slow_regex, self.slow_factor)
      loss = ce + self.slow_loss_weight * slow + reg
      metrics.update(slow_loss=slow, reg_loss=reg)
    return loss, {"metrics": metrics, "model_state": model_state}
