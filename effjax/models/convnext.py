"""ConvNeXt (Liu et al., 2022), optionally with DCLS depthwise convolutions (Khalfaoui-Hassani et al., 2023).

Images [B, H, W, C] -> logits [B, num_classes]; as timm's `convnext_*`:

  stem      = LayerNorm(Conv_{p×p, stride p}(x))                                   (p = patch_size = 4)
  stage i   = [LayerNorm -> Conv_{2×2, stride 2}] (i > 0), then depths[i] blocks of width widths[i]
  block(x)  = x + DropPath(γ ⊙ Linear(GELU(Linear(LayerNorm(DWConv_{k×k}(x))))))   (hidden 4·dim)
  head      = Linear(LayerNorm(mean_{H,W} x))

LayerNorms use ε = 1e-6 (timm), GELU is the exact (erf) one, γ is the layer scale (init `ls_init_value`).
With `dcls=dict(kernel_count=K, dilated_kernel_size=D, version=...)` every depthwise k×k convolution becomes a
DCLS convolution (`effjax.layers.dcls.DclsConv`, groups = dim): K learnable-position taps spread over a D×D
kernel (the ConvNeXt-dcls models of the DCLS paper). As the official models, `dcls["shared_positions"]` makes the
positions P [2, dim, 1, K] one param per stage (`stage{i}_dcls_P`) that all its blocks use, and
`dcls["init_std"]` = σ initialises the DCLS weights ~ trunc N(0, σ²) with zero bias (official _init_weights).
Otherwise the depthwise convolution runs through `effjax.kernels.depthwise_conv`.

Intermediates sown in "intermediates": `stem` and `stage{i}` (channels-last).
`convert_official(state_dict)` maps a timm ConvNeXt state dict (`conv_mlp` True or False) to params;
`param_constraint(config)` keeps the DCLS positions inside their kernel after every update (the trainer applies it);
`param_penalty(config)` adds the official repulsion between DCLS taps to the training loss after a given epoch.
"""
import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from effjax.kernels import dcls as dcls_kernels
from effjax.kernels.depthwise_conv import depthwise_conv
from effjax.layers.common import LN_EPS, DropPath, with_variants
from effjax.layers.dcls import DclsConv, clamp_dcls_positions, init_positions, position_repulsion
from effjax.weights.mapping import OfficialStateDict

HEAD = r"^head/"  # params a new task replaces: config.init_from.skip's default

_trunc02 = nn.initializers.truncated_normal(0.02)

VARIANTS = {  # timm convnext_<name>
    "atto": dict(depths=(2, 2, 6, 2), widths=(40, 80, 160, 320)),
    "femto": dict(depths=(2, 2, 6, 2), widths=(48, 96, 192, 384)),
    "pico": dict(depths=(2, 2, 6, 2), widths=(64, 128, 256, 512)),
    "nano": dict(depths=(2, 2, 8, 2), widths=(80, 160, 320, 640)),
    "tiny": dict(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)),
    "small": dict(depths=(3, 3, 27, 3), widths=(96, 192, 384, 768)),
    "base": dict(depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024)),
    "large": dict(depths=(3, 3, 27, 3), widths=(192, 384, 768, 1536)),
}


def _layer_norm(name):
  return nn.LayerNorm(epsilon=LN_EPS, name=name)


def _dense(features, name):
  return nn.Dense(features, kernel_init=_trunc02, name=name)


class Block(nn.Module):
  """ConvNeXt block on x [B, H, W, dim] (see the module docstring)."""
  kernel_size: int = 7
  mlp_ratio: int = 4
  ls_init_value: float | None = 1e-6
  drop_path_rate: float = 0.0
  dcls: dict | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, train=False, positions=None):
    dim = x.shape[-1]
    shortcut = x
    if self.dcls is None:
      k = self.kernel_size
      w = self.param("kernel", _trunc02, (k, k, dim))
      b = self.param("bias", nn.initializers.zeros, (dim,))
      x = depthwise_conv(x, w.astype(x.dtype), impl=self.impl) + b.astype(x.dtype)
    else:
      d = self.dcls["dilated_kernel_size"]
      x = DclsConv(dim, self.dcls["kernel_count"], (d, d), groups=dim, version=self.dcls.get("version", "gauss"),
                   init_std=self.dcls.get("init_std"), impl=self.impl, name="conv_dw")(x, positions)
    x = _layer_norm("norm")(x)
    x = _dense(self.mlp_ratio * dim, "fc1")(x)
    x = _dense(dim, "fc2")(nn.gelu(x, approximate=False))
    if self.ls_init_value is not None:
      x = x * self.param("gamma", nn.initializers.constant(self.ls_init_value), (dim,)).astype(x.dtype)
    return shortcut + DropPath(self.drop_path_rate)(x, train)


