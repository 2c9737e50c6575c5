"""Vision Transformer baseline (Dosovitskiy et al., 2021): patches -> pre-LN encoder -> linear head.

The baseline that exercises the trainer; small enough to reach >93% on the embedded MNIST subset in
minutes on a CPU. `convert_official` maps big_vision ViT params (and the older vision_transformer names).
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from effjax.layers import token_reduction
from effjax.layers.common import with_variants
from effjax.layers.remat import remat
from effjax.layers.transformer import EncoderBlock
from effjax.weights.mapping import OfficialStateDict

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
  "gap" (mean over tokens). `reduction` (None or a mapping, see `token_reduction.schedule`) merges or prunes
  tokens inside the blocks: ToMe or DiffRate, with proportional attention and a size-weighted "gap".
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
  reduction: dict | None = None

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
    steps = token_reduction.schedule(self.reduction, self.depth, x.shape[1], self.pool == "cls", "ViT")
    block = remat(EncoderBlock, self.remat)
    tokens = token_reduction.start(steps, x)
    for i in range(self.depth):
      layer = block(self.num_heads, self.mlp_dim, self.dropout, self.impl, steps and steps[i], self.pool == "cls",
                    name=f"block{i}")
      x, tokens = (layer(x, train), None) if steps is None else layer(x, train, tokens)
    size = token_reduction.finish(self, tokens, (h // p) * (w // p) + (self.pool == "cls"), self.width)
    x = token_reduction.pool(nn.LayerNorm(name="encoder_norm")(x), size, self.pool)
    return nn.Dense(self.num_classes, name="head")(x)


Model = with_variants(ViT, VARIANTS, "ViT")


_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/(.+)")
_BLOCK_RENAMES = (("LayerNorm_0/", "ln1/"), ("LayerNorm_1/", "ln2/"), ("LayerNorm_2/", "ln2/"),
                  ("MultiHeadDotProductAttention_0/", "attn/"), ("MultiHeadDotProductAttention_1/", "attn/"),
                  ("MlpBlock_0/Dense_0/", "mlp/fc1/"), ("MlpBlock_0/Dense_1/", "mlp/fc2/"),
                  ("MlpBlock_3/Dense_0/", "mlp/fc1/"), ("MlpBlock_3/Dense_1/", "mlp/fc2/"))
_OLD_POSEMB = "Transformer/posembed_input/pos_embedding"


def convert_official(state_dict) -> dict:
  """big_vision ViT params (flat "a/b/c" names, as effjax.weights reads a big_vision .npz) -> params of `Model`.

  Flax to Flax, so only names change: embedding, cls, pos_embedding, Transformer/encoderblock_{i}/{LayerNorm_0,
  MultiHeadDotProductAttention_0/{query, key, value, out}, LayerNorm_1, MlpBlock_0/Dense_{0, 1}},
  Transformer/encoder_norm, head -> block{i}/{ln1, attn, ln2, mlp/fc{1, 2}}, encoder_norm, head. The older
  google-research/vision_transformer names (MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3, and
  Transformer/posembed_input/pos_embedding with a first row for the class token) are accepted: that row is added to
  `cls`, the same sum. The official MLPs use the tanh-approximate GELU and this model the exact one, so logits
  differ slightly before fine-tuning. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  flat = {("encoder_norm", k): sd[f"Transformer/encoder_norm/{k}"] for k in ("scale", "bias")}
  flat.update({(m, k): sd[f"{m}/{k}"] for m in ("embedding", "head") for k in ("kernel", "bias")})
  old = _OLD_POSEMB in sd
  pos = sd[_OLD_POSEMB if old else "pos_embedding"]
  if "cls" in sd:
    cls = sd["cls"]
    flat[("cls",)], pos = (cls + pos[:, :1], pos[:, 1:]) if old else (cls, pos)
  flat[("pos_embedding",)] = pos
  for name in list(sd):
    m = _BLOCK.fullmatch(name)
    for theirs, ours in _BLOCK_RENAMES if m else ():
      if m.group(2).startswith(theirs):
        flat[(f"block{m.group(1)}", *(ours + m.group(2)[len(theirs):]).split("/"))] = sd[name]
  sd.check_all_used()  # names of no known block part are left unread
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))
