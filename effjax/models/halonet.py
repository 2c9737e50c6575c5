"""HaloNet (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones") as timm
builds it in its ByobNet: halonet_h1, halonet26t, sehalonet33ts, halonet50ts, eca_halonext26ts.

Images [B, H, W, C] -> logits [B, num_classes]. BatchNorm ε = 1e-5 (torch momentum 0.1); activation `act` is
"relu" or "silu".

  stem     effjax.layers.resnet_blocks.stem: "deep_tiered" 3×3/2 (3·(w//4)) -> 3×3 (w) -> 3×3 (2w), w = stem_width, then
           a 3×3/2 max pool (stem_pool "max") or a stride-2 last convolution (stem_pool ""); "" = 7×7/2 conv + pool
  stage i  one block per letter of blocks[i]; the first has stride strides[i]; out = widths[i],
           mid = make_divisible(out · bottle_ratios[i], 8):
     "b"   Bottleneck: act(shortcut(x) + DropPath(BN(conv1×1(gate(act(BN(conv3×3/s(act(BN(conv1×1(x)))))))))))
           (layers/resnet_blocks; 3×3 in groups of `group_size` channels; gate = `gate` ("", "se", "eca") on the
           mid features)
     "a"   act(shortcut(x) + DropPath(BN(conv1×1(act(BN(HaloAttention/s(act(BN(conv1×1(x))))))))))
           shortcut = identity, or 1×1/s conv -> BN when the shape changes
  final    1×1 conv -> BN -> act to num_features (if num_features > 0)
  head     Linear(mean_{H,W} x)

HaloAttention (num_heads heads; `HaloAttention` docstring): the feature map is cut into b×b blocks
(b = block_size); the queries of a block attend to the (b + 2·halo_size)² window around it (zero padded).

`VARIANTS` holds timm's definitions. Intermediates sown: `stem`, `stage{0..3}`, `final` (after final_conv).
`convert_official(state_dict)` maps a timm HaloNet state dict to params, `convert_official_variables` to
{"params", "batch_stats"}.
"""
import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.kernels import dispatch
from effjax.kernels.attention import attention
from effjax.layers.common import DropPath, batch_norm, with_variants
from effjax.layers.resnet_blocks import Bottleneck, ConvBN, stem
from effjax.layers.squeeze_excite import make_divisible
from effjax.weights.mapping import BATCH_NORM_BUFFERS, OfficialStateDict, params_only

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

ACTS = {"relu": nn.relu, "silu": nn.silu}

_TIERED = dict(stem_type="deep_tiered", stem_width=32)
VARIANTS = {  # timm model names
    "halonet_h1": dict(blocks=("aaa", "aaa", "a" * 10, "aaa"), widths=(64, 128, 256, 512),
                       bottle_ratios=(1.0,) * 4, stem_type="", block_size=8, halo_size=3),
    "halonet26t": dict(blocks=("bb", "bb", "ba", "aa"), block_size=8, halo_size=2, **_TIERED),
    "sehalonet33ts": dict(blocks=("bb", "bba", "bba", "aa"), widths=(256, 512, 1024, 1536),
                          bottle_ratios=(0.25, 0.25, 0.25, 0.333), stem_pool="", act="silu", gate="se",
                          num_features=1280, block_size=8, halo_size=3, **_TIERED),
    "halonet50ts": dict(blocks=("bbb", "bbba", "bababa", "bab"), num_heads=(8, 4, 8, 8), act="silu", block_size=8,
                        halo_size=3, **_TIERED),
    "eca_halonext26ts": dict(blocks=("bb", "bb", "ba", "aa"), group_size=16, act="silu", gate="eca", block_size=8,
                             halo_size=2, dim_head=16, **_TIERED),
}


def _window_starts(n_blocks, block_size):
  return np.arange(n_blocks)[:, None] * block_size