class ConvNeXt(nn.Module):
  """ConvNeXt classifier (see the module docstring); `Model(variant="tiny", ...)` builds timm's variants."""
  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  widths: Sequence[int] = (96, 192, 384, 768)
  patch_size: int = 4
  kernel_size: int = 7
  mlp_ratio: int = 4
  ls_init_value: float | None = 1e-6
  drop_path_rate: float = 0.0
  dcls: dict | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, images, train=False):
    if images.ndim != 4:
      raise ValueError(f"ConvNeXt expects images [B, H, W, C], got shape {images.shape}")
    if len(self.depths) != len(self.widths):
      raise ValueError(f"depths {tuple(self.depths)} and widths {tuple(self.widths)} must have the same length")
    reduction = self.patch_size * 2 ** (len(self.widths) - 1)
    if images.shape[1] % reduction or images.shape[2] % reduction:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by the total stride "
                       f"{reduction}")
    p = self.patch_size
    x = nn.Conv(self.widths[0], (p, p), strides=(p, p), padding="VALID", kernel_init=_trunc02, name="stem_conv")(images)
    x = _layer_norm("stem_norm")(x)
    self.sow("intermediates", "stem", x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    for i, (depth, dim) in enumerate(zip(self.depths, self.widths)):
      if i > 0:
        x = _layer_norm(f"stage{i}_down_norm")(x)
        x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="VALID", kernel_init=_trunc02, name=f"stage{i}_down")(x)
      positions = None
      if self.dcls is not None and self.dcls.get("shared_positions", False):
        d = self.dcls["dilated_kernel_size"]
        positions = self.param(f"stage{i}_dcls_P", init_positions((d, d)), (2, dim, 1, self.dcls["kernel_count"]))
      for j in range(depth):
        x = Block(self.kernel_size, self.mlp_ratio, self.ls_init_value, rates.pop(0), self.dcls,
                  self.impl, name=f"stage{i}_block{j}")(x, train, positions)
      self.sow("intermediates", f"stage{i}", x)
    x = _layer_norm("head_norm")(jnp.mean(x, axis=(1, 2)))
    return _dense(self.num_classes, "head")(x)


Model = with_variants(ConvNeXt, VARIANTS, "ConvNeXt")


_OFFICIAL_NAMES = [  # the official ConvNeXt / ConvNeXt-DCLS repositories' names -> timm's
    (r"^downsample_layers\.0\.([01])\.", r"stem.\1."), (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d+)\.(\d+)\.pwconv([12])\.", r"stages.\1.blocks.\2.mlp.fc\3."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."), (r"^norm\.", "head.norm."), (r"^head\.", "head.fc.")]


def _timm_names(state_dict):
  """The state dict under timm's names (an official-repository file is renamed; a timm file is returned as is)."""
  names = {k[len("module."):] if k.startswith("module.") else k for k in state_dict}
  if "downsample_layers.0.0.weight" not in names:
    return state_dict
  out = {}
  for key, value in state_dict.items():
    key = key[len("module."):] if key.startswith("module.") else key
    for pattern, repl in _OFFICIAL_NAMES:
      key, n = re.subn(pattern, repl, key)
      if n:
        break
    out[key] = value
  return out


