"""CRATE-MAE (Pai et al., "Masked Completion via Structured Diffusion with White-Box Transformers").

A masked autoencoder whose encoder layers are CRATE layers (λ = 0.5) and whose decoder layers invert them:

  encoder  Z_next = ReLU(x + η (x D − x Dᵀ D) − η λ),  x = LN₂(Z + MSSA(LN₁(Z)))       (layers/crate.Layer)
  decoder  Z½ = LN₁(Z) Dᵀ,  Z_next = Z½ − MSSA(LN₂(Z½))                              (DecoderLayer)

As in the official code: masked patches are replaced by the mask token *before* the encoder (which runs on
all 1 + N tokens; the official gather-based shuffle/unshuffle puts every kept token back in place, so this
is the same computation), the fixed 2-D sin-cos embedding is added to [cls, tokens], the decoder has the
encoder's width (the official `decoder_embed` is never used and is not created here), and the prediction
of the cls token is dropped. `mask` is 1 for removed patches; `ids_restore` = argsort(argsort(noise)).

Call: model.apply(variables, images [B, H, W, C], mask_ratio=0.75, noise=None) -> dict with
pred [B, N, p·p·C] (patch order of `effjax.layers.patches.patchify`), mask [B, N], ids_restore [B, N].
Without `noise`, uniform noise [B, N] is drawn from the "masking" rng. Intermediates sown: patch_tokens,
layer{i}/{qkv, attn_out, after_attn_residual, after_ista}, latent, decoder_layer{i}/{after_dict, output}.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers import remat as remat_lib
from effjax.layers.common import LN_EPS, TORCH_LN_EPS, with_variants
from effjax.layers.crate import MSSA, SIZES, Layer, convert_layer
from effjax.layers.patches import sincos_2d
from effjax.weights.mapping import OfficialStateDict

HEAD = r""  # no task head: config.init_from.skip's default replaces nothing

# mae_crate_tiny/small/base/large: CRATE's table, the decoder with the encoder's width, depth and heads.
VARIANTS = {name: dict(v, decoder_depth=v["depth"]) for name, v in SIZES.items()}
POS_EMBED_ATOL = 1e-5  # how far an official fixed sin-cos embedding may be from `sincos_2d`


def _xavier_conv(key, shape, dtype=jnp.float32):
  """Xavier-uniform of the conv kernel viewed as a [p·p·C, dim] linear map (the MAE patch-embedding init)."""
  fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
  bound = np.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def random_masking(noise, mask_ratio: float):
  """Per-sample masking from noise [B, N]: the int(N·(1−ratio)) smallest entries are kept.

  Returns (mask [B, N] float32, 1 = removed; ids_restore [B, N] int32; ids_keep [B, len_keep] int32).
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  n = noise.shape[1]
  len_keep = int(n * (1 - mask_ratio))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return mask, ids_restore.astype(jnp.int32), ids_shuffle[:, :len_keep].astype(jnp.int32)


class DecoderLayer(nn.Module):
  """Z -> Z½ − MSSA(LN₂(Z½)), Z½ = LN₁(Z) Dᵀ with D [d, d]; [B, N, d] -> [B, N, d]."""
  num_heads: int
  head_dim: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    d = x.shape[-1]
    dictionary = self.param("D", nn.initializers.kaiming_uniform(), (d, d), jnp.float32).astype(x.dtype)
    y = nn.LayerNorm(TORCH_LN_EPS, name="norm1")(x) @ dictionary.T
    self.sow("intermediates", "after_dict", y)
    mssa = MSSA(self.num_heads, self.head_dim, impl=self.impl, kernel_init=nn.initializers.xavier_uniform(),
                name="mssa")
    attn, _ = mssa(nn.LayerNorm(TORCH_LN_EPS, name="norm2")(y), train)
    y = y - attn
    self.sow("intermediates", "output", y)
    return y


