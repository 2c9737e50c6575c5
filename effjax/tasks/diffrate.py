"""DiffRate's compression-rate search (Chen et al., "DiffRate", §3.3, its engine.py) as a task of the shared trainer.

The model (ViT, CRATE or CRATE-α with pool "cls") runs with config.model.reduction.method = "diffrate" and no kept
counts: every layer then owns a prune and a merge rate ("prune_rate", "merge_rate"; effjax/layers/token_reduction.py)
and sows the FLOPs these rates give. The loss is DiffRate's

  L = CE(logits, labels) + λ (FLOPs / unit − target)²

with only the rates trained: the gradients of every other parameter are stopped here (start from a trained model
with config.init_from, skipping "_rate$", and use weight decay 0). config.task: target (in units), unit (1e9 =
GFLOPs as DiffRate; smaller models use 1e6), lamb (λ; DiffRate: 5), label_smoothing. The searched kept counts
are `token_reduction.learned_keeps(params, num_patches)`, the values of config.model.reduction.prune_keep /
merge_keep for inference.
"""
import jax
from flax import traverse_util

from effjax.tasks import _base, classification

RATES = ("prune_rate", "merge_rate")


def freeze_all_but_rates(params):
  """params with stop_gradient on every leaf that is not a rate."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v if k[-1] in RATES else jax.lax.stop_gradient(v) for k, v in flat.items()})


class Task(classification.Task):
  """Classification cross-entropy plus DiffRate's FLOPs penalty; see the module docstring."""

  def __init__(self, config):
    super().__init__(config)
    self.target = float(config.task.get("target", 0.0))
    self.unit = float(config.task.get("unit", 1e9))
    self.lamb = float(config.task.get("lamb", 5.0))
    reduction = dict(config.model.get("reduction") or {})
    if reduction.get("method") != "diffrate" or reduction.get("prune_keep") or reduction.get("merge_keep"):
      raise ValueError("task 'diffrate' searches rates: set config.model.reduction.method='diffrate' and leave "
                       "prune_keep / merge_keep unset")
    if self.target <= 0 or self.unit <= 0:
      raise ValueError(f"config.task.target and config.task.unit must be positive, got {self.target}, {self.unit}")

  def loss(self, model, variables, batch, rng, train):
    variables = {**variables, "params": freeze_all_but_rates(variables["params"])}
    logits, state = self.apply(model, variables, batch["image"], train=train, rngs={"dropout": rng},
                               capture=lambda *_: False)
    flops = state.pop(_base.INTERMEDIATES)["diffrate_flops"][0]
    ce, accuracy = self.cross_entropy(logits, self.targets(batch["label"]), batch)
    penalty = (flops / self.unit - self.target) ** 2
    metrics = {"accuracy": accuracy, "cross_entropy": ce, "flops": flops / self.unit}
    return ce + self.lamb * penalty, {"metrics": metrics, "model_state": state}
