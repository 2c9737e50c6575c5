"""The CRATE layer (Yu et al., "White-Box Transformers via Sparse Rate Reduction") and its parts, shared by the
CRATE, CRATE-α and CRATE-MAE models. Tokens Z [B, N, d]:

  Z½      = Z + MSSA(LN₁(Z))                                          (compression)
  MSSA(Z) = [U₁ … U_K] · concat_k( softmax(Wₖ Wₖᵀ / √p) Wₖ ) + b,    Wₖ = Z Uₖ  (one projection = q = k = v)
  Z_next  = ReLU(x + η (x D − x Dᵀ D) − η λ),   x = LN₂(Z½)           (sparsification, one ISTA step)

with K heads of dimension p and a square dictionary D [d, d]. The ISTA step is computed as one matmul,
ReLU(x · (I + η (D − Dᵀ D)) − η λ): the d×d matrix is formed once per call, which replaces three [B·N, d]×[d, d]
matmuls by one. `SIZES` are the official CRATE_tiny/small/base/large; `convert_layer` maps one official layer.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.kernels.attention import attention
from effjax.kernels.subspace_attention import subspace_attention
from effjax.layers import token_reduction
from effjax.layers.common import TORCH_LN_EPS, torch_default_init
from effjax.layers.dense import Dense, weight_gradient

SIZES = {  # head dim = width / heads, as the official CRATE_tiny/small/base/large
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
  out = concat_k(softmax(Wₖ Wₖᵀ p^-½ + bias) Wₖ) · U_out (+ b_out when out_bias); without U_out when not
  project_out. A logit `bias` (proportional attention of token reduction) goes through the general attention op;
  with a keep `policy` [B, N] (DiffRate's search) the attention is `token_reduction.policy_attention` and the
  result (out, W, its class-token attention [B, N − 1]).
  """
  num_heads: int
  head_dim: int
  out_bias: bool = True
  dropout: float = 0.0
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = torch_default_init
  project_out: bool = True

  @nn.compact
  def __call__(self, x, train=False, bias=None, policy=None):
    b, n, d = x.shape
    inner = self.num_heads * self.head_dim
    w = Dense(inner, use_bias=False, kernel_init=self.kernel_init, name="qkv")(x)
    heads = w.reshape(b, n, self.num_heads, self.head_dim)
    cls_attn = None
    if policy is not None:
      y, cls_attn = token_reduction.policy_attention(heads, heads, heads, bias, policy, self.head_dim ** -0.5)
    elif bias is None:
      y = subspace_attention(heads, scale=self.head_dim ** -0.5, impl=self.impl)
    else:
      y = attention(heads, heads, heads, bias=bias, scale=self.head_dim ** -0.5, impl=self.impl)
    y = y.reshape(b, n, inner)
    if self.project_out:  # without: the official CRATE with one head of width d, to_out is the identity
      y = nn.Dropout(self.dropout, deterministic=not train)(
          Dense(d, use_bias=self.out_bias, kernel_init=self.kernel_init, name="out")(y))
    return (y, w) if policy is None else (y, w, cls_attn)


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


def mssa_tokens(mssa, x, train, tokens):
  """MSSA `mssa` on x [B, N, d] with token reduction's `tokens` (None: plain): (out, W, class attention or None)."""
  if tokens is None:
    return (*mssa(x, train), None)
  out = mssa(x, train, token_reduction.size_bias(tokens.size), tokens.mask)
  return out if tokens.mask is not None else (*out, None)


def reduce_tokens(module, x, tokens, w, cls_attn, step, num_heads, class_token):
  """Token reduction (`effjax.layers.token_reduction`) in `module` after an MSSA residual x [B, N, d] whose
  projection is w [B, N, K·p]: the one projection is both ToMe's keys and DiffRate's query and keys.
  -> (x, tokens)."""
  heads = w.reshape(*w.shape[:2], num_heads, -1)
  rates = token_reduction.rate_logits(module, step.index, x.shape[1] - 1) if step.search else None
  return token_reduction.reduce(x, tokens, step, heads, heads[:, 0], heads.shape[-1] ** -0.5, class_token,
                                cls_attn, rates)


class Layer(nn.Module):
  """One CRATE layer: Z -> ISTA(LN₂(Z + MSSA(LN₁(Z)))); [B, N, d] -> [B, N, d].

  With `tokens` (a `token_reduction.Tokens`), attention is proportional to the token sizes, the `reduction` step
  acts before the ISTA step, and the layer returns (Z, tokens)."""
  num_heads: int
  head_dim: int
  eta: float = 0.1
  lmbda: float = 0.1
  dropout: float = 0.0
  impl: str = "auto"
  kernel_init: nn.initializers.Initializer = torch_default_init
  reduction: token_reduction.Step | None = None
  class_token: bool = True

  @nn.compact
  def __call__(self, x, train=False, tokens=None):
    project_out = not (self.num_heads == 1 and self.head_dim == x.shape[-1])  # the official rule
    mssa = MSSA(self.num_heads, self.head_dim, dropout=self.dropout, impl=self.impl, kernel_init=self.kernel_init,
                project_out=project_out, name="mssa")
    attn_out, w, cls_attn = mssa_tokens(mssa, nn.LayerNorm(TORCH_LN_EPS, name="norm1")(x), train, tokens)
    self.sow("intermediates", "qkv", w)
    self.sow("intermediates", "attn_out", attn_out)
    x = attn_out + x
    self.sow("intermediates", "after_attn_residual", x)
    if tokens is not None:
      x, tokens = reduce_tokens(self, x, tokens, w, cls_attn, self.reduction, self.num_heads, self.class_token)
    x = ISTA(self.eta, self.lmbda, name="ista")(nn.LayerNorm(TORCH_LN_EPS, name="norm2")(x))
    self.sow("intermediates", "after_ista", x)
    return x if tokens is None else (x, tokens)


def convert_layer(sd, prefix: str) -> dict:
  """Params of one `Layer` from an official PreNorm(Attention), PreNorm(FeedForward) pair at `prefix` of `sd`
  (an effjax.weights.mapping.OfficialStateDict)."""
  return {
      "norm1": sd.layer_norm(f"{prefix}.0.norm"),
      "mssa": {"qkv": sd.linear(f"{prefix}.0.fn.qkv", bias=False),
               **({"out": sd.linear(f"{prefix}.0.fn.to_out.0")} if f"{prefix}.0.fn.to_out.0.weight" in sd else {})},
      "norm2": sd.layer_norm(f"{prefix}.1.norm"),
      "ista": {"D": sd[f"{prefix}.1.fn.weight"]},
  }
