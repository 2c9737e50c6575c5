"""FIT autoregressive decoder (the official pix2seq `FITAR`) for token sequences, e.g. bytes.

A sequence of L tokens is split into T = L / N groups of N consecutive tokens. Per block b:

    x <- local_b(x)                causal self-attention within each group
    z <- READ_b(z, x)              latents of group t read all tokens of group t
    z <- global_b(z)               chunk-causal over latents: group t sees groups ≤ t
    x <- WRITE_b(x, shift(z))      tokens of group t read the latents of group t-1 (zeros for t = 0)

so the prediction at position i only depends on tokens ≤ i: within a group through the causal local
layers, across groups only through latents of strictly earlier groups. Logits use the shared input
embedding: logits = LN(x) Eᵀ + bias.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers import fit_layers as fl
from effjax.layers.remat import remat


class Model(nn.Module):
  """FIT-AR language model: int tokens [B, L] -> logits [B, L, vocab_size] (logits[:, i] predicts token i+1)."""
  vocab_size: int = 256
  seq_len: int = 256
  layers: str = "(2)2(2)"
  group_size: int = 16
  latents_per_group: int = 4
  x_dim: int = 128
  latent_dim: int = 128
  x_num_heads: int = 4
  latent_num_heads: int = 4
  mlp_ratio: int = 4
  drop_path: float = 0.0
  drop_units: float = 0.0
  remat: str = "none"
  attention_impl: str = "auto"
  max_attention_logits: int = 0

  @nn.compact
  def __call__(self, tokens, train=False):
    blocks = fl.parse_layers(self.layers)
    if tokens.ndim != 2:
      raise ValueError(f"FIT-AR expects int tokens [batch, length], got shape {tokens.shape}")
    b, length = tokens.shape
    if length != self.seq_len:
      raise ValueError(f"FIT-AR built for seq_len={self.seq_len} got length {length}")
    if length % self.group_size:
      raise ValueError(f"sequence length {length} is not divisible by group_size {self.group_size}")
    n, t, m, dl = self.group_size, length // self.group_size, self.latents_per_group, self.latent_dim
    embedding = self.param("token_embedding", fl.pos_emb_init, (self.vocab_size, self.x_dim))
    x = jnp.take(embedding, tokens, axis=0).reshape(b * t, n, self.x_dim)
    x = x + self.param("x_pos_emb", fl.pos_emb_init, (n, self.x_dim))
    z = self.param("latent_pos_emb", fl.pos_emb_init, (t * m, dl))
    z = jnp.broadcast_to(z.reshape(1, t, m, dl), (b, t, m, dl)).reshape(b * t, m, dl)

    local_mask, latent_mask = fl.causal_mask(n), fl.chunk_causal_mask(t, m)
    heads, key_dim = fl.cross_heads(self.x_num_heads, self.latent_num_heads, self.x_dim, dl)
    cross_layer = remat(fl.CrossAttentionLayer, self.remat, 4)
    cross = lambda name: cross_layer(heads, key_dim, attention_impl=self.attention_impl,
                                     max_logits=self.max_attention_logits, name=name)
    stack = lambda num, heads_, name: fl.LayerStack(
        num, heads_, self.mlp_ratio, self.drop_units, self.drop_path, remat=self.remat,
        attention_impl=self.attention_impl, max_logits=self.max_attention_logits, name=name)
    for i, (num_local, num_global) in enumerate(blocks):
      x = stack(num_local, self.x_num_heads, f"x_network{i}")(x, local_mask, train)
      if num_global == 0:
        continue
      z = cross(f"l2x_cross_attn{i}")(z, x, None, train)
      z = stack(num_global, self.latent_num_heads, f"l_network{i}")(z.reshape(b, t * m, dl), latent_mask, train)
      z = z.reshape(b, t, m, dl)
      if i < len(blocks) - 1:
        shifted = jnp.concatenate([jnp.zeros_like(z[:, :1]), z[:, :-1]], axis=1).reshape(b * t, m, dl)
        x = cross(f"x2l_cross_attn{i}")(x, shifted, None, train)
      z = z.reshape(b * t, m, dl)
    x = nn.LayerNorm(fl.LN_EPS, name="x_output_ln")(x.reshape(b, length, self.x_dim))
    bias = self.param("outp_bias", nn.initializers.zeros, (self.vocab_size,))
    return x @ embedding.T.astype(x.dtype) + bias
