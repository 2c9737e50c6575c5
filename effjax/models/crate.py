"""CRATE: white-box transformer classifier (Yu et al., "White-Box Transformers via Sparse Rate Reduction").

Every layer is one step of optimising the sparse rate reduction objective of the tokens Z [B, N, d]:

  Z½     = Z + MSSA(LN₁(Z))                                          (compression)
  MSSA(Z) = [U₁ … U_K] · concat_k( softmax(Wₖ Wₖᵀ / √p) Wₖ ) + b,    Wₖ = Z Uₖ  (one projection = q = k = v)
  Z_next = ReLU(x + η (x D − x Dᵀ D) − η λ),   x = LN₂(Z½)           (sparsification, one ISTA step)

with K heads of dimension p, a square dictionary D [d, d], η = 0.1, λ = 0.1 and no residual around the
ISTA step. The ISTA step is computed as one matmul, ReLU(x · (I + η (D − Dᵀ D)) − η λ): the d×d matrix
is formed once per call, which replaces three [B·N, d]×[d, d] matmuls by one.

Stem: patches (p1 p2 c order) -> LN -> Linear -> LN, a learned position embedding over [cls, patches],
then the layers, then LN -> Linear on the class token (or on the token mean with pool="gap").

Intermediates are sown into the "intermediates" collection (free unless that collection is mutable):
patch_embedding, transformer_input, layer{i}/{qkv, attn_out, after_attn_residual, after_ista},
transformer_output, pooled. `effjax/evaluators/coding_rate.py` reads layer{i}/qkv and after_ista.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.kernels.subspace_attention import subspace_attention
from effjax.layers import remat as remat_lib
from effjax.layers.common import TORCH_LN_EPS, torch_default_init, with_variants
from effjax.layers.dense import Dense, weight_gradient
from effjax.layers.patches import patchify

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

VARIANTS = {  # head dim = width / heads, as the official CRATE_tiny/small/base/large; shared with crate_mae
    "T": dict(width=384, depth=12, num_heads=6),
    "S": dict(width=576, depth=12, num_heads=12),
    "B": dict(width=768, depth=12, num_heads=12),
    "L": dict(width=1024, depth=24, num_heads=16),
}


def check_posemb_length(module, num_tokens):
  """One-line error when the learned position embedding was made for another token grid (another resolution
  or patch size): the official CRATE slices it silently; resample it with effjax.weights.posemb.resample
  (init_from does so)."""
  if module.has_variable("params", "pos_embedding"):
    have = module.get_variable("params", "pos_embedding").shape[1]
    if have != num_tokens:
      raise ValueError(f"pos_embedding has {have} tokens but this input gives {num_tokens}: resample it "
                       f"(effjax.weights.posemb.resample; config.init_from does) for the new resolution")


class MSSA(nn.Module):
  """Multi-head subspace self-attention: x [B, N, d] -> (out [B, N, d], W = x U [B, N, K·p]).

  One bias-free projection U [d, K·p] serves as query, key and value of every head;
  out = concat_k(softmax(Wₖ Wₖᵀ p^-½) Wₖ) · U_out (+ b_out when out_bias); without U_out when not project_out.
  """
  num_heads: int
  head_dim: int
  out_bias: bool = True
  dropout: float = 0.0
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = torch_default_init
  project_out: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    b, n, d = x.shape
    inner = self.num_heads * self.head_dim
    w = Dense(inner, use_bias=False, kernel_init=self.kernel_init, name="qkv")(x)
    heads = w.reshape(b, n, self.num_heads, self.head_dim)
    y = subspace_attention(heads, scale=self.head_dim ** -0.5, impl=self.impl).reshape(b, n, inner)
    if not self.project_out:  # the official CRATE with one head of width d: to_out is the identity
      return y, w
    y = Dense(d, use_bias=self.out_bias, kernel_init=self.kernel_init, name="out")(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y), w


@jax.custom_vjp
def relu_affine(x, m, threshold):
  """ReLU(x · m − threshold): x [..., d], m [d, d], threshold a scalar (not differentiated)."""
  return nn.relu(x @ m - threshold)


def _relu_affine_fwd(x, m, threshold):
  y = relu_affine(x, m, threshold)
  return y, (x, m, y)


def _relu_affine_bwd(res, dy):
  """g = dy ⊙ [y > 0]; dx = g mᵀ, dm = xᵀ g (`layers.dense.weight_gradient`). The barrier keeps the ReLU mask
  out of the transposed copy of g that XLA:CPU made for dm: fused into it, that copy ran ≈ 10× slower than a
  plain transpose (≈ 12% of a CRATE-T training step; experiments/crate/README.md, levers)."""
  x, m, y = res
  g = jax.lax.optimization_barrier(jnp.where(y > 0, dy, jnp.zeros_like(dy)))
  return g @ m.T, weight_gradient(x, g).astype(m.dtype), None


relu_affine.defvjp(_relu_affine_fwd, _relu_affine_bwd)


class ISTA(nn.Module):
  """One ISTA step on the LASSO objective with a square dictionary D [d, d]: [..., d] -> [..., d].

  ReLU(x + η (x D − x Dᵀ D) − η λ), evaluated as ReLU(x · M − η λ) with M = I + η (D − Dᵀ D) formed in
  float32 once per call (exact in real arithmetic).
  """
  eta: float = 0.1
  lmbda: float = 0.1

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dictionary = self.param("D", nn.initializers.kaiming_uniform(), (d, d), jnp.float32)
    dictionary = dictionary.astype(jnp.float32)
    m = jnp.eye(d, dtype=jnp.float32) + self.eta * (dictionary - dictionary.T @ dictionary)
    return relu_affine(x, m.astype(x.dtype), jnp.asarray(self.eta * self.lmbda, x.dtype))


class Layer(nn.Module):
  """One CRATE layer: Z -> ISTA(LN₂(Z + MSSA(LN₁(Z)))); [B, N, d] -> [B, N, d]."""
  num_heads: int
  head_dim: int
  eta: float = 0.1
  lmbda: float = 0.1
  dropout: float = 0.0
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = torch_default_init

  @nn.compact
  def __call__(self, x, train=False):
    project_out = not (self.num_heads == 1 and self.head_dim == x.shape[-1])  # the official rule
    attn_out, w = MSSA(self.num_heads, self.head_dim, dropout=self.dropout, impl=self.impl,
                       kernel_init=self.kernel_init, project_out=project_out,
                       name="mssa")(nn.LayerNorm(TORCH_LN_EPS, name="norm1")(x), train)
    self.sow("intermediates", "qkv", w)
    self.sow("intermediates", "attn_out", attn_out)
    x = attn_out + x
    self.sow("intermediates", "after_attn_residual", x)
    x = ISTA(self.eta, self.lmbda, name="ista")(nn.LayerNorm(TORCH_LN_EPS, name="norm2")(x))
    self.sow("intermediates", "after_ista", x)
    return x


class CRATE(nn.Module):
  """CRATE classifier: images [B, H, W, C] -> logits [B, num_classes]; build it with `Model(variant=...)`.

  `head_dim` defaults to width / num_heads (as in the official variants); one head with head_dim == width
  has no attention output projection (as the official code). `patch_size` is p or (ph, pw). `pool` is "cls" (the class
  token) or "gap" (the token mean). `dropout` acts on the attention
  output projection, `emb_dropout` on the embedded tokens. `remat` is "none", "full" or "dots".
  """
  num_classes: int
  patch_size: int | tuple[int, int] = 16
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  head_dim: int | None = None
  pool: str = "cls"
  eta: float = 0.1
  lmbda: float = 0.1
  dropout: float = 0.0
  emb_dropout: float = 0.0
  remat: str = "none"
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    remat_lib.check(self.remat)
    head_dim = self.head_dim or self.width // self.num_heads
    x = patchify(images, self.patch_size)
    x = nn.LayerNorm(TORCH_LN_EPS, name="patch_norm")(x)
    x = nn.Dense(self.width, kernel_init=torch_default_init, name="patch_proj")(x)
    x = nn.LayerNorm(TORCH_LN_EPS, name="embed_norm")(x)
    self.sow("intermediates", "patch_embedding", x)
    b, n, _ = x.shape
    cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, self.width), jnp.float32)
    check_posemb_length(self, n + 1)
    pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, n + 1, self.width), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), x], axis=1)
    x = x + pos.astype(x.dtype)
    self.sow("intermediates", "transformer_input", x)
    x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
    layer = remat_lib.remat(Layer, self.remat)
    for i in range(self.depth):
      x = layer(self.num_heads, head_dim, self.eta, self.lmbda, self.dropout, self.impl,
                name=f"layer{i}")(x, train)
    self.sow("intermediates", "transformer_output", x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    self.sow("intermediates", "pooled", x)
    x = nn.LayerNorm(TORCH_LN_EPS, name="head_norm")(x)
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)


Model = with_variants(CRATE, VARIANTS, "CRATE")


class OfficialStateDict(dict):
  """An official state dict (names -> numpy arrays; torch tensors accepted, a "module." prefix stripped) that
  records which keys were read, so that a conversion can report the keys it did not use."""

  def __init__(self, state_dict):
    super().__init__({(k[len("module."):] if k.startswith("module.") else k): np.asarray(v)
                      for k, v in state_dict.items()})
    self.used = set()

  def __getitem__(self, key):
    if key not in self:
      raise ValueError(f"official state dict is missing {key!r}")
    self.used.add(key)
    return super().__getitem__(key)

  def layer_norm(self, prefix):
    return {"scale": self[f"{prefix}.weight"], "bias": self[f"{prefix}.bias"]}

  def linear(self, prefix, bias=True):
    """nn.Linear weight [out, in] -> Dense kernel [in, out] (+ bias)."""
    out = {"kernel": self[f"{prefix}.weight"].T}
    if bias:
      out["bias"] = self[f"{prefix}.bias"]
    return out

  def check_all_used(self, ignored=()):
    """Raises ValueError naming keys that were not read (and do not fully match a regex in `ignored`)."""
    left = sorted(k for k in self if k not in self.used and not any(re.fullmatch(p, k) for p in ignored))
    if left:
      raise ValueError(f"official state dict has {len(left)} unexpected key(s): {', '.join(left[:5])}")


def convert_layer(sd: OfficialStateDict, prefix: str) -> dict:
  """Params of one `Layer` from an official PreNorm(Attention), PreNorm(FeedForward) pair at `prefix`."""
  return {
      "norm1": sd.layer_norm(f"{prefix}.0.norm"),
      "mssa": {"qkv": sd.linear(f"{prefix}.0.fn.qkv", bias=False),
               **({"out": sd.linear(f"{prefix}.0.fn.to_out.0")} if f"{prefix}.0.fn.to_out.0.weight" in sd else {})},
      "norm2": sd.layer_norm(f"{prefix}.1.norm"),
      "ista": {"D": sd[f"{prefix}.1.fn.weight"]},
  }


def convert_official(state_dict) -> dict:
  """Official `model/crate.py` CRATE state dict (names -> arrays; torch tensors accepted) -> params.

  Linear weights [out, in] are transposed to kernels [in, out]; the ISTA dictionary is used as is.
  A "module." prefix (DataParallel checkpoints) is stripped. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  depth = len({m.group(1) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
  params = {
      "patch_norm": sd.layer_norm("to_patch_embedding.1"),
      "patch_proj": sd.linear("to_patch_embedding.2"),
      "embed_norm": sd.layer_norm("to_patch_embedding.3"),
      "cls": sd["cls_token"],
      "pos_embedding": sd["pos_embedding"],
      "head_norm": sd.layer_norm("mlp_head.0"),
      "head": sd.linear("mlp_head.1"),
  }
  for i in range(depth):
    params[f"layer{i}"] = convert_layer(sd, f"transformer.layers.{i}")
  sd.check_all_used()
  return jax.tree.map(jnp.asarray, params)