class HaloAttention(nn.Module):
  """Blocked local self-attention with halos on x [B, H, W, C] -> [B, H/stride, W/stride, features].

  For one head, a query block of b'×b' positions (b' = b, or b/2 with stride 2 and an even b) and the keys and
  values of the w×w window around its b×b block (w = b + 2·halo_size, zero padding outside the map):

      logits(i, j) = (q_i · k_j) / √d + q_i · (R_h[y_j − y_i + w − 1] + R_w[x_j − x_i + w − 1])
      out_i = Σ_j softmax_j(logits(i, ·)) v_j

  (y, x) are the row and column inside the query block or the key window, d the query/key head width and
  R_h, R_w ∈ R^{(2w−1)×d} relative embeddings shared by the heads. Queries come from a 1×1 convolution with the
  stride (an even b) or the output is 2×2 average pooled (an odd b). The whole layer is one call of
  `effjax.kernels.attention.attention` on [B·blocks, b'², heads, d] queries and [B·blocks, w², heads, ·] keys and
  values, the relative logits given as its `bias` on the XLA path. Where the attention kernel runs (impl="pallas",
  or "auto" where it is validated) the bias, a sum of a row and a column term, is folded into the dot product
  instead, which the kernel takes without a bias input:

      q'_i = [q_i / √d, q_i·R_h[· − y_i + w − 1], q_i·R_w[· − x_i + w − 1]],   k'_j = [k_j, e(y_j), e(x_j)]

  with e(·) one-hot over the w rows / columns, so q'_i · k'_j = logits(i, j) exactly (scale 1, head width d + 2w).

  Head widths: d = dim_head or make_divisible(features, 8) // num_heads, values features // num_heads. The kv
  projection's output channels are ordered (head, [key d | value]) as in timm.
  """
  features: int
  num_heads: int = 8
  block_size: int = 8
  halo_size: int = 3
  stride: int = 1
  dim_head: int | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, height, width, _ = x.shape
    bs, heads = self.block_size, self.num_heads
    if height % bs or width % bs:
      raise ValueError(f"halo attention needs feature maps divisible by block_size {bs}, got {height}x{width}")
    if self.features % heads:
      raise ValueError(f"halo attention width {self.features} is not divisible by num_heads {heads}")
    if self.stride not in (1, 2):
      raise ValueError(f"halo attention stride must be 1 or 2, got {self.stride}")
    dqk = self.dim_head or make_divisible(self.features, 8, 0.9) // heads
    dv = self.features // heads
    pool = self.stride > 1 and bs % self.stride != 0
    q_stride = self.stride if self.stride > 1 and not pool else 1
    qb, win = bs // q_stride, bs + 2 * self.halo_size
    nh, nw = height // bs, width // bs
    n = b * nh * nw
    fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    q = nn.Dense(heads * dqk, use_bias=False, kernel_init=fan_in, name="q")(x[:, ::q_stride, ::q_stride])
    q = q.reshape(b, nh, qb, nw, qb, heads, dqk).transpose(0, 1, 3, 2, 4, 5, 6).reshape(n, qb, qb, heads, dqk)
    kv = nn.Dense(heads * (dqk + dv), use_bias=False, kernel_init=fan_in, name="kv")(x)
    h = self.halo_size
    kv = jnp.pad(kv, ((0, 0), (h, h), (h, h), (0, 0)))
    rows = _window_starts(nh, bs) + np.arange(win)                     # [nh, w] padded-map rows of each window
    cols = _window_starts(nw, bs) + np.arange(win)
    kv = kv[:, rows][:, :, :, cols]                                     # [B, nh, w, nw, w, C]
    kv = kv.transpose(0, 1, 3, 2, 4, 5).reshape(n, win * win, heads, dqk + dv)
    k, v = kv[..., :dqk], kv[..., dqk:]
    rel_init = nn.initializers.normal(dqk ** -0.5)
    rel = win - 1 + np.arange(win)[None, :] - np.arange(qb)[:, None]   # [b', w]: R index of (query, key)
    r_h = self.param("height_rel", rel_init, (2 * win - 1, dqk)).astype(q.dtype)[rel]
    r_w = self.param("width_rel", rel_init, (2 * win - 1, dqk)).astype(q.dtype)[rel]
    bias_h = jnp.einsum("nyxhd,ykd->nhyxk", q, r_h)                      # key row term   [n, heads, b', b', w]
    bias_w = jnp.einsum("nyxhd,xkd->nhyxk", q, r_w)                      # key column term
    # The folded form where a kernel runs ("pallas", or "auto" where the record validates it for this case).
    if dispatch.resolve("attention", self.impl, pattern="full", dtype=q.dtype, head_dim=dqk + 2 * win):
      rows = jnp.broadcast_to(np.eye(win, dtype=np.float32)[:, None, None, :], (win, win, heads, win))
      one_hot = jnp.concatenate([rows, rows.transpose(1, 0, 2, 3)], -1).reshape(1, win * win, heads, 2 * win)
      q = jnp.concatenate([q * dqk ** -0.5, bias_h.transpose(0, 2, 3, 1, 4), bias_w.transpose(0, 2, 3, 1, 4)], -1)
      k = jnp.concatenate([k, jnp.broadcast_to(one_hot.astype(k.dtype), (n,) + one_hot.shape[1:])], -1)
      out = attention(q.reshape(n, qb * qb, heads, dqk + 2 * win), k, v, scale=1.0, impl=self.impl)
    else:
      bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(n, heads, qb * qb, win * win)
      out = attention(q.reshape(n, qb * qb, heads, dqk), k, v, bias=bias, impl=self.impl)
    out = out.reshape(b, nh, nw, qb, qb, heads * dv).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, nh * qb, nw * qb, heads * dv)
    return nn.avg_pool(out, (2, 2), (2, 2)) if pool else out


