"""FIT denoiser for pixel diffusion (the official pix2seq `FITDenoiser`) and its image wrapper `Model`.

Per block b (the loop of `effjax.layers.fit_layers.Interleaved`), on tokens x [B·T, N, D_x] and latents z:

    x <- local_b(x)
    z <- READ_b(z, x) (+ MLP)                   latents attend to their group's tokens
    z <- z + MHA(LN(z), LN([time, cond]))       latents attend to the conditioning tokens
    z <- global_b(z)                            over all T·M latents
    x <- WRITE_b(x, z) (+ MLP)                  except after the last block

Conditioning tokens: the time embedding Dense(SiLU(Dense(std(PE(1000·t))))) with PE the sin/cos
encoding of width D_l/4 (sines of even, cosines of odd angles, concatenated), plus Dense(cond) for
class labels. Latent self-conditioning: z_0 = pos_emb + LN(MLP(z_prev)) where z_prev are the latents
the network returned on the previous sampling step (zeros when absent); the LN scale starts at 0.
Output: Dense(LN(x)) per token, and the final latents (no LayerNorm) for self-conditioning.

DeepCache (Ma et al., 2024) for FIT: the latent path (READ, conditioning attention, global layers) is the
high-level branch. With the collection "latent_cache" mutable a call records the latents z_i that each block's
WRITE reads; a call given `latent_cache=` reuses them and runs only the shallow per-group path (stem, local
layers, WRITEs, output) on its new tokens, and returns the cached final latents (see `fit_layers.Interleaved`).
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers import fit_grouping, fit_layers as fl

HEAD = r""  # no task head: config.init_from.skip's default replaces nothing


def time_encoding(t, dim):
  """Official `positional_encoding(t·1000, dim)` for t [B] -> [B, dim] (concatenated, not interleaved)."""
  i = jnp.arange(dim)
  angles = (t[:, None] * 1000.0) / jnp.power(10000.0, (2 * (i // 2)).astype(jnp.float32) / dim)
  return jnp.concatenate([jnp.sin(angles[:, 0::2]), jnp.cos(angles[:, 1::2])], axis=-1)


class TimeEmbedding(nn.Module):
  """t [B] in [0, 1] -> [B, 4·dim]: Dense(SiLU(Dense(standardise(PE(1000·t))))), no final SiLU."""
  dim: int

  @nn.compact
  def __call__(self, t):
    e = time_encoding(t.astype(jnp.float32), self.dim)
    e = (e - e.mean(-1, keepdims=True)) / e.std(-1, keepdims=True)
    e = nn.silu(nn.Dense(4 * self.dim, kernel_init=fl.dense_init, name="dense0")(e))
    return nn.Dense(4 * self.dim, kernel_init=fl.dense_init, name="dense1")(e)


class FITDenoiser(fl.Interleaved, kw_only=True):
  """(x [B, T, N, C], time [B], cond [B, K] or [B, S, K] or None, latents_prev [B, T, M, D_l] or None)
  -> (prediction [B, T, N, out_dim or C], latents [B, T, M, D_l]).

  latent_cache: {"block{i}": [B·T, M, D_l]} recorded by an earlier call with "latent_cache" mutable; the
  latent path is then skipped (time, cond and latents_prev are unused).

  The block loop is `fit_layers.Interleaved` with the conditioning tokens as its context; READ and WRITE
  carry an MLP by default (`xattn_with_mlp`) as in the official denoiser.
  """
  xattn_with_mlp: bool = True
  out_dim: int | None = None
  mask: str = "none"
  self_cond: str = "latent"

  def __call__(self, x, time, cond=None, latents_prev=None, train=False, latent_cache=None):
    return self.denoise(x, time, cond, latents_prev, train, latent_cache)

  @nn.compact
  def denoise(self, x, time, cond=None, latents_prev=None, train=False, latent_cache=None):
    fl.parse_layers(self.layers)
    if x.ndim != 4:
      raise ValueError(f"FITDenoiser expects tokens [batch, groups, tokens_per_group, channels], got {x.shape}")
    if self.mask not in ("none", "causal"):
      raise ValueError(f"unknown FIT mask {self.mask!r}; expected 'none' or 'causal'")
    if self.self_cond not in ("none", "latent"):
      raise ValueError(f"unknown self_cond {self.self_cond!r}; expected 'none' or 'latent'")
    if self.latent_width % 4:
      raise ValueError(f"latent_width {self.latent_width} must be divisible by 4 for the time embedding")
    b, t, n, c = x.shape
    m, dl = self.latents_per_group, self.latent_width
    x = nn.LayerNorm(fl.LN_EPS, name="stem_ln")(nn.Dense(self.width, kernel_init=fl.dense_init, name="stem")(x))
    x = x + self.param("x_pos_emb", fl.pos_emb_init, (n, self.width)).astype(x.dtype)

    if latent_cache is not None:  # a DeepCache step: the latent path and its inputs are not computed
      x, z = self.interleave(x, jnp.zeros((b, t, m, dl), x.dtype), train=train, latent_cache=latent_cache)
      return self.output(x, c), z
    latents = self.param("latent_pos_emb", fl.pos_emb_init, (t * m, dl)).astype(x.dtype)
    latents = jnp.broadcast_to(latents.reshape(1, t, m, dl), (b, t, m, dl))
    if self.self_cond == "latent":
      prev = jnp.zeros((b, t, m, dl), x.dtype) if latents_prev is None else latents_prev
      prev = fl.FeedForward(self.mlp_ratio, name="latent_prev_proj")(prev, train)
      latents = latents + nn.LayerNorm(fl.LN_EPS, scale_init=nn.initializers.zeros, name="latent_prev_ln")(prev)

    time_emb = TimeEmbedding(dl // 4, name="time_emb")(jnp.reshape(time, (b,)))
    self.sow("intermediates", "out_time_emb", time_emb)
    context = [time_emb[:, None]]
    if cond is not None:
      cond = nn.Dense(dl, kernel_init=fl.dense_init, name="cond_proj")(cond.astype(x.dtype))
      context.append(cond[:, None] if cond.ndim == 2 else cond)
    context = jnp.concatenate(context, axis=1)

    x, z = self.interleave(x, latents, context, causal_latents=self.mask == "causal", train=train)
    return self.output(x, c), z

  def output(self, x, channels):
    """Dense(LN(x)): tokens [B, T, N, D_x] -> [B, T, N, out_dim or channels]."""
    x = nn.LayerNorm(fl.LN_EPS, name="x_output_ln")(x)
    return nn.Dense(self.out_dim or channels, kernel_init=fl.dense_init, name="x_output_linear")(x)


def convert_official(state_dict) -> dict:
  """Official pix2seq Keras weights of a `FITDenoiser` -> params of `FITDenoiser` / `Model` (same tree)."""
  return fl.convert_keras(state_dict)


class Model(FITDenoiser, kw_only=True):
  """FIT pixel denoiser on images: (images [B, H, W, C], time [B], cond, latents_prev) ->
  (prediction [B, H, W, C], latents [B, T, M, D_l]).

  Images are cut into groups of patches as in `effjax.layers.fit_grouping` (`grouping` "window":
  sub-images of group_size·patch_size pixels, the official layout; or "strided"), denoised as tokens
  and put back; the prediction is in image space (ε, x or v, as the diffusion task trains it).
  """
  patch_size: int = 4
  group_size: int = 4
  grouping: str = "window"

  def __call__(self, images, time, cond=None, latents_prev=None, train=False, latent_cache=None):
    if images.ndim != 4:
      raise ValueError(f"FIT denoiser Model expects images [B, H, W, C], got shape {images.shape}")
    tokens = fit_grouping.images_to_groups(images, self.patch_size, self.group_size, self.grouping)
    out, latents = self.denoise(tokens, time, cond, latents_prev, train, latent_cache)
    out = fit_grouping.groups_to_images(out, images.shape[1:3], self.patch_size, images.shape[-1], self.grouping)
    return out, latents

