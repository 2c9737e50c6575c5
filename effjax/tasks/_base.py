"""The base of every task: how a model is called on a batch, in training and in evaluation.

A task (`effjax/tasks/<name>.py`, class `Task(config)`, chosen by `config.task_name`) owns the objective;
the trainer calls `init_variables` and `loss`, evaluators call `predict` (or `loss`). As Scenic's base
models, the base class holds what every task shares:

* the batch contract the trainer relies on: `compute_inputs`, the floating batch entries cast to the compute
  dtype (config.compute_dtype), and `padding_key`, the per-example weight [B] the evaluation pipeline adds
  (1 = real example, 0 = padding that fills the last batch; training batches have no padding);
* `apply`, the one place that decides which Flax collections are mutable: in training every non-param
  collection (e.g. batch statistics), returned updated as "model_state"; with `capture` also "intermediates";
* `weights` and `weighted_mean`, the padding-aware mean every loss and metric uses.

Subclasses implement:
  init_variables(model, rng, batch) -> variables
  loss(model, variables, batch, rng, train) -> (mean loss, {"metrics": {...}, "model_state": collections})
  predict(model, variables, batch, capture=None) -> output in evaluation mode; with `capture` (a Flax
      capture_intermediates filter) the pair (output, intermediates), intermediates holding the values the
      model sows and the outputs of the modules the filter selects (see `evaluators/coding_rate.py`).
"""
import jax.numpy as jnp

INTERMEDIATES = "intermediates"


def weighted_mean(values, weights):
  """Σ values·w / max(Σ w, 1) with w = weights broadcast to the shape of values (e.g. [B, 1] over [B, L])."""
  weights = jnp.broadcast_to(weights, jnp.shape(values))
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class Task:
  """Shared plumbing of every task; see the module docstring for the contract."""

  compute_inputs = ("image",)
  padding_key = "mask"

  def __init__(self, config):
    self.config = config

  def weights(self, batch, batch_size):
    """The per-example weights [B]: the batch's padding mask, or ones for a batch without padding."""
    return batch.get(self.padding_key, jnp.ones((batch_size,), jnp.float32))

  def apply(self, model, variables, *inputs, train, rngs=None, capture=None, **kwargs):
    """model.apply(variables, *inputs, train=train, ...) -> (output, updated collections).

    The collections are mutable in training (every non-param collection of `variables`) and, with `capture`,
    "intermediates"; without mutable collections the second result is {}.
    """
    mutable = [k for k in variables if k != "params"] if train else []
    if capture is not None:
      mutable.append(INTERMEDIATES)
      kwargs["capture_intermediates"] = capture
    out = model.apply(variables, *inputs, train=train, rngs=rngs, mutable=mutable or False, **kwargs)
    return out if mutable else (out, {})

  @staticmethod
  def prediction(output, collections, capture):
    """What `predict` returns: the output, or (output, intermediates) when `capture` was given."""
    return output if capture is None else (output, collections.get(INTERMEDIATES, {}))