class HaloBlock(nn.Module):
  """The "a" block of the module docstring: a bottleneck whose 3×3 convolution is halo attention."""
  features: int
  mid: int
  stride: int = 1
  num_heads: int = 8
  block_size: int = 8
  halo_size: int = 3
  dim_head: int | None = None
  act: str = "relu"
  drop_path_rate: float = 0.0
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False):
    act = ACTS[self.act]
    y = ConvBN(self.mid, 1, act=act, name="conv1")(x, train)
    y = HaloAttention(self.mid, self.num_heads, self.block_size, self.halo_size, self.stride, self.dim_head,
                      self.impl, name="attn")(y)
    y = act(batch_norm(train, "post_attn")(y))
    y = ConvBN(self.features, 1, relu=False, zero_scale=True, name="conv3")(y, train)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = ConvBN(self.features, 1, self.stride, relu=False, name="down")(x, train)
    return act(shortcut + DropPath(self.drop_path_rate)(y, train))


def _multiple(a, b):
  return a * b // math.gcd(a, b)


class HaloNet(nn.Module):
  """HaloNet classifier (see the module docstring); `Model(variant="halonet26t", ...)` builds timm's models."""
  num_classes: int
  blocks: Sequence[str] = ("bb", "bb", "ba", "aa")
  widths: Sequence[int] = (256, 512, 1024, 2048)
  strides: Sequence[int] = (1, 2, 2, 2)
  bottle_ratios: Sequence[float] = (0.25, 0.25, 0.25, 0.25)
  num_heads: Sequence[int] = (8, 8, 8, 8)
  block_size: int = 8
  halo_size: int = 3
  dim_head: int | None = None
  stem_type: str = "deep_tiered"
  stem_width: int = 32
  stem_pool: str = "max"
  act: str = "relu"
  gate: str = ""
  group_size: int = 0
  num_features: int = 0
  drop_path_rate: float = 0.0
  impl: str = "auto"

  def _check(self, images):
    if images.ndim != 4:
      raise ValueError(f"HaloNet expects images [B, H, W, C], got shape {images.shape}")
    n = len(self.blocks)
    if not (len(self.widths) == len(self.strides) == len(self.bottle_ratios) == len(self.num_heads) == n):
      raise ValueError(f"blocks, widths, strides, bottle_ratios and num_heads need one entry per stage, got "
                       f"{len(self.blocks)}, {len(self.widths)}, {len(self.strides)}, {len(self.bottle_ratios)}, "
                       f"{len(self.num_heads)}")
    if set("".join(self.blocks)) - set("ab"):
      raise ValueError(f"blocks {tuple(self.blocks)} may only hold 'b' (bottleneck) and 'a' (halo attention)")
    if self.act not in ACTS:
      raise ValueError(f"unknown act {self.act!r}; expected one of {sorted(ACTS)}")
    side, reduction = 1, 4   # side: what the image sides must be multiples of for every attention block
    for letters, stride in zip(self.blocks, self.strides):
      for j, letter in enumerate(letters):
        if letter == "a":
          side = _multiple(side, reduction * self.block_size)
        reduction *= stride if j == 0 else 1
    if images.shape[1] % side or images.shape[2] % side:
      raise ValueError(f"HaloNet needs image sides divisible by {side} (attention on {self.block_size}x"
                       f"{self.block_size} blocks of the feature maps), got {images.shape[1]}x{images.shape[2]}")

  @nn.compact
  def __call__(self, images, train=False):
    self._check(images)
    act = ACTS[self.act]
    x = stem(images, self.stem_type, self.stem_width, self.stem_pool, train, act)
    self.sow("intermediates", "stem", x)
    total, index = sum(len(s) for s in self.blocks), 0
    for i, letters in enumerate(self.blocks):
      out = self.widths[i]
      mid = make_divisible(out * self.bottle_ratios[i], 8, 0.9)
      if self.group_size and mid % self.group_size:
        raise ValueError(f"group_size {self.group_size} does not divide stage {i}'s bottleneck width {mid}")
      for j, letter in enumerate(letters):
        stride = self.strides[i] if j == 0 else 1
        rate = self.drop_path_rate * index / max(total - 1, 1)
        name = f"stage{i}_block{j}"
        if letter == "b":
          groups = mid // self.group_size if self.group_size else 1
          x = Bottleneck(mid, stride, gate=self.gate, drop_path_rate=rate, out_features=out, act=act, groups=groups,
                         gate_mid=True, impl=self.impl, name=name)(x, train)
        else:
          x = HaloBlock(out, mid, stride, self.num_heads[i], self.block_size, self.halo_size, self.dim_head, self.act,
                        rate, self.impl, name=name)(x, train)
        index += 1
      self.sow("intermediates", f"stage{i}", x)
    if self.num_features:
      x = ConvBN(self.num_features, 1, act=act, name="final_conv")(x, train)
      self.sow("intermediates", "final", x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)


