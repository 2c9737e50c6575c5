"""Shared transformer blocks: multi-head attention through the kernels op, MLP, pre-LN encoder block."""
import flax.linen as nn

from effjax.kernels.attention import attention
from effjax.layers import token_reduction


class MultiHeadAttention(nn.Module):
  """Self-attention: x [B, L, D] -> [B, L, D]; softmax(QKᵀ/√d + bias)V per head, heads concatenated.
  With return_qk, (y, q, k [B, L, H, d], cls_attn): with a keep `policy` [B, L] the attention is DiffRate's masked
  one (`token_reduction.policy_attention`) and cls_attn its class-token row [B, L − 1]; else cls_attn is None."""
  num_heads: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None, bias=None, return_qk=False, policy=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    cls_attn = None
    if policy is None:
      y = attention(q, k, v, mask=mask, bias=bias, impl=self.impl)
    else:
      y, cls_attn = token_reduction.policy_attention(q, k, v, bias, policy, head_dim ** -0.5)
    y = nn.DenseGeneral(width, axis=(-2, -1), name="out")(y)
    return (y, q, k, cls_attn) if return_qk else y


class Mlp(nn.Module):
  """Two-layer GELU MLP: [..., D] -> [..., D] with hidden width mlp_dim."""
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.gelu(nn.Dense(self.mlp_dim, name="fc1")(x), approximate=False)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.Dense(x.shape[-1], name="fc2")(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)).

  With `tokens` (token reduction, a `token_reduction.Tokens`) attention is proportional to the token sizes, the
  block's `reduction` step acts between attention and MLP, and it returns (x, tokens)."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  impl: str = "auto"
  reduction: token_reduction.Step | None = None
  class_token: bool = True

  @nn.compact
  def __call__(self, x, train=False, tokens=None):
    attn = MultiHeadAttention(self.num_heads, self.impl, name="attn")
    if tokens is None:
      y = attn(nn.LayerNorm(name="ln1")(x))
    else:
      y, q, k, cls_attn = attn(nn.LayerNorm(name="ln1")(x), bias=token_reduction.size_bias(tokens.size),
                               return_qk=True, policy=tokens.mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    if tokens is not None:
      step = self.reduction
      rates = token_reduction.rate_logits(self, step.index, x.shape[1] - 1) if step.search else None
      x, tokens = token_reduction.reduce(x, tokens, step, k, q[:, 0], k.shape[-1] ** -0.5, self.class_token,
                                         cls_attn, rates)
    y = Mlp(self.mlp_dim, self.dropout, name="mlp")(nn.LayerNorm(name="ln2")(x), train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    return x if tokens is None else (x, tokens)
