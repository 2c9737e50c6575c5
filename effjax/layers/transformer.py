"""Shared transformer blocks: multi-head attention through the kernels op, MLP, pre-LN encoder block."""
import flax.linen as nn

from effjax.kernels.attention import attention


class MultiHeadAttention(nn.Module):
  """Self-attention: x [B, L, D] -> [B, L, D]; softmax(QKᵀ/√d)V per head, heads concatenated."""
  num_heads: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    y = attention(q, k, v, mask=mask, impl=self.impl)
    return nn.DenseGeneral(width, axis=(-2, -1), name="out")(y)


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
  """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    y = MultiHeadAttention(self.num_heads, self.impl, name="attn")(nn.LayerNorm(name="ln1")(x))
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = Mlp(self.mlp_dim, self.dropout, name="mlp")(nn.LayerNorm(name="ln2")(x), train)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)