Model = with_variants(HaloNet, VARIANTS, "HaloNet")


def convert_official_variables(state_dict) -> dict:
  """timm HaloNet (ByobNet) state dict (names -> arrays; torch tensors accepted) -> {"params", "batch_stats"}.

  Convolutions OIHW -> HWIO, the attention's 1×1 q / kv convolutions and SE 1×1 convolutions -> Dense kernels,
  BatchNorm weight/bias -> scale/bias and running_mean/var -> mean/var (num_batches_tracked dropped), ECA Conv1d
  [1, 1, k] -> [k], the relative embeddings as they are. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(state_dict)
  params, stats = {}, {}

  def put(tree, name, pair):
    tree[0][name], tree[1][name] = pair

  top = (params, stats)
  for i in range(3):
    if f"stem.conv{i + 1}.conv.weight" in sd:
      put(top, f"stem{i}", sd.conv_bn(f"stem.conv{i + 1}.conv", f"stem.conv{i + 1}.bn"))
  blocks = sorted({tuple(int(n) for n in k.split(".")[1:3]) for k in sd if k.startswith("stages.")})
  for i, j in blocks:
    pre = f"stages.{i}.{j}"
    block = ({}, {})
    for ours, theirs in (("conv1", "conv1_1x1"), ("conv2", "conv2_kxk"), ("conv3", "conv3_1x1"), ("down", "shortcut")):
      if f"{pre}.{theirs}.conv.weight" in sd:
        put(block, ours, sd.conv_bn(f"{pre}.{theirs}.conv", f"{pre}.{theirs}.bn"))
    if any(k.startswith(f"{pre}.attn.") for k in sd):
      block[0]["se"] = sd.gate(f"{pre}.attn")
    if f"{pre}.self_attn.q.weight" in sd:
      block[0]["attn"] = {"q": sd.linear(f"{pre}.self_attn.q", bias=False),
                          "kv": sd.linear(f"{pre}.self_attn.kv", bias=False),
                          **{n: sd[f"{pre}.self_attn.pos_embed.{n}"] for n in ("height_rel", "width_rel")}}
      put(block, "post_attn", sd.batch_norm(f"{pre}.post_attn"))
    put(top, f"stage{i}_block{j}", block)
  if "final_conv.conv.weight" in sd:
    put(top, "final_conv", sd.conv_bn("final_conv.conv", "final_conv.bn"))
  params["head"] = sd.linear("head.fc")
  sd.check_all_used(ignored=BATCH_NORM_BUFFERS)
  return {"params": params, "batch_stats": {k: v for k, v in stats.items() if v}}


convert_official = params_only(convert_official_variables)
