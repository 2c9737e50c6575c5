"""Vision Transformer baseline (Dosovitskiy et al., 2021): patches -> pre-LN encoder -> linear head.

The baseline that exercises the trainer; small enough to reach >93% on the embedded MNIST subset in
minutes on a CPU.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers.common import with_variants
from effjax.layers.remat import remat
from effjax.layers.transformer import EncoderBlock

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

VARIANTS = {  # the standard ViT sizes (Dosovitskiy et al.; Ti from DeiT)
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


class ViT(nn.Module):
  """ViT classifier; build it with `Model(variant="B/16", ...)` or from explicit fields.

  Input images [B, H, W, C]; output logits [B, num_classes]. Tokens: (H/p)·(W/p) patches of p×p pixels,
  linearly embedded, plus a learned position embedding; `pool` is "cls" (prepended class token) or
  "gap" (mean over tokens).
  """
  num_classes: int
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.0
  pool: str = "cls"
  remat: str = "none"
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"ViT expects images [B, H, W, C], got shape {images.shape}")
    _, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="embedding")(images)
    x = x.reshape(x.shape[0], -1, self.width)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:], jnp.float32).astype(x.dtype)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32).astype(x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    block = remat(EncoderBlock, self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dropout, self.impl, name=f"block{i}")(x, train)
    x = nn.LayerNorm(name="encoder_norm")(x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    return nn.Dense(self.num_classes, name="head")(x)


Model = with_variants(ViT, VARIANTS, "ViT")
