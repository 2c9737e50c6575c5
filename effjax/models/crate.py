"""CRATE: white-box transformer classifier (Yu et al., "White-Box Transformers via Sparse Rate Reduction").

Every layer is one step of optimising the sparse rate reduction objective of the tokens Z [B, N, d]:

  Z½     = Z + MSSA(LN₁(Z))                                          (compression)
  MSSA(Z) = [U₁ … U_K] · concat_k( softmax(Wₖ Wₖᵀ / √p) Wₖ ) + b,    Wₖ = Z Uₖ  (one projection = q = k = v)
  Z_next = ReLU(x + η (x D − x Dᵀ D) − η λ),   x = LN₂(Z½)           (sparsification, one ISTA step)

with K heads of dimension p, a square dictionary D [d, d], η = 0.1, λ = 0.1 and no residual around the
ISTA step (the layer: `effjax.layers.crate.Layer`, shared with CRATE-α and CRATE-MAE).

Stem: patches (p1 p2 c order) -> LN -> Linear -> LN, a learned position embedding over [cls, patches],
then the layers, then LN -> Linear on the class token (or on the token mean with pool="gap").

Intermediates are sown into the "intermediates" collection (free unless that collection is mutable):
patch_embedding, transformer_input, layer{i}/{qkv, attn_out, after_attn_residual, after_ista},
transformer_output, pooled. `effjax/evaluators/coding_rate.py` reads layer{i}/qkv and after_ista.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.layers import remat as remat_lib, token_reduction
from effjax.layers.common import TORCH_LN_EPS, torch_default_init, with_variants
from effjax.layers.crate import SIZES, Layer, check_posemb_length, convert_layer
from effjax.layers.patches import patchify
from effjax.weights.mapping import OfficialStateDict

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

VARIANTS = SIZES  # the official CRATE_tiny/small/base/large


class CRATE(nn.Module):
  """CRATE classifier: images [B, H, W, C] -> logits [B, num_classes]; build it with `Model(variant=...)`.

  `head_dim` defaults to width / num_heads (as in the official variants); one head with head_dim == width
  has no attention output projection (as the official code). `patch_size` is p or (ph, pw). `pool` is "cls" (the class
  token) or "gap" (the token mean). `dropout` acts on the attention
  output projection, `emb_dropout` on the embedded tokens. `remat` is "none", "full" or "dots". `reduction`
  (None or a mapping, see `token_reduction.schedule`) merges or prunes tokens in every layer before its ISTA step
  (ToMe or DiffRate, with proportional attention and a size-weighted "gap").
  """
  num_classes: int
  patch_size: int | tuple[int, int] = 16
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  head_dim: int | None = None
  pool: str = "cls"
  eta: float = 0.1
  lmbda: float = 0.1
  dropout: float = 0.0
  emb_dropout: float = 0.0
  remat: str = "none"
  impl: str = "auto"
  reduction: dict | None = None

  @nn.compact
  def __call__(self, images, train=False):
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    remat_lib.check(self.remat)
    head_dim = self.head_dim or self.width // self.num_heads
    x = patchify(images, self.patch_size)
    x = nn.LayerNorm(TORCH_LN_EPS, name="patch_norm")(x)
    x = nn.Dense(self.width, kernel_init=torch_default_init, name="patch_proj")(x)
    x = nn.LayerNorm(TORCH_LN_EPS, name="embed_norm")(x)
    self.sow("intermediates", "patch_embedding", x)
    b, n, _ = x.shape
    cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, self.width), jnp.float32)
    check_posemb_length(self, n + 1)
    pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, n + 1, self.width), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width)), x], axis=1)
    x = x + pos.astype(x.dtype)
    self.sow("intermediates", "transformer_input", x)
    x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
    layer = remat_lib.remat(Layer, self.remat)
    steps = token_reduction.schedule(self.reduction, self.depth, n + 1, self.pool == "cls", "CRATE")
    tokens = token_reduction.start(steps, x)
    for i in range(self.depth):
      block = layer(self.num_heads, head_dim, self.eta, self.lmbda, self.dropout, self.impl,
                    reduction=steps and steps[i], class_token=self.pool == "cls", name=f"layer{i}")
      x, tokens = (block(x, train), None) if steps is None else block(x, train, tokens)
    size = token_reduction.finish(self, tokens, n + 1, self.width)
    self.sow("intermediates", "transformer_output", x)
    x = token_reduction.pool(x, size, self.pool)
    self.sow("intermediates", "pooled", x)
    x = nn.LayerNorm(TORCH_LN_EPS, name="head_norm")(x)
    return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)


Model = with_variants(CRATE, VARIANTS, "CRATE")


def convert_official(state_dict) -> dict:
  """Official `model/crate.py` CRATE state dict (names -> arrays; torch tensors accepted) -> params.

  Linear weights [out, in] are transposed to kernels [in, out]; the ISTA dictionary is used as is.
  A "module." prefix (DataParallel checkpoints) is stripped. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  depth = len({m.group(1) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
  params = {
      "patch_norm": sd.layer_norm("to_patch_embedding.1"),
      "patch_proj": sd.linear("to_patch_embedding.2"),
      "embed_norm": sd.layer_norm("to_patch_embedding.3"),
      "cls": sd["cls_token"],
      "pos_embedding": sd["pos_embedding"],
      "head_norm": sd.layer_norm("mlp_head.0"),
      "head": sd.linear("mlp_head.1"),
  }
  for i in range(depth):
    params[f"layer{i}"] = convert_layer(sd, f"transformer.layers.{i}")
  sd.check_all_used()
  return jax.tree.map(jnp.asarray, params)