class CRATEMAE(nn.Module):
  """CRATE-MAE; see the module docstring; build it with `Model(variant=...)`. decoder_num_heads defaults to
  num_heads."""
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  decoder_depth: int = 12
  decoder_num_heads: int | None = None
  eta: float = 0.1
  lmbda: float = 0.5
  remat: str = "none"
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False, mask_ratio=0.75, noise=None):
    if images.ndim != 4:
      raise ValueError(f"CRATE-MAE expects images [B, H, W, C], got shape {images.shape}")
    remat_lib.check(self.remat)
    b, h, w, c = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", kernel_init=_xavier_conv,
                name="patch_embed")(images)
    x = x.reshape(b, -1, self.width)
    self.sow("intermediates", "patch_tokens", x)
    n = x.shape[1]
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (b, n))
    if noise.shape != (b, n):
      raise ValueError(f"masking noise must have shape {(b, n)}, got {noise.shape}")
    mask, ids_restore, _ = random_masking(noise, mask_ratio)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width), jnp.float32)
    x = jnp.where(mask[..., None] > 0, mask_token.astype(x.dtype), x)
    cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.width), jnp.float32).astype(x.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
    x = x + sincos_2d(self.width, (h // p, w // p), cls_token=True)[None].astype(x.dtype)

    encoder_layer = remat_lib.remat(Layer, self.remat)
    decoder_layer = remat_lib.remat(DecoderLayer, self.remat)
    for i in range(self.depth):
      x = encoder_layer(self.num_heads, self.width // self.num_heads, self.eta, self.lmbda,
                        impl=self.impl, kernel_init=nn.initializers.xavier_uniform(),
                        name=f"layer{i}")(x, train)
    x = nn.LayerNorm(LN_EPS, name="norm")(x)
    self.sow("intermediates", "latent", x)
    heads = self.decoder_num_heads or self.num_heads
    for i in range(self.decoder_depth):
      x = decoder_layer(heads, self.width // heads, self.impl, name=f"decoder_layer{i}")(x, train)
    x = nn.LayerNorm(LN_EPS, name="decoder_norm")(x)
    pred = nn.Dense(p * p * c, kernel_init=nn.initializers.xavier_uniform(), name="decoder_pred")(x)[:, 1:]
    return {"pred": pred, "mask": mask, "ids_restore": ids_restore}


Model = with_variants(CRATEMAE, VARIANTS, "CRATE-MAE")


def convert_official(state_dict) -> dict:
  """Official `MaskedAutoencoderViT` (CRATE blocks) state dict -> params of `Model`.

  The fixed sin-cos embeddings (`pos_embed`, `decoder_pos_embed`) are checked against `sincos_2d` (they are
  not parameters here, and may differ by POS_EMBED_ATOL); the unused `decoder_embed` is skipped. Other missing
  or unexpected keys raise.
  """
  sd = OfficialStateDict(state_dict)
  params = {
      "patch_embed": sd.conv("patch_embed.proj"),
      "cls": sd["cls_token"],
      "mask_token": sd["mask_token"],
      "norm": sd.layer_norm("norm"),
      "decoder_norm": sd.layer_norm("decoder_norm"),
      "decoder_pred": sd.linear("decoder_pred"),
  }
  for name in ("pos_embed", "decoder_pos_embed"):
    pos = sd[name][0]
    grid = int(round(np.sqrt(pos.shape[0] - 1)))
    expected = np.asarray(sincos_2d(pos.shape[1], (grid, grid), cls_token=True))
    if pos.shape != expected.shape or np.abs(pos - expected).max() > POS_EMBED_ATOL:
      raise ValueError(f"official {name} is not the fixed 2-D sin-cos embedding this model uses")
  layer_ids = lambda prefix: sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))})
  for i in layer_ids("blocks"):
    params[f"layer{i}"] = convert_layer(sd, f"blocks.{i}.layers.0")
  for i in layer_ids("decoder_blocks"):
    pre = f"decoder_blocks.{i}.layers.0"
    params[f"decoder_layer{i}"] = {
        "norm1": sd.layer_norm(f"{pre}.0.norm"), "D": sd[f"{pre}.0.fn.weight"], "norm2": sd.layer_norm(f"{pre}.1.norm"),
        "mssa": {"qkv": sd.linear(f"{pre}.1.fn.qkv", bias=False), "out": sd.linear(f"{pre}.1.fn.to_out.0")},
    }
  sd.check_all_used(ignored=[r"decoder_embed\.(weight|bias)"])
  return jax.tree.map(jnp.asarray, params)
