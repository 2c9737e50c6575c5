"""Building blocks of FIT (Chen & Li, "FIT: Far-reaching Interleaved Transformers", 2023).

Everything here mirrors the layers of the official pix2seq implementation (Keras) so that official
weights load by renaming only:

* `Attention`: Keras-style multi-head attention with separate query/key/value projections
  ([in, heads, key_dim] kernels with biases), logits scaled by key_dim^-1/2, and an output projection
  [heads, key_dim, out] back to the query width: softmax(q kᵀ/√d_k) v.
* `FeedForward`: the residual pre-LN MLP x + W2 GELU(W1 LN(x)) (exact GELU).
* `TransformerLayer`: a pre-LN transformer layer x + MHA(LN(x)), then the MLP; used for both local
  layers (tokens within a group) and global layers (all latents).
* `CrossAttentionLayer`: x + MHA(LN(x), LN_enc(enc)) (+ MLP), used for READ (latents attend to their
  group's tokens) and WRITE (tokens attend to their group's latents).

All LayerNorms use eps 1e-6 as in the official code. Attention goes through
`effjax.kernels.attention.attention`.
"""
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.kernels import attention_patterns as ap
from effjax.kernels.attention import attention
from effjax.layers.common import LN_EPS, DropPath
from effjax.layers.remat import remat

dense_init = nn.initializers.xavier_uniform()
pos_emb_init = nn.initializers.truncated_normal(0.02)

def parse_layers(spec: str) -> list[tuple[int, int]]:
  """Parses a FIT layer specification into (local layers, global layers) per block.

  `"(2)4(2)"` means: 2 local layers, 4 global layers, then 2 local layers. A trailing `(n)` gets 0
  global layers. Every block but the last must have at least one global layer, otherwise the
  following WRITE would have no fresh latents to read from.

  >>> parse_layers("(2)4(2)")
  [(2, 4), (2, 0)]
  """
  if not isinstance(spec, str):
    raise ValueError(f"FIT layer spec must be a string like '(2)4(2)', got {spec!r}")
  text = spec.replace(" ", "")
  if text.endswith(")"):
    text += "0"
  if not re.fullmatch(r"(\(\d+\)\d+)+", text):
    raise ValueError(f"malformed FIT layer spec {spec!r}; expected blocks '(local)global', e.g. '(2)4(2)'")
  blocks = [(int(a), int(b)) for a, b in re.findall(r"\((\d+)\)(\d+)", text)]
  for i, (_, num_global) in enumerate(blocks[:-1]):
    if num_global == 0:
      raise ValueError(f"FIT layer spec {spec!r}: block {i} has no global layers but is not the last block")
  if sum(a + b for a, b in blocks) == 0:
    raise ValueError(f"FIT layer spec {spec!r} has no layers")
  return blocks


def _largest_divisor(n: int, limit: int) -> int:
  return max(d for d in range(1, max(min(n, limit), 1) + 1) if n % d == 0)


