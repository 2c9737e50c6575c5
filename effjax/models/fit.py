"""FIT encoder and FIT image classifier (Chen & Li, "FIT: Far-reaching Interleaved Transformers", 2023).

Data tokens are split into T groups of N tokens: x [B, T, N, C]. Each group owns M learned latents
(latents [B, T, M, D_l]). A layer spec such as "(2)4(2)" lists blocks of (local, global) layers; per
block b:

    x      <- local_b(x)                      pre-LN transformer layers within each group ([B·T, N, D_x])
    z      <- READ_b(z, x)                    latents attend to their group's tokens  ([B·T, M, D_l])
    z      <- global_b(z)                     pre-LN layers over all T·M latents      ([B, T·M, D_l])
    x      <- WRITE_b(x, z)   (not after the last block)  tokens attend to their group's latents

followed by output LayerNorms. Local attention costs O(T·N²) = O(L·N); global O((T·M)²). With
N ∝ L^{1/3} both terms scale as L^{4/3}.

`FIT` is the official `FIT` layer (pix2seq architectures/transformers.py) on token groups, loadable
from official weights with `convert_official`. `Model` is an image classifier: images are cut into
groups of patches, encoded by FIT and classified from the mean of the latents.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers import fit_grouping
from effjax.layers import fit_layers as fl
from effjax.layers.remat import remat


class FIT(nn.Module):
  """The FIT encoder: (x [B, T, N, C], optional y [B, T, Ny, Cy]) -> (x [B, T, Ny+N, D_x], latents [B, T, M, D_l]).

  `y` are optional extra tokens (own stem, no position embedding) prepended to every group. With
  `mask="causal"` the global layers are chunk-causal: a latent sees the latents of its own and of
  earlier groups. Cross-attention (READ/WRITE) uses min(heads) heads of width min(D_x, D_l)/heads as
  in the official code. `remat` ("none", "full", "dots") rematerialises every layer;
  `max_attention_logits` > 0 computes attention in exact sequential chunks of at most that many logits
  (bounds memory on backends that do not fuse attention, e.g. XLA:CPU), and `chunk_groups` > 0 runs
  every per-group layer (local layers, READ, WRITE) on that many groups at a time, sequentially and
  rematerialised: exact, and it bounds the activation memory of one layer to one chunk.
  """
  layers: str
  num_groups: int
  latents_per_group: int
  x_dim: int
  latent_dim: int
  x_num_heads: int
  latent_num_heads: int
  mlp_ratio: int = 4
  drop_path: float = 0.0
  drop_units: float = 0.0
  mask: str = "none"
  remat: str = "none"
  attention_impl: str = "auto"
  max_attention_logits: int = 0
  chunk_groups: int = 0

  def _check_input(self, x):
    fl.parse_layers(self.layers)
    if x.ndim != 4:
      raise ValueError(f"FIT expects tokens [batch, groups, tokens_per_group, channels], got shape {x.shape}")
    if x.shape[1] != self.num_groups:
      raise ValueError(f"FIT built for num_groups={self.num_groups} got {x.shape[1]} groups (shape {x.shape})")
    if self.mask not in ("none", "causal"):
      raise ValueError(f"unknown FIT mask {self.mask!r}; expected 'none' or 'causal'")

  @nn.compact
  def __call__(self, x, y=None, train=False):
    self._check_input(x)
    blocks = fl.parse_layers(self.layers)
    b, t, n, _ = x.shape
    m = self.latents_per_group
    x = nn.LayerNorm(fl.LN_EPS, name="stem_ln")(nn.Dense(self.x_dim, kernel_init=fl.dense_init, name="stem")(x))
    x = x + self.param("x_pos_emb", fl.pos_emb_init, (n, self.x_dim)).astype(x.dtype)
    if y is not None:
      y = nn.Dense(self.x_dim, kernel_init=fl.dense_init, name="stem_y")(y)
      x = jnp.concatenate([nn.LayerNorm(fl.LN_EPS, name="stem_y_ln")(y), x], axis=2)
    latents = self.param("latent_pos_emb", fl.pos_emb_init, (t * m, self.latent_dim)).astype(x.dtype)
    latents = jnp.broadcast_to(latents.reshape(1, t * m, self.latent_dim), (b, t * m, self.latent_dim))
    latent_mask = fl.chunk_causal_mask(t, m) if self.mask == "causal" else None

    heads, key_dim = fl.cross_heads(self.x_num_heads, self.latent_num_heads, self.x_dim, self.latent_dim)
    cross_layer = remat(fl.CrossAttentionLayer, self.remat, 4)
    cross = lambda name, q, kv: fl.run_in_chunks(
        cross_layer(heads, key_dim, attention_impl=self.attention_impl, max_logits=self.max_attention_logits,
                    name=name), self.chunk_groups, (q, kv), None, train, initializing=self.is_initializing())
    stack = lambda num, heads_, name, chunk=0: fl.LayerStack(
        num, heads_, self.mlp_ratio, self.drop_units, self.drop_path, remat=self.remat,
        attention_impl=self.attention_impl, max_logits=self.max_attention_logits, chunk=chunk, name=name)
    x = x.reshape(b * t, x.shape[2], self.x_dim)
    for i, (num_local, num_global) in enumerate(blocks):
      x = stack(num_local, self.x_num_heads, f"x_network{i}", self.chunk_groups)(x, None, train)
      self.sow("intermediates", f"out_x_network{i}", x)
      if num_global == 0:
        continue
      z = latents.reshape(b * t, m, self.latent_dim)
      z = cross(f"l2x_cross_attn{i}", z, x)
      self.sow("intermediates", f"out_l2x_cross_attn{i}", z)
      latents = stack(num_global, self.latent_num_heads, f"l_network{i}")(
          z.reshape(b, t * m, self.latent_dim), latent_mask, train)
      self.sow("intermediates", f"out_l_network{i}", latents)
      if i < len(blocks) - 1:
        z = latents.reshape(b * t, m, self.latent_dim)
        x = cross(f"x2l_cross_attn{i}", x, z)
        self.sow("intermediates", f"out_x2l_cross_attn{i}", x)
    x = nn.LayerNorm(fl.LN_EPS, name="x_output_ln")(x.reshape(b, t, -1, self.x_dim))
    latents = nn.LayerNorm(fl.LN_EPS, name="l_output_ln")(latents.reshape(b, t, m, self.latent_dim))
    return x, latents


def convert_official(state_dict, prefix: str | None = None) -> dict:
  """Official pix2seq Keras weights of a `FIT` layer -> params of `FIT`.

  `state_dict` maps Keras variable names (e.g. "fit/x_network/transformer_encoder/mha/query/kernel:0")
  to arrays; `prefix` is the Keras layer name (default: the first name component). For the classifier
  `Model`, use {"encoder": convert_official(...), "head": ...}.
  """
  return fl.convert_keras(state_dict, prefix)


class Model(nn.Module):
  """FIT image classifier: images [B, H, W, C] -> logits [B, num_classes].

  Images are cut into p×p patches (pixels flattened (p p c)) and the patches into groups by
  `grouping`: "window" — contiguous windows of group_size×group_size patches (equivalently, sub-images
  of group_size·p pixels), or "strided" — group (i, j) takes every (H/p/group_size)-th patch starting
  at (i, j), so each group covers the whole image. The FIT encoder runs on [B, T, N, p·p·C]; the
  logits come from a Dense head on the mean of the T·M output latents.
  """
  num_classes: int
  layers: str = "(2)2(2)"
  patch_size: int = 4
  group_size: int = 4
  grouping: str = "window"
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
  chunk_groups: int = 0

  @nn.compact
  def __call__(self, images, train=False):
    tokens = fit_grouping.images_to_groups(images, self.patch_size, self.group_size, self.grouping)
    encoder = FIT(self.layers, tokens.shape[1], self.latents_per_group, self.x_dim, self.latent_dim,
                  self.x_num_heads, self.latent_num_heads, self.mlp_ratio, self.drop_path, self.drop_units,
                  remat=self.remat, attention_impl=self.attention_impl,
                  max_attention_logits=self.max_attention_logits, chunk_groups=self.chunk_groups, name="encoder")
    _, latents = encoder(tokens, train=train)
    pooled = latents.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(pooled)