def convert_official(state_dict, shared_positions=None) -> dict:
  """timm ConvNeXt state dict (names -> arrays; torch tensors accepted) -> params of `Model`. A file of the
  official ConvNeXt or ConvNeXt-DCLS repository (downsample_layers / dwconv / pwconv names) is renamed first.

  DCLS positions: the official files repeat each stage's shared P under every block (`stages.i.j.dwconv.P`);
  with shared_positions (None: when every stage's copies are equal, as in the official files) they become one
  `stage{i}_dcls_P` (a stage whose copies differ is a ValueError), otherwise each block keeps its own P.

  Convolutions OIHW -> HWIO (the depthwise [C, 1, k, k] -> [k, k, C]; a DCLS depthwise convolution keeps its
  `weight`/`P`/`SIG` as they are), Linear or 1×1-conv MLP weights -> Dense kernels [in, out], norm weight ->
  scale. Missing or unexpected keys raise ValueError.
  """
  sd = OfficialStateDict(_timm_names(state_dict))
  norm = sd.layer_norm
  params = {"stem_conv": sd.conv("stem.0"), "stem_norm": norm("stem.1"), "head_norm": norm("head.norm"),
            "head": sd.linear("head.fc")}
  blocks = sorted({tuple(int(n) for n in k.split(".")[1:4:2])
                   for k in sd if k.startswith("stages.") and ".blocks." in k})
  for i in sorted({i for i, _ in blocks}):
    if i > 0:
      params[f"stage{i}_down_norm"] = norm(f"stages.{i}.downsample.0")
      params[f"stage{i}_down"] = sd.conv(f"stages.{i}.downsample.1")
  dcls_p = {(i, j): f"stages.{i}.blocks.{j}.conv_dw.P" for i, j in blocks if f"stages.{i}.blocks.{j}.conv_dw.P" in sd}
  stages = {i: [np.asarray(sd[k]) for (s, _), k in sorted(dcls_p.items()) if s == i] for i, _ in dcls_p}
  same = {i: all(np.array_equal(p[0], q) for q in p) for i, p in stages.items()}
  if shared_positions is None:
    shared_positions = bool(stages) and all(same.values())
  for i in stages if shared_positions else ():
    if not same[i]:
      raise ValueError(f"stage {i} has different DCLS positions per block; convert with shared_positions=False")
    params[f"stage{i}_dcls_P"] = stages[i][0]
  for i, j in blocks:
    pre = f"stages.{i}.blocks.{j}"
    block = {"norm": norm(f"{pre}.norm"), "fc1": sd.linear(f"{pre}.mlp.fc1"), "fc2": sd.linear(f"{pre}.mlp.fc2")}
    if f"{pre}.conv_dw.P" in sd:
      block["conv_dw"] = {k: sd[f"{pre}.conv_dw.{k}"] for k in ("weight", "P", "SIG", "bias")
                          if f"{pre}.conv_dw.{k}" in sd and not (k == "P" and shared_positions)}
    else:
      block["kernel"], block["bias"] = sd.depthwise(f"{pre}.conv_dw")
    if f"{pre}.gamma" in sd:
      block["gamma"] = sd[f"{pre}.gamma"]
    params[f"stage{i}_block{j}"] = block
  sd.check_all_used()
  return params


def param_constraint(config):
  """params -> params after every optimiser update (effjax.train.make_train_step applies it), or None: with
  config.optimizer.dcls_clamp = s > 0 every DCLS position is clamped to ±s // 2, as the official DCLS training loop
  does after each step."""
  s = config.optimizer.dcls_clamp
  return functools.partial(_clamp_positions, dks=(s, s)) if s > 0 else None


def _clamp_positions(params, dks):
  """Every DCLS position clamped to ±dks // 2: the blocks' own P and the stages' shared `stage{i}_dcls_P`."""
  params = clamp_dcls_positions(params, dks)
  return {k: dcls_kernels.clamp_positions(v, dks) if re.fullmatch(r"stage\d+_dcls_P", k) else v
          for k, v in params.items()}


def param_penalty(config):
  """(params, epoch) -> (term added to the training loss, metrics) for the trainer's step, or None.

  With config.model.dcls["repulsion_after_epoch"] = e (official ConvNeXt-dcls engine.py: e = 20): the repulsion
  R = mean over the DCLS position arrays (each stage's shared P, or every block's own) of
  `layers.dcls.position_repulsion`, logged as "dcls_repulsion" at every step, and R² added to the loss in the
  epochs after e (0-based epoch index > e: `loss + loss_rep ** 2 if epoch > 20`). Absent or None: no penalty."""
  dcls = config.model.get("dcls")
  after = None if dcls is None else dcls.get("repulsion_after_epoch")
  if after is None:
    return None

  def penalty(params, epoch):
    arrays = _positions(params)
    if not arrays:
      raise ValueError("config.model.dcls.repulsion_after_epoch is set but the params hold no DCLS positions")
    r = sum(position_repulsion(P) for P in arrays) / len(arrays)
    return jnp.where(epoch > after, jnp.square(r), 0.0), {"dcls_repulsion": r}
  return penalty


def _positions(params):
  """Every DCLS position array once: the stages' shared `stage{i}_dcls_P` and the blocks' own `conv_dw/P`."""
  shared = [v for k, v in sorted(params.items()) if re.fullmatch(r"stage\d+_dcls_P", k)]
  own = [b["conv_dw"]["P"] for k, b in sorted(params.items())
         if isinstance(b, dict) and "P" in b.get("conv_dw", {})]
  return shared + own
