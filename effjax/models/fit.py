"""FIT encoder and FIT image classifier (Chen & Li, "FIT: Far-reaching Interleaved Transformers", 2023).

Data tokens are split into T groups of N tokens: x [B, T, N, C]. Each group owns M learned latents
(latents [B, T, M, D_l]). A layer spec such as "(2)4(2)" lists blocks of (local, global) layers; per
block b:

    x      <- local_b(x)                      pre-LN transformer layers within each group ([B·T, N, D_x])
    z      <- READ_b(z, x)                    latents attend to their group's tokens  ([B·T, M, D_l])
    z      <- global_b(z)                     pre-LN layers over all T·M latents      ([B, T·M, D_l])
    x      <- WRITE_b(x, z)   (not after the last block)  tokens attend to their group's latents

followed by output LayerNorms (the loop is `effjax.layers.fit_layers.Interleaved`). Local attention costs
O(T·N²) = O(L·N); global O((T·M)²). With N ∝ L^{1/3} both terms scale as L^{4/3}.

`FIT` is the official `FIT` layer (pix2seq architectures/transformers.py) on token groups, loadable
from official weights with `convert_official`. `Model` is an image classifier: images are cut into
groups of patches, encoded by FIT and classified from the mean of the latents.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers import fit_grouping, fit_layers as fl

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default


class FIT(fl.Interleaved, kw_only=True):
  """The FIT encoder: (x [B, T, N, C], optional y [B, T, Ny, Cy]) -> (x [B, T, Ny+N, D_x], latents [B, T, M, D_l]).

  `y` are optional extra tokens (own stem, no position embedding) prepended to every group. With
  `mask="causal"` the global layers are chunk-causal: a latent sees the latents of its own and of
  earlier groups. The block loop and its memory options are those of `fit_layers.Interleaved`.
  """
  num_groups: int
  mask: str = "none"

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
    b, t, n, _ = x.shape
    m, dl = self.latents_per_group, self.latent_width
    x = nn.LayerNorm(fl.LN_EPS, name="stem_ln")(nn.Dense(self.width, kernel_init=fl.dense_init, name="stem")(x))
    x = x + self.param("x_pos_emb", fl.pos_emb_init, (n, self.width)).astype(x.dtype)
    if y is not None:
      y = nn.Dense(self.width, kernel_init=fl.dense_init, name="stem_y")(y)
      x = jnp.concatenate([nn.LayerNorm(fl.LN_EPS, name="stem_y_ln")(y), x], axis=2)
    latents = self.param("latent_pos_emb", fl.pos_emb_init, (t * m, dl)).astype(x.dtype)
    latents = jnp.broadcast_to(latents.reshape(1, t, m, dl), (b, t, m, dl))
    x, latents = self.interleave(x, latents, causal_latents=self.mask == "causal", train=train)
    x = nn.LayerNorm(fl.LN_EPS, name="x_output_ln")(x)
    latents = nn.LayerNorm(fl.LN_EPS, name="l_output_ln")(latents)
    return x, latents


def convert_official(state_dict) -> dict:
  """Official pix2seq Keras weights of a `FIT` layer -> params of the classifier `Model`: {"encoder": FIT params}.

  `state_dict` maps Keras variable names (e.g. "fit/x_network/transformer_encoder/mha/query/kernel:0")
  to arrays, all under one Keras layer name (the first name component). The official FIT has no classifier
  head: `Model`'s "head" stays at its init (config.init_from.skip); ["encoder"] alone are the `FIT` params.
  """
  return {"encoder": fl.convert_keras(state_dict)}


class Model(fl.Interleaved, kw_only=True):
  """FIT image classifier: images [B, H, W, C] -> logits [B, num_classes].

  Images are cut into p×p patches (pixels flattened (p p c)) and the patches into groups by
  `grouping`: "window" — contiguous windows of group_size×group_size patches (equivalently, sub-images
  of group_size·p pixels), or "strided" — group (i, j) takes every (H/p/group_size)-th patch starting
  at (i, j), so each group covers the whole image. The FIT encoder (this module's block-loop options)
  runs on [B, T, N, p·p·C]; the logits come from a Dense head on the mean of the T·M output latents.
  """
  num_classes: int
  patch_size: int = 4
  group_size: int = 4
  grouping: str = "window"

  @nn.compact
  def __call__(self, images, train=False):
    tokens = fit_grouping.images_to_groups(images, self.patch_size, self.group_size, self.grouping)
    _, latents = FIT(**self.loop_options(), num_groups=tokens.shape[1], name="encoder")(tokens, train=train)
    pooled = latents.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(pooled)
