"""Token reduction at inference for the transformer classifiers: ToMe merging and DiffRate pruning + merging.

Tokens x [B, N, D] carry sizes s [B, N, 1] (how many input patches each one stands for; 1 at the start).
Every layer reduces between its attention and its MLP / ISTA step, and attention is proportional to size:

  attention logits  q kᵀ · scale + log s                                  (ToMe eq. 1, DiffRate keeps it)

* ToMe (Bolya et al., "Token Merging: Your ViT but Faster", §3): bipartite soft matching on the keys averaged
  over heads. Alternate tokens form sets A (even positions) and B (odd); each A token's most cosine-similar B
  token is its edge; the r A tokens with the strongest edges are merged into their B partners by the
  size-weighted average x ← Σ sᵢxᵢ / Σ sᵢ, sizes add up; the class token (position 0, in A) never merges.
  The layer schedule is `tome_schedule` (ToMe's `parse_r`: constant r or a (r, inflection) ramp).
* DiffRate (Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision Transformers", §3):
  tokens are sorted by the class token's attention (mean over heads); the first `prune_keep` are kept; then
  the tokens after position `merge_keep` are merged (plain mean) into their most cosine-similar token among the
  first `merge_keep` (class token excluded as a target), each merged size first scaled by that similarity
  (the official inference rule). Kept counts include the class token.
* DiffRate's search (§3.2–3.3, its training branch; trained by `effjax/tasks/diffrate.py`) keeps all N tokens and
  masks instead: per layer a prune and a merge rate (softmax over kept-token candidates with a straight-through
  ceil and mask: `kept_number`, `token_mask`), masked attention (`policy_attention`), `search_reduce`, and the
  FLOPs objective (`flops`). `learned_keeps` turns the learned rates into kept counts for inference.

Inference takes static token counts, so every reduced shape is known at trace time; the blocks take the state as
one `Tokens` argument (`start` makes it, `finish` ends it).
"""
import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

METHODS = ("none", "tome", "diffrate")


@dataclasses.dataclass(frozen=True)
class Step:
  """One layer's reduction: `r` tokens merged by ToMe, or DiffRate's kept counts (class token included)."""
  method: str
  r: int = 0
  prune_keep: int = 0
  merge_keep: int = 0
  search: bool = False  # DiffRate's search: learned rates (params of the layer), masked tokens, no kept counts
  index: int = 0        # the layer's index (DiffRate's first layer is not compressed)


class Tokens(NamedTuple):
  """What travels with the tokens between reducing layers: sizes [B, N, 1]; in DiffRate's search also the keep
  mask [B, N] and the per-layer (prune, merge) kept numbers (scalars with straight-through gradients)."""
  size: jax.Array
  mask: jax.Array | None = None
  kept: tuple = ()


def tome_schedule(depth: int, r, inflection: float = 0.0) -> list[int]:
  """ToMe's per-layer r (its `parse_r`): an int r with an inflection in [-1, 1] gives a linear ramp from
  int(r·(1 − inflection)) to 2r minus that (constant at 0, ToMe's "decreasing schedule" at −1); a list gives r
  per layer."""
  if isinstance(r, (list, tuple)):
    if len(r) != depth or any(int(v) != v or v < 0 for v in r):
      raise ValueError(f"reduction.r as a list needs {depth} non-negative ints (one per layer), got {list(r)}")
    return [int(v) for v in r]
  if int(r) != r or r < 0:
    raise ValueError(f"reduction.r must be a non-negative int or a list of {depth}, got {r!r}")
  if not -1.0 <= inflection <= 1.0:
    raise ValueError(f"reduction.inflection must be in [-1, 1], got {inflection}")
  low = int(r * (1.0 - inflection))
  step = (2 * r - 2 * low) / max(depth - 1, 1)
  return [int(low + step * i) for i in range(depth)]


