"""Image/sequence classification: softmax cross-entropy with optional label smoothing.

A task owns how a model is called on a batch and what it is trained on. The trainer only uses
`Task(config)`, `init_variables`, `loss`; evaluators use `predict`.

Batch contract: {"image": float [B, ...], "label": int32 [B], "mask": float [B]} where `mask` is 0 for
padding examples that the evaluation pipeline adds to fill the last batch.
"""
import jax
import jax.numpy as jnp
import optax


class Task:
  """Classification; config.task: label_smoothing (float)."""

  def __init__(self, config):
    self.config = config
    self.label_smoothing = config.task.get("label_smoothing", 0.0)
    self.num_classes = config.model.num_classes

  def init_variables(self, model, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  def loss(self, model, variables, batch, rng, train):
    """Returns (mean loss, aux) with aux = {"metrics": {...}, "model_state": updated collections}."""
    mutable = [k for k in variables if k != "params"] if train else []
    out = model.apply(variables, batch["image"], train=train, rngs={"dropout": rng}, mutable=mutable or False)
    logits, model_state = out if mutable else (out, {})
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes), self.label_smoothing)
    per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
    weights = batch.get("mask", jnp.ones_like(per_example))
    loss = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, {"metrics": {"accuracy": accuracy}, "model_state": model_state}

  def predict(self, model, variables, batch):
    """Logits [B, num_classes] in evaluation mode."""
    return model.apply(variables, batch["image"], train=False)
