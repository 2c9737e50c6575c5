"""Classification evaluator: accuracy and cross-entropy over one pass of the eval split."""
import jax
import jax.numpy as jnp
import optax


class Evaluator:
  """Returns {"accuracy", "loss", "examples"} over the real (mask = 1) examples of the eval batches."""

  def __init__(self, config, task, model):
    del config

    @jax.jit
    def sums(variables, batch):
      logits = task.predict(model, variables, batch).astype(jnp.float32)
      mask = batch[task.padding_key]
      correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]) * mask
      return {"correct": correct.sum(), "loss": loss.sum(), "count": mask.sum()}
    self._sums = sums

  def run(self, variables, batches, *, step, workdir):
    del step, workdir
    totals = None
    for batch in batches:
      s = self._sums(variables, batch)
      totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count, "examples": count}
