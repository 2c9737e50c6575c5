"""Dilated vision / sequence transformer: the D-Former encoder for 2-D images and 1-D sequences.

The same stages as `effjax.models.dformer` (`effjax.layers.dformer.Stage`: position conv, blocks alternating local
windows and dilated groups, patch merging between stages) on a token grid of rank len(patch_size):

  images [B, H, W, C]      with patch_size (p, p): Conv patch embedding -> grid (H/p, W/p)
  sequences [B, L, C]      with patch_size (p,):   Conv patch embedding -> grid (L/p,)
  token ids [B, L] (int)   with patch_size (1,) and vocab_size > 0: embedding table -> grid (L,)

then LayerNorm, mean over tokens, and a linear head: logits [B, num_classes]. A block pair (local window w,
dilated groups with S/w members) lets every token reach every other one at the cost of a window.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.layers.common import TORCH_LN_EPS
from effjax.layers.dformer import Stage

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default


class Model(nn.Module):
  """Hierarchical dilated-attention classifier.

  patch_size: one int per grid axis (its length sets the rank). depths / num_heads / intervals: one entry
  per stage; stage i works on width·2^i channels and ends with patch merging except the last.
  group_size: window shape of the local blocks and member counts of the dilated blocks (per axis).
  intervals: per stage, dilated blocks pad the grid to a multiple of it (1 = the grid must already tile).
  reduction: only None or method 'none': token merging / pruning (`effjax.layers.token_reduction`) is refused.
  """
  num_classes: int
  patch_size: tuple = (4, 4)
  width: int = 64
  depths: tuple = (2, 2)
  num_heads: tuple = (2, 4)
  group_size: tuple = (4, 4)
  intervals: tuple = (1, 1)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  vocab_size: int = 0
  remat: str = "none"
  impl: str = "auto"
  reduction: dict | None = None

  def _embed(self, x):
    rank = len(self.patch_size)
    if self.vocab_size:
      if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer) or tuple(self.patch_size) != (1,):
        raise ValueError(f"with vocab_size, inputs must be int token ids [B, L] and patch_size (1,); got "
                         f"{x.dtype} {x.shape} and patch_size {tuple(self.patch_size)}")
      return nn.Embed(self.vocab_size, self.width, name="token_embed")(x)
    if x.ndim != rank + 2:
      raise ValueError(f"patch_size {tuple(self.patch_size)} needs inputs [B, {rank} grid axes, C], got {x.shape}")
    if any(s % p for s, p in zip(x.shape[1:-1], self.patch_size)):
      raise ValueError(f"input grid {x.shape[1:-1]} is not divisible by patch_size {tuple(self.patch_size)}")
    return nn.Conv(self.width, tuple(self.patch_size), strides=tuple(self.patch_size), padding="VALID",
                   name="patch_embed_proj")(x)

  @nn.compact
  def __call__(self, x, train=False):
    if not len(self.depths) == len(self.num_heads) == len(self.intervals):
      raise ValueError(f"depths {self.depths}, num_heads {self.num_heads} and intervals {self.intervals} must "
                       "have one entry per stage")
    if dict(self.reduction or {}).get("method", "none") != "none":
      raise ValueError("dilated ViT cannot merge or prune tokens: its local windows, dilated groups and patch "
                       "merging need the full token grid")
    if len(self.group_size) != len(self.patch_size):
      raise ValueError(f"group_size {tuple(self.group_size)} and patch_size {tuple(self.patch_size)} differ in rank")
    x = nn.LayerNorm(epsilon=TORCH_LN_EPS, name="patch_embed_norm")(self._embed(x))
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    n = len(self.depths)
    for i in range(n):
      x = Stage(self.depths[i], self.num_heads[i], tuple(self.group_size), self.intervals[i], self.mlp_ratio,
                tuple(rates[sum(self.depths[:i]):sum(self.depths[:i + 1])]),
                resample="merge" if i < n - 1 else None, remat=self.remat, impl=self.impl,
                name=f"layers_{i}")(x, train)
    x = nn.LayerNorm(epsilon=TORCH_LN_EPS, name="norm")(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)
    return nn.Dense(self.num_classes, name="head")(x)
