"""CRATE-α (Yang et al., "Scaling White-Box Transformers for Vision"): CRATE with an overcomplete ISTA block.

Each block, on tokens Z [B, N, d] (LayerNorm eps 1e-6, LS = optional LayerScale, DP = stochastic depth):

  Z½     = Z + DP(LS(MSSA(LN₁(Z))))                      MSSA as in CRATE, bias-free in and out projections
  Z_next = Z½ + DP(LS(ODL(LN₂(Z½))))                     residual, unlike the original CRATE
  ODL(x) = z₂ D₁ᵀ,  z₁ = ReLU(η x D − η λ),  z₂ = ReLU(z₁ − η (z₁ Dᵀ − x) D − η λ)

with two overcomplete dictionaries D, D₁ [d, 4d] (two ISTA steps from z₀ = 0, then decoding by D₁).
Stem: p×p convolution, class token, position embedding over [cls, patches] ("learn" or "sincos2d");
head: LayerNorm, then a linear layer on token 0 (the official model always reads token 0).

Intermediates sown into "intermediates": stem, with_posemb, layer{i}/{qkv, attn_out, after_attn_residual,
sparse_code (z₂), ista_out, output}, encoded, head_input.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers import remat as remat_lib, token_reduction
from effjax.layers.common import LN_EPS, DropPath, with_variants
from effjax.layers.crate import MSSA, check_posemb_length, mssa_tokens, reduce_tokens
from effjax.layers.patches import pair

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

VARIANTS = {  # the official decode_variant
    "Ti": dict(width=192, depth=12, num_heads=3),
    "S": dict(width=576, depth=12, num_heads=12),
    "B": dict(width=768, depth=12, num_heads=12),
    "L": dict(width=1024, depth=24, num_heads=16),
    "H": dict(width=1280, depth=32, num_heads=16),
}


def posemb_sincos_2d(h: int, w: int, width: int):
  """MoCo-v3 2-D sine-cosine embedding with a zero row for the class token: [1, 1 + h·w, width].

  Features are [sin(x ω), cos(x ω), sin(y ω), cos(y ω)] with x the column, y the row and
  ω_k = 10000^(-k / (width/4 − 1)), k < width/4.
  """
  if width % 4:
    raise ValueError(f"sincos2d position embedding needs width divisible by 4, got {width}")
  y, x = jnp.mgrid[:h, :w]
  omega = 1.0 / 10000.0 ** (jnp.arange(width // 4) / (width // 4 - 1))
  x = x.reshape(-1)[:, None] * omega[None]
  y = y.reshape(-1)[:, None] * omega[None]
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return jnp.concatenate([jnp.zeros((1, width)), pe], axis=0)[None].astype(jnp.float32)


class OvercompleteISTA(nn.Module):
  """Two ISTA steps with dictionary D [d, 4d] from z₀ = 0, decoded by D₁ [d, 4d]: [B, N, d] -> [B, N, d]."""
  eta: float = 0.1
  lmbda: float = 0.1
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    init = nn.initializers.kaiming_uniform()
    dictionary = self.param("D", init, (d, self.expansion * d), jnp.float32).astype(x.dtype)
    decoder = self.param("D1", init, (d, self.expansion * d), jnp.float32).astype(x.dtype)
    z1 = nn.relu(self.eta * (x @ dictionary) - self.eta * self.lmbda)
    z2 = nn.relu(z1 - self.eta * ((z1 @ dictionary.T - x) @ dictionary) - self.eta * self.lmbda)
    self.sow("intermediates", "sparse_code", z2)
    return z2 @ decoder.T


class Block(nn.Module):
  """One CRATE-α block; see the module docstring. [B, N, d] -> [B, N, d]; with `tokens` (token reduction),
  proportional attention, the `reduction` step before the ODL branch, and (Z, tokens) returned."""
  num_heads: int
  eta: float = 0.1
  lmbda: float = 0.1
  dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_scale: float | None = None
  impl: str = "auto"
  reduction: token_reduction.Step | None = None

  def _scale(self, name, y):
    if self.layer_scale is None:
      return y
    return y * self.param(name, nn.initializers.constant(self.layer_scale), (y.shape[-1],), jnp.float32).astype(y.dtype)

  @nn.compact
  def __call__(self, x, train=False, tokens=None):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads {self.num_heads}")
    mssa = MSSA(self.num_heads, d // self.num_heads, out_bias=False, dropout=self.dropout, impl=self.impl,
                kernel_init=nn.initializers.normal(0.02), name="mssa")
    y, w, cls_attn = mssa_tokens(mssa, nn.LayerNorm(LN_EPS, name="norm1")(x), train, tokens)
    self.sow("intermediates", "qkv", w)
    self.sow("intermediates", "attn_out", y)
    x = x + DropPath(self.drop_path_rate)(self._scale("ls1", y), train)
    self.sow("intermediates", "after_attn_residual", x)
    if tokens is not None:
      x, tokens = reduce_tokens(self, x, tokens, w, cls_attn, self.reduction, self.num_heads, True)
    y = OvercompleteISTA(self.eta, self.lmbda, name="ista")(nn.LayerNorm(LN_EPS, name="norm2")(x))
    self.sow("intermediates", "ista_out", y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = x + DropPath(self.drop_path_rate)(self._scale("ls2", y), train)
    self.sow("intermediates", "output", x)
    return x if tokens is None else (x, tokens)


class CRATEAlpha(nn.Module):
  """CRATE-α classifier: images [B, H, W, C] -> logits [B, num_classes]; build it with `Model(variant=...)`.

  drop_path_rate is the stochastic-depth rate of the last block (linearly increasing from 0 over depth);
  layer_scale is the LayerScale init value (None: no LayerScale); remat is "none", "full" or "dots".
  Official options: patch_size p or (ph, pw); num_classes None (or 0) returns the pre-logits [B, width]
  (token 0 after encoder_norm) and has no head; emb_head_bias=False drops the biases of the patch embedding
  and the head; post_norm=True normalises the input images as (x - mean) / std inside the model;
  final_drop is a dropout rate before the head. `reduction` (None or a mapping, see `token_reduction.schedule`)
  merges or prunes tokens in every block (ToMe or DiffRate; the class token, token 0, is never merged).
  """
  num_classes: int | None
  patch_size: int | tuple[int, int] = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  eta: float = 0.1
  lmbda: float = 0.1
  posemb: str = "learn"
  dropout: float = 0.0
  drop_path_rate: float = 0.0
  layer_scale: float | None = None
  remat: str = "none"
  impl: str = "auto"
  emb_head_bias: bool = True
  post_norm: bool = False
  mean: tuple = (0.485, 0.456, 0.406)
  std: tuple = (0.229, 0.224, 0.225)
  final_drop: float = 0.0
  reduction: dict | None = None

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"CRATE-α expects images [B, H, W, C], got shape {images.shape}")
    remat_lib.check(self.remat)
    p = pair(self.patch_size)
    if images.shape[1] % p[0] or images.shape[2] % p[1]:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by patch size {p}")
    if self.post_norm:
      images = (images - jnp.asarray(self.mean, images.dtype)) / jnp.asarray(self.std, images.dtype)
    x = nn.Conv(self.width, p, strides=p, padding="VALID", kernel_init=nn.initializers.kaiming_uniform(),
                use_bias=self.emb_head_bias, name="embedding")(images)
    self.sow("intermediates", "stem", x)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    cls = self.param("cls", nn.initializers.normal(1e-6), (1, 1, c), jnp.float32).astype(x.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)), x], axis=1)
    if self.posemb == "learn":
      check_posemb_length(self, h * w + 1)
      pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c), jnp.float32)
    elif self.posemb == "sincos2d":
      pos = posemb_sincos_2d(h, w, c)
    else:
      raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
    x = x + pos.astype(x.dtype)
    self.sow("intermediates", "with_posemb", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    block = remat_lib.remat(Block, self.remat)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    steps = token_reduction.schedule(self.reduction, self.depth, x.shape[1], True, "CRATE-α")
    tokens = token_reduction.start(steps, x)
    for i in range(self.depth):
      layer = block(self.num_heads, self.eta, self.lmbda, self.dropout, float(rates[i]), self.layer_scale,
                    self.impl, steps and steps[i], name=f"layer{i}")
      x, tokens = (layer(x, train), None) if steps is None else layer(x, train, tokens)
    token_reduction.finish(self, tokens, h * w + 1, c)
    self.sow("intermediates", "encoded", x)
    x = nn.LayerNorm(LN_EPS, name="encoder_norm")(x)[:, 0]
    self.sow("intermediates", "head_input", x)
    if not self.num_classes:
      return x
    x = nn.Dropout(self.final_drop, deterministic=not train)(x)
    return nn.Dense(self.num_classes, use_bias=self.emb_head_bias, kernel_init=nn.initializers.normal(0.02),
                    name="head")(x)


Model = with_variants(CRATEAlpha, VARIANTS, "CRATE-α")


def _flatten(tree, prefix=""):
  if not isinstance(tree, dict) and not hasattr(tree, "items"):
    return {prefix[:-1]: np.asarray(tree)}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}{k}/"))
  return out


def convert_official(state_dict) -> dict:
  """Official CRATE-α Flax params `state_dict` (nested dict, or flat {"a/b/c": array}) -> params of `Model`.

  The official tree: embedding (no bias with emb_head_bias=False), cls, pos_embedding (absent with
  posemb="sincos2d"),
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductSubspaceAttention_0/{proj, out}, LayerNorm_1,
  OvercompleteISTABlock_0/{D, D1}, ls1/ls1, ls2/ls2}, encoder_norm, head. Projections [d, H, p] and
  [H, p, d] are reshaped to [d, H·p] and [H·p, d]; head is absent with num_classes=None. Missing or
  unexpected keys raise ValueError.
  """
  flat = _flatten(state_dict)
  used = set()

  def get(key):
    if key not in flat:
      raise ValueError(f"official CRATE-α params are missing {key!r}")
    used.add(key)
    return flat[key]

  def ln(prefix):
    return {"scale": get(f"{prefix}/scale"), "bias": get(f"{prefix}/bias")}

  optional = lambda *keys: {k.split("/")[-1]: get(k) for k in keys if k in flat}
  out = {"embedding": {"kernel": get("embedding/kernel"), **optional("embedding/bias")}, "cls": get("cls"),
         "encoder_norm": ln("encoder_norm"), **optional("pos_embedding")}
  if "head/kernel" in flat:
    out["head"] = {"kernel": get("head/kernel"), **optional("head/bias")}
  depth = len({m.group(1) for k in flat if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
  for i in range(depth):
    pre = f"Transformer/encoderblock_{i}"
    attn = f"{pre}/MultiHeadDotProductSubspaceAttention_0"
    proj, proj_out = get(f"{attn}/proj/kernel"), get(f"{attn}/out/kernel")
    layer = {
        "norm1": ln(f"{pre}/LayerNorm_0"),
        "mssa": {"qkv": {"kernel": proj.reshape(proj.shape[0], -1)},
                 "out": {"kernel": proj_out.reshape(-1, proj_out.shape[-1])}},
        "norm2": ln(f"{pre}/LayerNorm_1"),
        "ista": {"D": get(f"{pre}/OvercompleteISTABlock_0/D"), "D1": get(f"{pre}/OvercompleteISTABlock_0/D1")},
    }
    for name in ("ls1", "ls2"):
      if f"{pre}/{name}/{name}" in flat:
        layer[name] = get(f"{pre}/{name}/{name}")
    out[f"layer{i}"] = layer
  left = sorted(set(flat) - used)
  if left:
    raise ValueError(f"official CRATE-α params have {len(left)} unexpected key(s): {', '.join(left[:5])}")
  return jax.tree.map(jnp.asarray, out)
