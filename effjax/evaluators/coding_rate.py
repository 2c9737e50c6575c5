"""Coding rate and sparsity per layer (and per head) of any transformer, as in the CRATE paper's figures.

Coding rate of one layer's subspace tokens (the official `vis_utils/coding_rate.py`): split the tokens into
heads X_k [N, p], L2-normalise every token within its head, then

  R^c = ½ Σ_k logdet(I_N + p/(N ε) X_k X_kᵀ),    ε = 0.01.

Sparsity (the official `cal_sparsity`): the fraction of exact zeros in a layer's output [N, d] (for CRATE the
ISTA output). Both are per sample; the evaluator reports the mean (and std, unbiased for R^c as torch.std,
population for sparsity as np.std) over the real examples of the eval split, per layer and per head.

Which activations: regexes over the paths of the "intermediates" collection of one `task.predict` pass (so the
model runs as the task runs it in evaluation, e.g. with MAE's fixed evaluation masking). A model that sows its
tokens (CRATE sows layer{i}/qkv and layer{i}/after_ista) is matched directly; for any other Flax model the
evaluator also captures the outputs of modules whose path matches (e.g. `attn/query$` for effjax's ViT,
whose query projection gives [B, N, heads, head_dim]). Options in config.evaluator.coding_rate:
  eps (0.01), subspace (r"(^|/)layer\\d+/qkv$"), sparse (r"(^|/)layer\\d+/(after_ista|ista/sparse_code)$":
  the CRATE ISTA output or the CRATE-α sparse code z₂; "" to skip),
  num_heads (default the model's num_heads), max_examples (256), per_head (True), plot (True).
PNG curves over depth are written to <workdir>/coding_rate/step_<step>.png.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

DEFAULTS = dict(eps=0.01, subspace=r"(^|/)layer\d+/qkv$", sparse=r"(^|/)layer\d+/(after_ista|ista/sparse_code)$",
                num_heads=0, max_examples=256, per_head=True, plot=True)


def coding_rate(tokens, eps: float = 0.01):
  """Per-sample, per-head coding rate ½ logdet(I_N + p/(N ε) X Xᵀ) of tokens [B, N, H, p] -> [B, H].

  Tokens are L2-normalised over p. The determinant is taken of the smaller Gram matrix (Sylvester:
  logdet(I_N + c X Xᵀ) = logdet(I_p + c Xᵀ X)) through a Cholesky factor, in float32.
  """
  if tokens.ndim != 4:
    raise ValueError(f"coding_rate expects tokens [B, N, heads, head_dim], got shape {tokens.shape}")
  x = tokens.astype(jnp.float32)
  _, n, _, p = x.shape
  x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  scale = p / (n * eps)
  if p <= n:
    gram = jnp.einsum("bnhp,bnhq->bhpq", x, x)
  else:
    gram = jnp.einsum("bnhp,bmhp->bhnm", x, x)
  size = gram.shape[-1]
  chol = jnp.linalg.cholesky(jnp.eye(size, dtype=jnp.float32) + scale * gram)
  return jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)  # ½ logdet = Σ log diag(L)


def sparsity(x):
  """Per-sample fraction of exact zeros of x [B, ...] -> [B]."""
  return jnp.mean((x.reshape(x.shape[0], -1) == 0).astype(jnp.float32), axis=1)


def _path_name(path) -> str:
  parts = [str(getattr(k, "key", "")) for k in path if hasattr(k, "key")]
  return "/".join(p for p in parts if p != "__call__")


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def select(intermediates, pattern: str) -> list[tuple[str, jax.Array]]:
  """(name, array) of the intermediates whose path matches `pattern`, in natural (depth) order."""
  regex = re.compile(pattern)
  found = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
    name = _path_name(path)
    if regex.search(name):
      found[name] = leaf
  return [(name, found[name]) for name in sorted(found, key=_natural_key)]


class Evaluator:
  """Per-layer coding rate and sparsity over (up to max_examples of) the eval split; see the module doc."""

  def __init__(self, config, task, model):
    self.padding_key = task.padding_key
    opts = dict(DEFAULTS)
    unknown = set(config.evaluator.get("coding_rate", {})) - set(DEFAULTS)
    if unknown:
      raise ValueError(f"unknown config.evaluator.coding_rate option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    opts.update(dict(config.evaluator.get("coding_rate", {})))
    self.opts = opts
    self.num_heads = opts["num_heads"] or getattr(model, "num_heads", 0)
    patterns = [re.compile(p) for p in (opts["subspace"], opts["sparse"]) if p]

    def capture(module, method_name):
      return method_name == "__call__" and any(p.search("/".join(module.path)) for p in patterns)

    def measure(variables, batch):
      _, inter = task.predict(model, variables, batch, capture=capture)
      rates = []
      for name, tokens in select(inter, opts["subspace"]):
        if tokens.ndim == 3:
          if not self.num_heads or tokens.shape[-1] % self.num_heads:
            raise ValueError(f"coding_rate: {name} has shape {tokens.shape}; set evaluator.coding_rate.num_heads")
          tokens = tokens.reshape(tokens.shape[:2] + (self.num_heads, -1))
        rates.append(coding_rate(tokens, opts["eps"]))
      zeros = [sparsity(x) for _, x in select(inter, opts["sparse"])] if opts["sparse"] else []
      return rates, zeros

    self._measure = jax.jit(measure)

  def run(self, variables, batches, *, step, workdir):
    rates, zeros, count = [], [], 0
    for batch in batches:
      keep = np.asarray(batch[self.padding_key]) > 0
      r, z = jax.device_get(self._measure(variables, batch))
      rates.append([x[keep] for x in r])
      zeros.append([x[keep] for x in z])
      count += int(keep.sum())
      if count >= self.opts["max_examples"]:
        break
    if not rates or not rates[0]:
      raise ValueError(f"coding_rate: no intermediates match subspace pattern {self.opts['subspace']!r}")
    limit = self.opts["max_examples"]
    per_layer_rate = [np.concatenate([b[i] for b in rates])[:limit] for i in range(len(rates[0]))]  # [n, H]
    per_layer_zero = [np.concatenate([b[i] for b in zeros])[:limit] for i in range(len(zeros[0]))]
    metrics = summarize(per_layer_rate, per_layer_zero, per_head=self.opts["per_head"])
    if self.opts["plot"] and workdir and jax.process_index() == 0:
      plot_curves(metrics, os.path.join(workdir, "coding_rate", f"step_{step}.png"))
    return metrics


def summarize(rates_per_layer, sparsity_per_layer, per_head=True) -> dict[str, float]:
  """Metric dict from per-layer arrays: rates [n, H] (per sample, per head), sparsity [n]."""
  out = {}
  for i, r in enumerate(rates_per_layer):
    total = r.sum(axis=1)
    out[f"coding_rate/layer{i}"] = float(total.mean())
    out[f"coding_rate_std/layer{i}"] = float(total.std(ddof=1)) if len(total) > 1 else 0.0
    if per_head:
      for h, v in enumerate(r.mean(axis=0)):
        out[f"coding_rate/layer{i}/head{h}"] = float(v)
  for i, z in enumerate(sparsity_per_layer):
    out[f"sparsity/layer{i}"] = float(z.mean())
    out[f"sparsity_std/layer{i}"] = float(z.std())
  return out


def layer_curve(metrics: dict, prefix: str) -> np.ndarray:
  """[depth] values of `prefix`/layer{i} from a metric dict (keys may carry an "eval/" prefix)."""
  values = {}
  for k, v in metrics.items():
    m = re.fullmatch(rf"(?:eval/)?{re.escape(prefix)}/layer(\d+)", k)
    if m:
      values[int(m.group(1))] = v
  return np.array([values[i] for i in sorted(values)])


def plot_curves(metrics: dict, path: str, labels_and_metrics=None):
  """Writes a PNG with coding rate and sparsity over depth (error bars = std over samples).

  `labels_and_metrics` optionally overlays several runs: [(label, metrics), ...] (default: one, unlabeled).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = labels_and_metrics or [("", metrics)]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for label, m in runs:
    for ax, key, title in [(axes[0], "coding_rate", "coding rate $R^c$ in the MSSA subspaces"),
                           (axes[1], "sparsity", "sparsity of ISTA output")]:
      mean = layer_curve(m, key)
      if len(mean):
        std = layer_curve(m, f"{key}_std")
        ax.errorbar(np.arange(1, len(mean) + 1), mean, yerr=std, marker="o", capsize=3, label=label or None)
      ax.set_title(title)
      ax.set_xlabel("layer")
      ax.xaxis.get_major_locator().set_params(integer=True)
      ax.grid(linestyle="--", alpha=0.5)
  if any(label for label, _ in runs):
    axes[0].legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