def chunked_attention(q, k, v, *, pattern=None, scale=None, impl="auto", max_logits=0):
  """`attention` computed in sequential chunks so that at most ~max_logits logits exist at once.

  q [B, Lq, H, D], k/v [B, Lk, H, D]; `pattern` an `attention_patterns.Pattern` (None = full). Chunks
  run under `lax.map` and are rematerialised in the backward pass, so the B·H·Lq·Lk logits (and the
  softmax temporaries of their gradient) are never all alive together. Sequences (B) are split first,
  then queries (each query chunk gets its rows of the pattern's mask, so only the XLA path can chunk
  queries). Exact: every query row still sees all its keys. max_logits = 0 disables chunking, and so
  does a Pallas `impl`, whose kernels never materialise the logits.
  """
  b, lq, h, _ = q.shape
  lk = k.shape[1]
  if max_logits <= 0 or b * h * lq * lk <= max_logits or impl.startswith("pallas"):
    return attention(q, k, v, pattern=pattern, scale=scale, impl=impl)
  per_seq = h * lq * lk
  if per_seq <= max_logits or b > 1:
    cb = _largest_divisor(b, max(max_logits // per_seq, 1))
    split = lambda t: t.reshape((b // cb, cb) + t.shape[1:])
    body = jax.checkpoint(lambda qkv: chunked_attention(*qkv, pattern=pattern, scale=scale, impl=impl,
                                                        max_logits=max_logits))
    return jax.lax.map(body, (split(q), split(k), split(v))).reshape(q.shape[:3] + v.shape[3:])
  cq = _largest_divisor(lq, max(max_logits // (h * lk), 1))
  qs = q.reshape(b, lq // cq, cq, *q.shape[2:]).swapaxes(0, 1)
  pattern = ap.as_pattern(pattern)
  ms = None if pattern.kind == "full" else jnp.asarray(pattern.mask(lq, lk)).reshape(lq // cq, cq, lk)

  def body(args):
    qc, mc = args
    return attention(qc, k, v, mask=mc, scale=scale, impl=impl)
  out = jax.lax.map(jax.checkpoint(body), (qs, ms))
  return out.swapaxes(0, 1).reshape(q.shape[:3] + v.shape[3:])


class Attention(nn.Module):
  """Multi-head attention: q [B, Lq, Dq], kv [B, Lk, Dk] -> [B, Lq, Dq].

  Heads `num_heads` of width `key_dim`; `pattern` (an `attention_patterns.Pattern`, None = full) says
  which keys each query sees. `max_logits` > 0 bounds the attention temporaries by computing in chunks
  (see chunked_attention).
  """
  num_heads: int
  key_dim: int
  pattern: ap.Pattern | None = None
  impl: str = "auto"
  max_logits: int = 0

  @nn.compact
  def __call__(self, q_in, kv_in):
    proj = lambda name: nn.DenseGeneral((self.num_heads, self.key_dim), kernel_init=dense_init, name=name)
    q, k, v = proj("query")(q_in), proj("key")(kv_in), proj("value")(kv_in)
    y = chunked_attention(q, k, v, pattern=self.pattern, scale=self.key_dim ** -0.5, impl=self.impl,
                          max_logits=self.max_logits)
    return nn.DenseGeneral(q_in.shape[-1], axis=(-2, -1), kernel_init=dense_init, name="attention_output")(y)


class FeedForward(nn.Module):
  """Residual pre-LN MLP: x + W2 · GELU(W1 · LN(x)); hidden width mlp_ratio·D."""
  mlp_ratio: int
  drop_units: float = 0.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    width = x.shape[-1]
    y = nn.LayerNorm(LN_EPS, name="ln")(x)
    y = nn.gelu(nn.Dense(width * self.mlp_ratio, kernel_init=dense_init, name="dense1")(y), approximate=False)
    y = nn.Dropout(self.drop_units, deterministic=not train)(y)
    y = nn.Dense(width, kernel_init=dense_init, name="dense2")(y)
    return x + DropPath(self.drop_path_rate)(y, train)


class TransformerLayer(nn.Module):
  """Pre-LN transformer layer on x [B, L, D]: x + MHA(LN(x)) then x + MLP(LN(x)).

  `pattern` restricts attention (None = full); with `self_attention=False` only the MLP runs (the
  official `x_self_attention=False` option of the denoiser).
  """
  num_heads: int
  mlp_ratio: int
  drop_units: float = 0.0
  drop_path_rate: float = 0.0
  self_attention: bool = True
  pattern: ap.Pattern | None = None
  impl: str = "auto"
  max_logits: int = 0

  @nn.compact
  def __call__(self, x, train=False):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    if self.self_attention:
      y = nn.LayerNorm(LN_EPS, name="mha_ln")(x)
      y = Attention(self.num_heads, width // self.num_heads, self.pattern, self.impl, self.max_logits,
                    name="mha")(y, y)
      x = x + DropPath(self.drop_path_rate)(y, train)
    return FeedForward(self.mlp_ratio, self.drop_units, self.drop_path_rate, name="mlp")(x, train)


class CrossAttentionLayer(nn.Module):
  """x [B, Lq, Dq] attends to all of enc [B, Lk, Dk]: x + MHA(LN(x), LN_enc(enc)), then an optional MLP.

  The official rule: heads = min(heads_x, heads_latent), key_dim = min(D_x, D_latent) // heads; the
  caller passes those numbers.
  """
  num_heads: int
  key_dim: int
  mlp_ratio: int = 0
  enc_ln: bool = True
  impl: str = "auto"
  max_logits: int = 0

  @nn.compact
  def __call__(self, x, enc, train=False):
    q = nn.LayerNorm(LN_EPS, name="ln")(x)
    kv = nn.LayerNorm(LN_EPS, name="enc_ln")(enc) if self.enc_ln else enc
    x = x + Attention(self.num_heads, self.key_dim, None, self.impl, self.max_logits, name="mha")(q, kv)
    if self.mlp_ratio:
      x = FeedForward(self.mlp_ratio, name="mlp")(x, train)
    return x


def run_in_chunks(layer, chunk: int, inputs, *args, initializing: bool = False):
  """`layer(*inputs, *args)` with `inputs` split along dim 0 into chunks of `chunk` rows, run one after
  another under `lax.map` with rematerialisation: exact for layers that treat rows (groups)
  independently, and at most one chunk's temporaries are alive at a time. chunk <= 0: no chunking.

  Called from a parent's compact method with an attached (named) `layer`; in init mode the params are
  created on the first chunk. Dropout inside chunked layers is not supported.
  """
  n = inputs[0].shape[0]
  if chunk <= 0 or chunk >= n:
    return layer(*inputs, *args)
  if n % chunk:
    raise ValueError(f"{n} groups are not divisible into chunks of {chunk}")
  if initializing:
    layer(*(a[:chunk] for a in inputs), *args)
  params = layer.variables["params"]
  unbound = layer.clone(parent=None)
  body = jax.checkpoint(lambda chunk_inputs: unbound.apply({"params": params}, *chunk_inputs, *args))
  out = jax.lax.map(body, tuple(a.reshape((n // chunk, chunk) + a.shape[1:]) for a in inputs))
  return out.reshape((n,) + out.shape[2:])


class LayerStack(nn.Module):
  """`num_layers` TransformerLayers named layer0, layer1, ...: [B, L, D] -> [B, L, D]."""
  num_layers: int
  num_heads: int
  mlp_ratio: int
  drop_units: float = 0.0
  drop_path_rate: float = 0.0
  self_attention: bool = True
  pattern: ap.Pattern | None = None
  remat: str = "none"
  impl: str = "auto"
  max_logits: int = 0
  chunk: int = 0

  @nn.compact
  def __call__(self, x, train=False):
    """x [B, L, D]; with chunk > 0 the B sequences (groups) are processed `chunk` at a time."""
    if self.chunk > 0 and train and (self.drop_units > 0 or self.drop_path_rate > 0):
      raise ValueError("dropout / drop-path are not supported together with group chunking")
    layer = remat(TransformerLayer, self.remat)
    for i in range(self.num_layers):
      module = layer(self.num_heads, self.mlp_ratio, self.drop_units, self.drop_path_rate, self.self_attention,
                     self.pattern, self.impl, self.max_logits, name=f"layer{i}")
      x = run_in_chunks(module, self.chunk, (x,), train, initializing=self.is_initializing())
    return x


def cross_heads(num_heads: int, latent_num_heads: int, width: int, latent_width: int) -> tuple[int, int]:
  """The official READ/WRITE attention shape: (min heads, min width // min heads)."""
  heads = min(num_heads, latent_num_heads)
  return heads, min(width, latent_width) // heads


def shift_groups(z, batch: int):
  """Latents [B·T, M, D] -> those of the previous group: group t gets group t−1, group 0 gets zeros."""
  z = z.reshape(batch, -1, *z.shape[1:])
  return jnp.concatenate([jnp.zeros_like(z[:, :1]), z[:, :-1]], axis=1).reshape(-1, *z.shape[2:])


class Interleaved(nn.Module):
  """The FIT block loop shared by the encoder (`fit.FIT`), the AR decoder (`fit_ar.Model`) and the denoiser
  (`fit_denoiser.FITDenoiser`), which subclass it: their parameters live directly in the model's scope
  (x_network{i}, l2x_cross_attn{i}, l2c_cross_attn{i}, l_network{i}, x2l_cross_attn{i}).

  Per block i of the layer spec, on tokens x [B, T, N, D_x] and latents z [B, T, M, D_l]:

      x <- local_i(x)                  pre-LN layers within each group ([B·T, N, D_x])
      z <- READ_i(z, x)                latents attend to their group's tokens (+ MLP with xattn_with_mlp)
      z <- z + MHA(LN(z), LN(ctx))     only with a context [B, S, D_l]: latents attend to it
      z <- global_i(z)                 pre-LN layers over all T·M latents ([B, T·M, D_l])
      x <- WRITE_i(x, z)               tokens attend to their group's latents (not after the last block)

  Visibility is expressed as attention patterns, never dense masks, so the Pallas kernels serve every
  layer: per-group attention runs on [B·T, ·, ·] with the full pattern; `causal_latents` makes the global
  layers chunk-causal (a latent sees the latents of its own and earlier groups); `autoregressive` also
  makes the local layers causal and lets WRITE of group t read the latents of group t−1 (zeros for t = 0).
  Cross-attention uses min(heads) heads of width min(D_x, D_l)/heads (`cross_heads`). `remat` ("none",
  "full", "dots") rematerialises every layer; `max_attention_logits` > 0 computes attention in exact
  sequential chunks of at most that many logits (bounds memory on backends that do not fuse attention,
  e.g. XLA:CPU); `chunk_groups` > 0 runs every per-group layer (local layers, READ, WRITE) on that many
  groups at a time, sequentially and rematerialised: exact, and it bounds one layer's activations.

  Latent feature cache (DeepCache for FIT, used by the diffusion sampler): a call with the collection
  "latent_cache" mutable records, per block i with global layers, the latents z_i after global_i (the ones its
  WRITE reads) as latent_cache/block{i} [B·T, M, D_l]. A call given `latent_cache` (that dict) skips the whole
  latent path — READ, the context attention and the global layers — and uses the recorded z_i instead: only the
  local layers and the WRITEs run, on the new tokens. Given the tokens that produced the cache, the result equals
  the full call's.
  """
  layers: str = "(2)2(2)"
  latents_per_group: int = 4
  width: int = 128
  latent_width: int = 128
  num_heads: int = 4
  latent_num_heads: int = 4
  mlp_ratio: int = 4
  drop_path_rate: float = 0.0
  drop_units: float = 0.0
  x_self_attention: bool = True
  xattn_with_mlp: bool = False
  xattn_enc_ln: bool = True
  remat: str = "none"
  impl: str = "auto"
  max_attention_logits: int = 0
  chunk_groups: int = 0

  def loop_options(self) -> dict:
    """The fields of `Interleaved` with this module's values, to build an inner FIT module from them."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(Interleaved) if f.name not in ("parent", "name")}

  def interleave(self, x, z, context=None, *, causal_latents=False, autoregressive=False, train=False,
                 latent_cache=None):
    """(x [B, T, N, D_x], z [B, T, M, D_l]) -> the same shapes after all blocks (no output norms).

    latent_cache: None, or {"block{i}": z_i} recorded by an earlier call (see the class docstring).
    """
    blocks = parse_layers(self.layers)
    b, t, n, dx = x.shape
    m, dl = z.shape[2], z.shape[3]
    heads, key_dim = cross_heads(self.num_heads, self.latent_num_heads, self.width, self.latent_width)
    common = dict(impl=self.impl, max_logits=self.max_attention_logits)
    cross_layer = remat(CrossAttentionLayer, self.remat)
    xattn_mlp = self.mlp_ratio if self.xattn_with_mlp else 0
    per_group = lambda layer, *inputs: run_in_chunks(layer, self.chunk_groups, inputs, train,
                                                     initializing=self.is_initializing())
    causal = ap.causal() if autoregressive else None
    latent_pattern = ap.chunk_causal(m) if causal_latents or autoregressive else None
    x, z = x.reshape(b * t, n, dx), z.reshape(b * t, m, dl)
    for i, (num_local, num_global) in enumerate(blocks):
      x = LayerStack(num_local, self.num_heads, self.mlp_ratio, self.drop_units, self.drop_path_rate,
                     self.x_self_attention, causal, self.remat, **common, chunk=self.chunk_groups,
                     name=f"x_network{i}")(x, train)
      self.sow("intermediates", f"out_x_network{i}", x)
      if num_global == 0:
        continue
      if latent_cache is not None:
        z = latent_cache[f"block{i}"]
      else:
        z = per_group(cross_layer(heads, key_dim, xattn_mlp, self.xattn_enc_ln, **common,
                                  name=f"l2x_cross_attn{i}"), z, x)
        self.sow("intermediates", f"out_l2x_cross_attn{i}", z)
        z = z.reshape(b, t * m, dl)
        if context is not None:
          z = cross_layer(self.latent_num_heads, dl // self.latent_num_heads, 0, self.xattn_enc_ln, **common,
                          name=f"l2c_cross_attn{i}")(z, context, train)
          self.sow("intermediates", f"out_l2c_cross_attn{i}", z)
        z = LayerStack(num_global, self.latent_num_heads, self.mlp_ratio, self.drop_units, self.drop_path_rate,
                       pattern=latent_pattern, remat=self.remat, **common, name=f"l_network{i}")(z, train)
        self.sow("intermediates", f"out_l_network{i}", z)
        z = z.reshape(b * t, m, dl)
        if not self.is_initializing():  # init makes every collection mutable; the cache is never model state
          self.sow("latent_cache", f"block{i}", z, init_fn=lambda: None, reduce_fn=lambda _, new: new)
      if i < len(blocks) - 1:
        x = per_group(cross_layer(heads, key_dim, xattn_mlp, self.xattn_enc_ln, **common,
                                  name=f"x2l_cross_attn{i}"), x, shift_groups(z, b) if autoregressive else z)
        self.sow("intermediates", f"out_x2l_cross_attn{i}", x)
    return x.reshape(b, t, n, dx), z.reshape(b, t, m, dl)


_KERAS_RENAMES = (
    ("/kernel/vis_pos_embedding", ""),
    ("/gamma", "/scale"),
    ("/beta", "/bias"),
    ("cross_mha/ln/", "ln/"),
    ("cross_mha/enc_ln/", "enc_ln/"),
    ("cross_mha/", "mha/"),
    ("mha/ln/", "mha_ln/"),
    ("/ffn/", "/"),
)


def keras_to_flax_path(name: str) -> tuple[str, ...]:
  """Maps an official Keras variable name (without the model prefix) to a Flax param path.

  e.g. "x_network_1/transformer_encoder/mha/ln/gamma:0" -> ("x_network1", "layer0", "mha_ln", "scale").
  """
  name = name.removesuffix(":0")
  for old, new in _KERAS_RENAMES:
    name = name.replace(old, new)
  name = re.sub(r"(x_network|l_network|l2x_cross_attn|x2l_cross_attn|l2c_cross_attn)(?:_(\d+))?(?=/)",
                lambda m: f"{m.group(1)}{m.group(2) or 0}", name)
  name = re.sub(r"transformer_encoder(?:_(\d+))?(?=/)", lambda m: f"layer{m.group(1) or 0}", name)
  return tuple(name.split("/"))


def convert_keras(state_dict) -> dict:
  """Official Keras weights {name: array} -> nested Flax params, dropping the model-name prefix (the Keras
  layer name, e.g. "fit": the first path component, which every name must share)."""
  import numpy as np
  names = list(state_dict)
  if not names:
    raise ValueError("empty state_dict")
  prefix = names[0].split("/")[0]
  params: dict = {}
  for name in names:
    if not name.startswith(prefix + "/"):
      raise ValueError(f"weight {name!r} does not start with the model name {prefix!r}")
    node = params
    *parents, leaf = keras_to_flax_path(name[len(prefix) + 1:])
    for p in parents:
      node = node.setdefault(p, {})
    if leaf in node:
      raise ValueError(f"two official weights map to the same Flax path: {name!r}")
    node[leaf] = jnp.asarray(np.asarray(state_dict[name], np.float32))
  return params
