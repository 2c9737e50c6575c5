"""Patch extraction: images [B, H, W, C] <-> patch vectors [B, (H/p)(W/p), p·p·C].

Tokens are row-major over the patch grid and every patch vector is ordered (row-in-patch, column-in-patch,
channel), i.e. einops `b (h p1) (w p2) c -> b (h w) (p1 p2 c)`. This is the order of the official CRATE
stem and of the MAE reconstruction target.
"""
import jax.numpy as jnp


def pair(patch_size) -> tuple[int, int]:
  """(ph, pw) of an int p (square patches) or a pair, as the official CRATE and CRATE-α accept."""
  if isinstance(patch_size, int):
    return patch_size, patch_size
  if len(patch_size) != 2:
    raise ValueError(f"patch_size must be an int or (height, width), got {patch_size!r}")
  return int(patch_size[0]), int(patch_size[1])


def patchify(images, patch_size):
  """[B, H, W, C] -> [B, (H/ph)·(W/pw), ph·pw·C]; patch_size p or (ph, pw)."""
  if images.ndim != 4:
    raise ValueError(f"patchify expects images [B, H, W, C], got shape {images.shape}")
  b, h, w, c = images.shape
  ph, pw = pair(patch_size)
  if h % ph or w % pw:
    raise ValueError(f"image size {h}x{w} is not divisible by patch size {ph}x{pw}")
  x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches, patch_size: int, grid: tuple[int, int], channels: int):
  """Inverse of `patchify`: [B, gh·gw, p·p·C] -> [B, gh·p, gw·p, C]."""
  b, n, f = patches.shape
  gh, gw = grid
  p = patch_size
  if n != gh * gw or f != p * p * channels:
    raise ValueError(f"patches {patches.shape} do not fit grid {grid}, patch {p}, {channels} channels")
  x = patches.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, channels)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = False):
  """Fixed 2-D sine-cosine position embedding as in MAE: [gh·gw (+1), dim], float32.

  Token t = r·gw + c. The first half of the features encodes the column c and the second half the row r
  (the MAE code's meshgrid puts the width coordinate first); each half is [sin(pos·ω), cos(pos·ω)] with
  ω_k = 10000^(-k / (dim/4)), k < dim/4. With `cls_token` a zero row is prepended.
  """
  if dim % 4:
    raise ValueError(f"sincos position embedding needs dim divisible by 4, got {dim}")
  gh, gw = grid
  omega = 1.0 / 10000.0 ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim / 4.0))
  rows, cols = jnp.meshgrid(jnp.arange(gh, dtype=jnp.float32), jnp.arange(gw, dtype=jnp.float32), indexing="ij")

  def encode(pos):
    angles = pos.reshape(-1)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)

  emb = jnp.concatenate([encode(cols), encode(rows)], axis=1)
  if cls_token:
    emb = jnp.concatenate([jnp.zeros((1, dim), jnp.float32), emb], axis=0)
  return emb