def schedule(reduction, depth: int, num_tokens: int, class_token: bool, model: str) -> tuple | None:
  """The per-layer `Step`s of `reduction` for `depth` layers on `num_tokens` tokens; None when nothing is reduced.

  `reduction` is None or a mapping: method 'none' | 'tome' (with r, inflection) | 'diffrate' (with prune_keep,
  merge_keep: per-layer kept tokens, class token included; neither: DiffRate's search, learned rates per layer);
  the other method's fields must be None or 0. One-line ValueErrors name what is wrong."""
  if reduction is None:
    return None
  reduction = dict(reduction)
  method = reduction.pop("method", "none")
  if method not in METHODS:
    raise ValueError(f"reduction.method must be one of {METHODS}, got {method!r}")
  if method == "none":
    return None
  known = {"tome": {"r", "inflection"}, "diffrate": {"prune_keep", "merge_keep"}}[method]
  unknown = {k for k, v in reduction.items() if k not in known and v not in (None, 0)}  # 0: the config default
  if unknown:
    raise ValueError(f"unknown reduction field(s) {sorted(unknown)}; {method} takes {sorted(known)}")
  if method == "tome":
    return tuple(Step("tome", r=r) for r in tome_schedule(depth, reduction.get("r") or 0,
                                                                 reduction.get("inflection") or 0.0))
  if not class_token:
    raise ValueError(f"reduction.method='diffrate' ranks tokens by class-token attention; {model} has no class "
                     "token here (use pool='cls')")
  if reduction.get("prune_keep") is None and reduction.get("merge_keep") is None:
    return tuple(Step("diffrate", search=True, index=i) for i in range(depth))
  keeps = []
  for name in ("prune_keep", "merge_keep"):
    v = list(reduction.get(name) or [num_tokens] * depth)
    if len(v) != depth or any(int(k) != k or not 1 <= k <= num_tokens for k in v):
      raise ValueError(f"reduction.{name} needs {depth} ints in [1, {num_tokens}] (kept tokens per layer, class "
                       f"token included), got {v}")
    keeps.append([int(k) for k in v])
  return tuple(Step("diffrate", prune_keep=p, merge_keep=m) for p, m in zip(*keeps))


def _normalize(metric):
  metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
  return metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)


