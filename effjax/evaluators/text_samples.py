"""Language-model evaluator: held-out loss / bits per token / accuracy, and sampled continuations.

config.evaluator.text_samples: prompt_len (64), num_tokens (64), temperatures ((0.0, 0.8)), seed (0).
The prompts are the first bytes of the first two eval examples; continuations for every temperature
(0 = greedy) are written, decoded as UTF-8 with replacement, to <workdir>/text_samples/step_<step>.txt.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from effjax.tasks import language_model


class Evaluator:

  def __init__(self, config, task, model):
    opts = config.evaluator.get("text_samples", {})
    self.prompt_len = int(opts.get("prompt_len", 64))
    self.num_tokens = int(opts.get("num_tokens", 64))
    self.temperatures = tuple(float(t) for t in opts.get("temperatures", (0.0, 0.8)))
    self.seed = int(opts.get("seed", 0))
    self.seq_len = model.seq_len

    @jax.jit
    def sums(variables, batch):
      loss, aux = task.loss(model, variables, batch, jax.random.PRNGKey(0), train=False)
      count = batch[task.padding_key].sum() * (batch["tokens"].shape[1] - 1)
      return {"loss": loss * count, "correct": aux["metrics"]["accuracy"] * count, "count": count}

    self._sums = sums
    self._generate = jax.jit(
        lambda v, prompt, rng, temperature: language_model.generate(
            model, v, prompt, self.num_tokens, rng, seq_len=self.seq_len, temperature=temperature),
        static_argnums=3)

  def run(self, variables, batches, *, step, workdir):
    totals, prompt = None, None
    for batch in batches:
      s = self._sums(variables, batch)
      totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
      if prompt is None:
        prompt = batch["tokens"][:2, :self.prompt_len]
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    loss = float(totals["loss"]) / count
    results = {"loss": loss, "bits_per_token": loss / math.log(2), "accuracy": float(totals["correct"]) / count}
    lines = []
    for temperature in self.temperatures:
      out = np.asarray(jax.device_get(self._generate(variables, prompt, jax.random.PRNGKey(self.seed), temperature)))
      for row in out:
        text = bytes(row.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
        lines.append(f"--- temperature {temperature} ---\n{text[:self.prompt_len]}|>>|{text[self.prompt_len:]}\n")
    if jax.process_index() == 0:
      os.makedirs(os.path.join(workdir, "text_samples"), exist_ok=True)
      with open(os.path.join(workdir, "text_samples", f"step_{step}.txt"), "w") as f:
        f.write("\n".join(lines))
    return results
