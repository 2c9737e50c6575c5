"""Next-token language modelling (byte-level by default) and sampling.

Batch contract: {"tokens": int [B, L + 1], "mask": [B] (eval only)}; the model maps tokens[:, :-1]
[B, L] to logits [B, L, V] and is trained with cross-entropy against tokens[:, 1:]. Metrics: loss
(nats/token), bits_per_token = loss / ln 2, accuracy (greedy next-token).

`generate` extends a prompt one token at a time by re-running the model on the fixed-length buffer
(valid because the model is causal): greedy when temperature == 0, else sampling from
softmax(logits / temperature), optionally restricted to the top_k tokens.
"""
import math

import jax
import jax.numpy as jnp
import optax

from effjax.tasks import _base


class Task(_base.Task):
  """config.task: label_smoothing (0.0)."""

  compute_inputs = ()  # int tokens

  def __init__(self, config):
    super().__init__(config)
    self.label_smoothing = float(config.task.get("label_smoothing", 0.0))

  def init_variables(self, model, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, batch["tokens"][:, :-1], train=False)

  def loss(self, model, variables, batch, rng, train):
    tokens = batch["tokens"]
    if tokens.ndim != 2:
      raise ValueError(f"language modelling expects tokens [B, L+1], got shape {tokens.shape}")
    logits, model_state = self.apply(model, variables, tokens[:, :-1], train=train, rngs={"dropout": rng})
    logits = logits.astype(jnp.float32)
    targets = tokens[:, 1:]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), self.label_smoothing)
    per_token = optax.softmax_cross_entropy(logits, labels)
    weights = self.weights(batch, tokens.shape[0])[:, None]
    loss = _base.weighted_mean(per_token, weights)
    accuracy = _base.weighted_mean(jnp.argmax(logits, -1) == targets, weights)
    return loss, {"metrics": {"accuracy": accuracy, "bits_per_token": loss / math.log(2)},
                  "model_state": model_state}

  def predict(self, model, variables, batch, capture=None):
    """Logits [B, L, V] for tokens[:, :-1] (with `capture`: see effjax/tasks/_base.py)."""
    return self.prediction(*self.apply(model, variables, batch["tokens"][:, :-1], train=False, capture=capture),
                           capture)


def generate(model, variables, prompt, num_tokens, rng, *, seq_len, temperature=0.0, top_k=0):
  """Continues `prompt` (int [B, P]) by `num_tokens` tokens -> int [B, P + num_tokens].

  The model runs on a zero-padded buffer of its fixed length `seq_len`; P + num_tokens ≤ seq_len.
  """
  b, p = prompt.shape
  if p < 1 or p + num_tokens > seq_len:
    raise ValueError(f"prompt length {p} + {num_tokens} new tokens must be in [1, seq_len={seq_len}]")
  buffer = jnp.zeros((b, seq_len), jnp.int32).at[:, :p].set(prompt)

  def body(pos, buffer):
    logits = model.apply(variables, buffer, train=False)[:, pos - 1].astype(jnp.float32)
    if temperature == 0.0:
      token = jnp.argmax(logits, -1)
    else:
      logits = logits / temperature
      if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
      token = jax.random.categorical(jax.random.fold_in(rng, pos), logits)
    return buffer.at[:, pos].set(token.astype(jnp.int32))

  buffer = jax.lax.fori_loop(p, p + num_tokens, body, buffer)
  return buffer[:, :p + num_tokens]
