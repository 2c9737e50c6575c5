"""Terminator (Zhang 2024, "HyperZ·Z·W Operator Connects Slow-Fast Networks for Full Context Interaction").

A stack of SFNE blocks without residual connections. Block i maps C_i channels to C_{i+1} = C_i·e_i
(`expansions`), and concatenates tiled outputs of earlier blocks (`skips`) into its bottleneck; the
global hyper-kernels W_g of every block are returned for the slow (local feedback) loss. After the last
block: global average pooling and a linear head.

Input x: [B, H, W, C] (2D, H == W: the global HyperZ·Z·W product is a matrix product over the spatial
axes, as in the official code) or [B, L, C] (1D, pixel sequences; the global product is a causal
convolution with a length-L context-dependent kernel). Output: logits [B, num_classes], plus the list of
global hyper-kernels [*spatial, C_i] when `return_hyper_kernels=True`.

The CIFAR configuration (the defaults: 3→12→36→72→144→288 channels, expansions 4,3,2,2,2, skips as
the official forward) has 1,336,855 parameters, identical to the official modules.

Normalisation statistics: see `effjax.layers.hyperzzw_norms` — `stats_mode="batch"` reproduces the
official batch dependence at evaluation; "accumulated" makes evaluation per-example.
"""
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from effjax.layers.common import torch_kaiming_normal
from effjax.layers.hyperzzw_blocks import SFNEBlock
from effjax.layers.remat import remat
from effjax.weights.mapping import dense_kernel

HEAD = r"^out_layer/"  # params a new task replaces: config.init_from.skip's default

OFFICIAL_SKIPS = ((), (), (0,), (1,), (2, 1))


class Model(nn.Module):
  """Terminator classifier.

  Attributes:
    num_classes: output classes.
    expansions: bottleneck factor per block (block count = len(expansions)).
    skips: per block, indices of earlier blocks whose outputs are concatenated (at most 2; the official
      wiring is ((), (), (0,), (1,), (2, 1))).
    global_layers: hidden layers of each block's global slow network (official (3, 2, 2, 2, 2)).
    dropout: channel-dropout rate per block.
    norm_groups: G-IBS groups; every block output width must be divisible by it.
    stats_mode, stats_momentum: "batch" (official) or "accumulated" statistics, see hyperzzw_norms.
    branch: extra FastMultiBranch options (slow-network widths, omega_0, local_sizes, impl).
    remat: "none", "full" or "dots" (see effjax.layers.remat), per block.
  """
  num_classes: int
  expansions: tuple = (4, 3, 2, 2, 2)
  skips: tuple = OFFICIAL_SKIPS
  global_layers: tuple = (3, 2, 2, 2, 2)
  dropout: tuple = (0.0, 0.05, 0.05, 0.05, 0.05)
  norm_groups: int = 12
  stats_mode: str = "batch"
  stats_momentum: float = 0.9
  branch: dict = None
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train=False, return_hyper_kernels=False):
    if x.ndim not in (3, 4):
      raise ValueError(f"Terminator expects [B, L, C] or [B, H, W, C], got shape {x.shape}")
    n = len(self.expansions)
    for name in ("skips", "global_layers", "dropout"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} blocks")
    for i, skip in enumerate(self.skips):
      if any(j >= i or j < 0 for j in skip):
        raise ValueError(f"block {i} may only concatenate outputs of earlier blocks, got {skip}")
    block_cls = remat(SFNEBlock, self.remat)

    outputs, hyper_kernels = [], []
    for i in range(n):
      branch = dict(self.branch or {}, global_layers=self.global_layers[i])
      x, hk = block_cls(self.expansions[i], self.dropout[i], self.norm_groups, branch, self.stats_mode,
                        self.stats_momentum, name=f"blocks_{i}")(x, tuple(outputs[j] for j in self.skips[i]), train)
      outputs.append(x)
      hyper_kernels.append(hk)
    pooled = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    logits = nn.Dense(self.num_classes, kernel_init=torch_kaiming_normal, bias_init=nn.initializers.zeros,
                      name="out_layer")(pooled)
    return (logits, hyper_kernels) if return_hyper_kernels else logits


_LIST_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def convert_official(state_dict):
  """Official PyTorch Terminator state dict (name -> array) -> params pytree of `Model`.

  Renames `blocks.i.fast_multi_branch...Kernel.linears.j.weight` to
  `blocks_i/fast_multi_branch/.../linears_j/kernel`, turns 1×1-conv / linear weights [out, in, (1, 1)]
  into Dense kernels [in, out] and position biases [1, 1, *size] into [*size]. Buffers (train_length,
  kernel_coords, initialized) are skipped. The blocks must be numbered 0..n-1 without gaps (n = the
  model's len(expansions); a parameter missing inside a block shows when the params are applied).
  """
  flat = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    if name.split(".")[-1] in ("train_length", "kernel_coords", "initialized"):
      continue
    path = _LIST_INDEX.sub(lambda m: "_" + m.group(1), name.replace(".Kernel.", "."))
    path = path.split(".")
    leaf = path[-1]
    if leaf == "weight":
      path[-1] = "kernel"
      value = dense_kernel(value)
    elif leaf in ("bias_p", "bias_pk", "fast_bias_p"):
      value = value.reshape(value.shape[2:])
    flat[tuple(path)] = value
  params = traverse_util.unflatten_dict(flat)
  blocks = sorted(int(k[len("blocks_"):]) for k in params if k.startswith("blocks_"))
  if not blocks or blocks != list(range(len(blocks))):
    raise ValueError(f"official state dict must hold blocks 0..n-1, got block indices {blocks}")
  return params