def _gather(x, idx):
  """x [B, N, C], idx [B, M] -> x[b, idx[b]] [B, M, C]."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def _scatter(dst, idx, src, mode):
  """dst [B, T, C] with rows src [B, M, C] reduced into rows idx [B, M]: "sum", or "mean" over the target row and
  everything sent to it (torch's scatter_reduce with include_self=True)."""
  add = jax.vmap(lambda d, i, s: d.at[i].add(s))
  total = add(dst, idx, src)
  if mode == "sum":
    return total
  count = add(jnp.ones(dst.shape[:2] + (1,), dst.dtype), idx, jnp.ones(src.shape[:2] + (1,), dst.dtype))
  return total / count


def bipartite_soft_matching(metric, r: int, class_token: bool):
  """ToMe's matching on metric [B, N, C]: returns merge(x [B, N, C], mode) -> [B, N − r, C] (unmerged A tokens in
  order, then the B tokens), or None when nothing merges. r is capped at half of the unprotected tokens."""
  t = metric.shape[1]
  r = min(r, (t - int(class_token)) // 2)
  if r <= 0:
    return None
  metric = _normalize(metric)
  scores = jnp.einsum("bic,bjc->bij", metric[:, ::2], metric[:, 1::2])
  if class_token:
    scores = scores.at[:, 0, :].set(-jnp.inf)
  node_max, node_idx = scores.max(-1), scores.argmax(-1)
  edge_idx = jnp.argsort(-node_max, axis=-1)
  unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  if class_token:
    unm_idx = jnp.sort(unm_idx, axis=1)

  def merge(x, mode="sum"):
    src, dst = x[:, ::2], x[:, 1::2]
    return jnp.concatenate([_gather(src, unm_idx), _scatter(dst, dst_idx, _gather(src, src_idx), mode)], axis=1)
  return merge


def merge_wavg(merge, x, size):
  """Size-weighted merge: x [B, N, C], size [B, N, 1] -> (Σ sᵢxᵢ / Σ sᵢ, Σ sᵢ) over every merged group."""
  x = merge(x * size.astype(x.dtype), "sum")
  size = merge(size, "sum")
  return x / size.astype(x.dtype), size


def diffrate_merge(metric, keep: int):
  """DiffRate's merge on metric [B, N, C]: every token after `keep` goes to its most cosine-similar token among
  the first `keep` except the class token. Returns (merge(x [B, N, C], mode) -> [B, keep, C], similarity
  [B, N − keep])."""
  metric = _normalize(metric)
  sim = jnp.einsum("bic,bjc->bij", metric[:, keep:], metric[:, :keep]).at[..., 0].set(-jnp.inf)
  node_max, dst_idx = sim.max(-1), sim.argmax(-1)
  return (lambda x, mode="mean": _scatter(x[:, :keep], dst_idx, x[:, keep:], mode)), node_max


def diffrate_reduce(x, size, cls_attn, step: Step):
  """DiffRate at inference: x [B, N, D], size [B, N, 1], cls_attn [B, N − 1] (the class token's attention to
  the others, mean over heads) -> (x, size) with min(prune_keep, N) tokens, then merge_keep if fewer."""
  order = jnp.argsort(-cls_attn, axis=-1) + 1
  order = jnp.concatenate([jnp.zeros_like(order[:, :1]), order], axis=1)
  keep = min(step.prune_keep, x.shape[1])
  x, size = _gather(x, order)[:, :keep], _gather(size, order)[:, :keep]
  if step.merge_keep < keep:
    merge, node_max = diffrate_merge(x, step.merge_keep)
    size = jnp.concatenate([size[:, :step.merge_keep], size[:, step.merge_keep:] * node_max[..., None]], axis=1)
    x, size = merge(x, "mean"), merge(size, "sum")
  return x, size


def class_attention(q_cls, k, size, scale):
  """The class token's attention to the other tokens, mean over heads: q_cls [B, H, d], k [B, N, H, d], size
  [B, N, 1] -> [B, N − 1], with the proportional-attention logits."""
  logits = jnp.einsum("bhd,bnhd->bhn", q_cls, k, preferred_element_type=jnp.float32) * scale
  logits = logits + jnp.log(size[:, None, :, 0].astype(jnp.float32))
  return jax.nn.softmax(logits, axis=-1)[:, :, 1:].mean(1)


def size_bias(size):
  """Proportional attention's logit bias log s: size [B, N, 1] -> [B, 1, 1, N] (float32)."""
  return jnp.log(size[:, None, None, :, 0].astype(jnp.float32))


def reduce(x, tokens: Tokens, step: Step, keys, q_cls=None, scale=None, class_token=True, cls_attn=None,
           rates=None):
  """One layer's reduction between attention and MLP. x [B, N, D] (after the attention residual), keys
  [B, N, H, d] (ToMe's metric is their mean over heads; with q_cls [B, H, d] and the attention scale they give
  DiffRate's class attention unless `cls_attn` is given; the search passes its masked one and the layer's
  `rate_logits` as `rates`) -> (x, Tokens) with fewer (or, in the search, masked) tokens."""
  if step.method == "tome":
    merge = bipartite_soft_matching(keys.mean(2), step.r, class_token)
    return (x, tokens) if merge is None else (lambda x, s: (x, Tokens(s)))(*merge_wavg(merge, x, tokens.size))
  if step.search:
    return search_reduce(x, tokens, cls_attn, rates[0], rates[1], rates[2], rates[2])
  x, size = diffrate_reduce(x, tokens.size, class_attention(q_cls, keys, tokens.size, scale), step)
  return x, Tokens(size)


def pool(x, size, how: str):
  """Pooled tokens [B, D]: the class token (position 0), or for "gap" the token mean, size-weighted (the mean over
  the original patches) when size [B, N, 1] is given."""
  if how == "cls":
    return x[:, 0]
  if size is None:
    return x.mean(axis=1)
  return (x * size.astype(x.dtype)).sum(1) / size.sum(1).astype(x.dtype)


# DiffRate's differentiable compression rate (its §3.2 "differentiable discrete proxy"), one pair per layer.
def rate_candidates(num_patches: int, granularity: int = 1):
  """The kept-patch candidates num_patches, num_patches − g, …, ≥ 1 [P] (float32) that the rate logits choose
  among."""
  return jnp.arange(num_patches, 0, -granularity, dtype=jnp.float32)


def _ste(hard, soft):
  """hard in the forward pass, the gradient of soft in the backward pass."""
  return soft + jax.lax.stop_gradient(hard - soft)


def kept_number(logits, candidates, class_token: bool = True):
  """The expected kept tokens ⌈Σ_c softmax(logits)_c · c⌉ + class token (a scalar), with the straight-through ceil
  (gradient of the expectation)."""
  expected = candidates @ jax.nn.softmax(logits.astype(jnp.float32))
  return _ste(jnp.ceil(expected), expected) + int(class_token)


def token_mask(logits, candidates, kept, num_tokens: int, last=None, class_token: bool = True):
  """The keep mask [num_tokens] (patches + class token) of one rate: 0 at positions kept ≤ j < last (all j ≥ kept
  without `last`), 1 elsewhere, in the forward pass; the gradient is that of the keep probability
  P(j) = Σ_{c: j < c + class token} softmax(logits)_c."""
  prob = jax.nn.softmax(logits.astype(jnp.float32))
  j = jnp.arange(num_tokens, dtype=jnp.float32)
  keep_prob = ((j[:, None] < candidates[None, :] + int(class_token)) * prob[None, :]).sum(-1)
  drop = (j >= jnp.floor(kept)) & (True if last is None else j < jnp.floor(last))
  return _ste(1.0 - drop.astype(jnp.float32), keep_prob)


def _ste_min(n, prune, merge):
  """min(n, prune, merge) with DiffRate's straight-through gradient: 1 to both kept numbers, none to n."""
  return prune + merge + jax.lax.stop_gradient(jnp.minimum(jnp.minimum(n, prune), merge) - prune - merge)


def flops(kept, num_tokens: int, width: int, extra: float = 0.0):
  """DiffRate's FLOPs objective of a ViT whose layers keep kept = [(prune, merge)] tokens: per layer attention
  4NC² + 2N²C on the incoming N tokens, then the MLP 8NC² on N ← min(N, prune, merge); plus `extra` (patch
  embedding and head). Differentiable in the kept numbers (straight-through min)."""
  n, total = jnp.float32(num_tokens), jnp.float32(extra)
  for prune, merge in kept:
    total = total + 4 * n * width ** 2 + 2 * n ** 2 * width
    n = _ste_min(n, prune, merge)
    total = total + 8 * n * width ** 2
  return total


def policy_attention(q, k, v, bias, policy, scale, eps=1e-6):
  """DiffRate's masked softmax attention of the search (its softmax_with_policy): a token sees the kept tokens
  (policy [B, N] in {0, 1} forward) and itself; weights (e + eps/N) / (Σ e + eps), e = exp(logit − max) ⊙ policy.
  q, k, v [B, N, H, d], bias [B, 1, 1, N] -> (out [B, N, H, d], the class token's weights, mean over heads
  [B, N − 1])."""
  n = q.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale + bias
  visible = policy[:, None, None, :] + (1.0 - policy[:, None, None, :]) * jnp.eye(n, dtype=jnp.float32)
  e = jnp.exp(logits - jnp.max(logits, -1, keepdims=True)) * visible
  weights = (e + eps / n) / (e.sum(-1, keepdims=True) + eps)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
  return out, weights[:, :, 0, 1:].mean(1)


def search_reduce(x, tokens: Tokens, cls_attn, prune_logits, merge_logits, prune_cand, merge_cand):
  """One layer of DiffRate's search (the training branch of its block) at a fixed token count N: tokens are sorted
  by class attention; the prune rate zeroes the mask from its kept number up to the tokens left; the merge rate
  merges the tokens from its kept number up to the pruned count into their most similar token before it (plain
  mean, sizes scaled by the similarity and clamped at 1, then summed) and zeroes their mask. x [B, N, D] ->
  (x, Tokens) with the kept numbers appended."""
  b, n, _ = x.shape
  order = jnp.argsort(-cls_attn, axis=-1) + 1
  order = jnp.concatenate([jnp.zeros_like(order[:, :1]), order], axis=1)
  x, size, mask = _gather(x, order), _gather(tokens.size, order), jnp.take_along_axis(tokens.mask, order, axis=1)
  j = jnp.arange(n, dtype=jnp.float32)
  last = mask[0].sum()
  prune = kept_number(prune_logits, prune_cand)
  mask = jnp.where(prune < last, mask * token_mask(prune_logits, prune_cand, prune, n, last), mask)
  mid = jnp.minimum(last, jnp.floor(prune))
  merge = kept_number(merge_logits, merge_cand)
  k = jax.lax.stop_gradient(jnp.floor(merge))
  is_dst, is_src = j < k, (j >= k) & (j < mid)
  metric = _normalize(x)
  sim = jnp.einsum("bic,bjc->bij", metric, metric)
  sim = jnp.where((is_dst & (j > 0))[None, None, :], sim, -jnp.inf)
  node_max, send = sim.max(-1), jax.nn.one_hot(sim.argmax(-1), n) * is_src[None, :, None]  # [B, N src, N dst]
  x_merged = jnp.where(is_dst[None, :, None], (x + jnp.einsum("bsd,bsc->bdc", send, x)) /
                       (1.0 + send.sum(1)[..., None]), x)
  scaled = jnp.where(is_src[None, :, None], size * node_max[..., None], size)
  scaled = jnp.where((j < mid)[None, :, None], jnp.maximum(scaled, 1.0), size)
  size_merged = jnp.where(is_dst[None, :, None], scaled + jnp.einsum("bsd,bsc->bdc", send, scaled), scaled)
  do = merge < mid
  return (jnp.where(do, x_merged, x),
          Tokens(jnp.where(do, size_merged, size),
                 jnp.where(do, mask * token_mask(merge_logits, merge_cand, merge, n, mid), mask),
                 tokens.kept + ((prune, merge),)))


def rate_logits(module, layer_index: int, num_patches: int):
  """The two rate parameters of a searching layer ("prune_rate", "merge_rate", zeros [P]) and their candidates;
  DiffRate leaves its first layer uncompressed (one candidate: every patch)."""
  cand = rate_candidates(num_patches, num_patches + 1 if layer_index == 0 else 1)
  return (module.param("prune_rate", nn.initializers.zeros, cand.shape, jnp.float32),
          module.param("merge_rate", nn.initializers.zeros, cand.shape, jnp.float32), cand)


def learned_keeps(params, num_patches: int) -> tuple[list[int], list[int]]:
  """DiffRate's searched kept numbers (class token included) from a model's params: (prune_keep, merge_keep), one
  per layer that has rates, in layer order; the values to put in config.model.reduction for inference."""
  prune, merge = [], []
  layers = sorted((k for k, v in params.items() if hasattr(v, "keys") and "prune_rate" in v),
                  key=lambda k: int(k.lstrip("blocklayer")))
  for i, name in enumerate(layers):
    cand = rate_candidates(num_patches, num_patches + 1 if i == 0 else 1)
    prune.append(int(kept_number(jnp.asarray(params[name]["prune_rate"]), cand)))
    merge.append(int(kept_number(jnp.asarray(params[name]["merge_rate"]), cand)))
  return prune, merge


def start(steps, x) -> Tokens | None:
  """The Tokens the first reducing layer gets for tokens x [B, N, D] (None when `steps` is None): sizes 1, and in
  the search a mask of ones."""
  if steps is None:
    return None
  ones = jnp.ones(x.shape[:2], jnp.float32)
  return Tokens(ones[..., None], ones if steps[0].search else None)


def finish(module, tokens: Tokens | None, num_tokens: int, width: int):
  """After the last layer: in DiffRate's search, sows its FLOPs objective of the layers (`flops`, the ViT count
  4NC² + 2N²C + 8NC² per layer, a proxy for the CRATE layers) as intermediates "diffrate_flops"; returns the sizes
  for `pool` (None without reduction)."""
  if tokens is None:
    return None
  if tokens.kept:
    module.sow("intermediates", "diffrate_flops", flops(tokens.kept, num_tokens, width))
  return tokens.size
