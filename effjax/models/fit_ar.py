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

HEAD = r""  # no task head: config.init_from.skip's default replaces nothing


class Model(fl.Interleaved, kw_only=True):
  """FIT-AR language model: int tokens [B, L] -> logits [B, L, vocab_size] (logits[:, i] predicts token i+1).

  The block loop and its memory options are those of `fit_layers.Interleaved` with `autoregressive=True`.
  """
  vocab_size: int = 256
  seq_len: int = 256
  group_size: int = 16

  @nn.compact
  def __call__(self, tokens, train=False):
    fl.parse_layers(self.layers)
    if tokens.ndim != 2:
      raise ValueError(f"FIT-AR expects int tokens [batch, length], got shape {tokens.shape}")
    b, length = tokens.shape
    if length != self.seq_len:
      raise ValueError(f"FIT-AR built for seq_len={self.seq_len} got length {length}")
    if length % self.group_size:
      raise ValueError(f"sequence length {length} is not divisible by group_size {self.group_size}")
    n, t, m, dl = self.group_size, length // self.group_size, self.latents_per_group, self.latent_width
    embedding = self.param("token_embedding", fl.pos_emb_init, (self.vocab_size, self.width))
    x = jnp.take(embedding, tokens, axis=0).reshape(b, t, n, self.width)
    x = x + self.param("x_pos_emb", fl.pos_emb_init, (n, self.width))
    z = self.param("latent_pos_emb", fl.pos_emb_init, (t * m, dl))
    z = jnp.broadcast_to(z.reshape(1, t, m, dl), (b, t, m, dl))
    x, _ = self.interleave(x, z, autoregressive=True, train=train)
    x = nn.LayerNorm(fl.LN_EPS, name="x_output_ln")(x.reshape(b, length, self.width))
    bias = self.param("outp_bias", nn.initializers.zeros, (self.vocab_size,))
    return x @ embedding.T.astype(x.dtype) + bias
