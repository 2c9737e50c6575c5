"""DclsConv: a convolution whose dense kernel is built by DCLS from learnable tap positions.

    y = conv(x, K(weight, P, SIG)) + bias,   K = effjax.kernels.dcls.construct_kernel (see there)

Cross-correlation as torch's F.conv2d (no kernel flip); inputs are channels-last [B, *spatial, C].
Parameters keep the official names and layouts, so official weights load unchanged:
weight [O, I/groups, kernel_count], P and SIG [n, O, I/groups, kernel_count], bias [O].

Positions must stay within ±dks // 2: after every optimiser update call `clamp_dcls_positions(params, dks)` (a
model's `param_constraint`, which the trainer applies after each update, does; see models/convnext.py).
`position_repulsion(P)` is the official ConvNeXt-dcls loss that keeps a kernel's taps apart (a model's
`param_penalty` adds it to the training loss).

Also the official variants with 1-D spacing learning: `DclsConvDense1d` (Dcls2_1d, Dcls3_1d: a dense kernel
over the leading axes whose last axis is learnable) and `Dcls2dK1d` (a 1-D DCLS kernel used as an H×1 or
1×W 2-D kernel). Every module takes the official `padding_mode` ("zeros", "reflect", "replicate",
"circular": the input is padded that way, then convolved without padding).
"""
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from effjax.kernels import dcls
from effjax.kernels.depthwise_conv import depthwise_conv

_SPATIAL = "DHW"
PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # -> jnp.pad


def _dimension_numbers(n):
  s = _SPATIAL[-n:] if n <= 3 else None
  if s is None:
    raise ValueError(f"DclsConv supports 1-3 spatial dims, got {n}")
  return (f"N{s}C", f"{s}IO", f"N{s}C")


def _torch_uniform(fan_in):
  """torch kaiming_uniform(a=√5) of the weight and the conv bias init: U(±1/√fan_in)."""
  bound = fan_in ** -0.5
  return lambda key, s: jax.random.uniform(key, s, jnp.float32, -bound, bound)


def _conv(x, kernel, padding, padding_mode, strides, groups):
  """Cross-correlation of x [B, *spatial, C_in] with kernel [O, I/g, *k] (official layout) -> [B, *spatial', O].

  padding: per-axis symmetric int (or one int), "SAME"/"VALID", or None (k // 2); padding_mode as in torch.
  """
  n = kernel.ndim - 2
  if padding_mode not in PADDING_MODES:
    raise ValueError(f"unknown padding_mode {padding_mode!r}; expected one of {list(PADDING_MODES)}")
  if isinstance(padding, str):
    if padding_mode != "zeros":
      raise ValueError(f"padding_mode={padding_mode!r} needs integer padding, got {padding!r}")
    pads = padding
  else:
    pad = [k // 2 for k in kernel.shape[2:]] if padding is None else padding
    pad = [pad] * n if isinstance(pad, (int, np.integer)) else list(pad)
    pads = [(p, p) for p in pad]
    if padding_mode != "zeros":
      x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode=PADDING_MODES[padding_mode])
      pads = "VALID"
  strides = (strides,) * n if isinstance(strides, int) else tuple(strides)
  if (groups == x.shape[-1] == kernel.shape[0] and kernel.shape[1] == 1 and set(strides) == {1}
      and all(k % 2 for k in kernel.shape[2:]) and pads == [(k // 2, k // 2) for k in kernel.shape[2:]]):
    # depthwise 'same': the depthwise op, whose CPU path scales with the kernel (lax's grouped conv does not)
    return depthwise_conv(x, jnp.moveaxis(kernel[:, 0], 0, -1).astype(x.dtype))
  kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2)).astype(x.dtype)                       # [*k, I/g, O]
  return jax.lax.conv_general_dilated(x, kernel, strides, pads, feature_group_count=groups,
                                      dimension_numbers=_dimension_numbers(n))


def init_positions(dks):
  """The official _DclsNd init of the positions P [n, ...]: N(0, 0.5²) clipped to ±dks // 2."""
  def init(key, s):
    lim = jnp.asarray([d // 2 for d in dks], jnp.float32).reshape((-1,) + (1,) * (len(s) - 1))
    return jnp.clip(0.5 * jax.random.normal(key, s), -lim, lim)
  return init


def _tap_params(module, shape, dks, version, weight_init, positions=None):
  """weight `shape` [O, I/g, KC]; P (and SIG for gauss/max) [n, *shape] with the official _DclsNd inits:
  P (`init_positions`; `positions` given: those, not a param of this module), SIG = 0.23 (gauss) or 0 (max)."""
  weight = module.param("weight", weight_init, shape)
  P = module.param("P", init_positions(dks), (len(dks),) + shape) if positions is None else positions
  if P.shape != (len(dks),) + shape:
    raise ValueError(f"positions of shape {P.shape} given for a DCLS kernel with P {(len(dks),) + shape}")
  sig = None
  if version in ("gauss", "max"):
    sig = module.param("SIG", nn.initializers.constant(0.23 if version == "gauss" else 0.0), (len(dks),) + shape)
  return weight, P, sig


def _check_groups(c_in, features, groups):
  if c_in % groups or features % groups:
    raise ValueError(f"channels in={c_in} and out={features} must be divisible by groups={groups}")


class DclsConv(nn.Module):
  """Convolution with learnable spacings.

  Attributes:
    features: output channels O.
    kernel_count: taps per (out, in) channel pair.
    dilated_kernel_size: dense kernel size per spatial axis (one int per axis).
    groups: feature groups (groups = input channels gives a depthwise convolution).
    version: "v0" (bilinear, unnormalised), "v1" (bilinear), "gauss" or "max" (triangle).
    padding: per-axis symmetric padding (int or tuple) or "SAME" / "VALID"; default dks // 2.
    padding_mode: "zeros", "reflect", "replicate" or "circular" (official names).
    strides: per-axis stride.
    use_bias: add a bias of shape [O].
    impl: kernel-construction implementation passed to `dcls.construct_kernel`.
    init_std: None: torch's Conv init of weight and bias (the DCLS layer's own); a float: weight ~ trunc N(0, σ²),
      bias 0 (the ConvNeXt-dcls models' _init_weights).
  """
  features: int
  kernel_count: int
  dilated_kernel_size: Sequence[int]
  groups: int = 1
  version: str = "gauss"
  padding: int | Sequence[int] | str | None = None
  padding_mode: str = "zeros"
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  impl: str = "auto"
  init_std: float | None = None

  @nn.compact
  def __call__(self, x, positions=None):
    """x [B, *spatial, C_in] -> [B, *spatial', features]; positions: P [n, O, I/g, KC] shared with other layers
    (the module then has no P of its own), or None."""
    dks = tuple(self.dilated_kernel_size)
    n = len(dks)
    if x.ndim != n + 2:
      raise ValueError(f"DclsConv with a {n}-D kernel expects [B, *{n} spatial, C], got shape {x.shape}")
    c_in = x.shape[-1]
    _check_groups(c_in, self.features, self.groups)
    shape = (self.features, c_in // self.groups, self.kernel_count)
    uniform = _torch_uniform(shape[1] * shape[2])
    w_init, b_init = (uniform, uniform) if self.init_std is None else (
        nn.initializers.truncated_normal(self.init_std), nn.initializers.zeros)
    weight, P, sig = _tap_params(self, shape, dks, self.version, w_init, positions)
    kernel = dcls.construct_kernel(weight, P, sig, dks, self.version, impl=self.impl)   # [O, I/g, *dks]
    y = _conv(x, kernel, self.padding, self.padding_mode, self.strides, self.groups)
    if self.use_bias:
      y = y + self.param("bias", b_init, (self.features,)).astype(y.dtype)
    return y


class DclsConvDense1d(nn.Module):
  """The official Dcls2_1d / Dcls3_1d: a kernel [O, I/g, *dense_kernel_size, dilated_kernel_size] whose last
  axis is a 1-D DCLS kernel learnt separately for every position of the dense leading axes.

  weight [O, I/g, *dense, KC], P and SIG [1, O, I/g, *dense, KC] (official names and layouts); versions
  "v1", "gauss", "max". Quirk kept: the official Dcls2_1d "gauss" widens by |σ| + 1.0 (Dcls3_1d: + 0.27).
  P is initialised U(±dks // 2), as the official _DclsN_Md. x [B, *spatial (len(dense) + 1), C_in].
  """
  features: int
  kernel_count: int
  dense_kernel_size: Sequence[int]
  dilated_kernel_size: int
  groups: int = 1
  version: str = "gauss"
  padding: int | Sequence[int] | str | None = None
  padding_mode: str = "zeros"
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    dense, dks = tuple(self.dense_kernel_size), int(self.dilated_kernel_size)
    if self.version not in ("v1", "gauss", "max"):
      raise ValueError(f"Dcls{len(dense) + 1}_1d supports versions v1, gauss, max; got {self.version!r}")
    if x.ndim != len(dense) + 3:
      raise ValueError(f"a {len(dense) + 1}-D kernel expects [B, *{len(dense) + 1} spatial, C], got {x.shape}")
    c_in = x.shape[-1]
    _check_groups(c_in, self.features, self.groups)
    shape = (self.features, c_in // self.groups, *dense, self.kernel_count)
    uniform = _torch_uniform(math.prod(shape[1:]))
    weight = self.param("weight", uniform, shape)
    P = self.param("P", lambda key, s: jax.random.uniform(key, s, jnp.float32, -(dks // 2), dks // 2), (1,) + shape)
    sig = None
    if self.version in ("gauss", "max"):
      sig = self.param("SIG", nn.initializers.constant(0.23 if self.version == "gauss" else 0.0), (1,) + shape)
      if self.version == "gauss" and len(dense) == 1:
        sig = jnp.abs(sig) + 0.73  # |σ| + 1.0 in the formula's |σ| + 0.27
    rows = math.prod(shape[1:-1])  # fold the dense axes into the input-channel axis: one 1-D kernel each
    flat = lambda a: a.reshape(a.shape[:-len(shape) + 1] + (rows, self.kernel_count))
    kernel = dcls.construct_kernel(flat(weight), flat(P), None if sig is None else flat(sig), (dks,), self.version,
                                   impl=self.impl)
    kernel = kernel.reshape(shape[:-1] + (dks,))                                           # [O, I/g, *dense, dks]
    y = _conv(x, kernel, self.padding, self.padding_mode, self.strides, self.groups)
    if self.use_bias:
      y = y + self.param("bias", uniform, (self.features,)).astype(y.dtype)
    return y


class Dcls2dK1d(nn.Module):
  """The official Dcls2dK1d: a 1-D DCLS kernel [O, I/g, dks] used as a 2-D kernel, along the height
  (flat_dim=0: [O, I/g, dks, 1]) or the width (flat_dim=1: [O, I/g, 1, dks]). x [B, H, W, C_in].

  weight [O, I/g, KC], P and SIG [1, O, I/g, KC]; versions "v0", "v1" (the official default), "gauss", "max".
  """
  features: int
  kernel_count: int
  dilated_kernel_size: int
  flat_dim: int = 0
  groups: int = 1
  version: str = "v1"
  padding: int | Sequence[int] | str | None = None
  padding_mode: str = "zeros"
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    if self.flat_dim not in (0, 1):
      raise ValueError(f"flat_dim must be 0 (kernel along H) or 1 (along W), got {self.flat_dim}")
    if x.ndim != 4:
      raise ValueError(f"Dcls2dK1d expects [B, H, W, C], got shape {x.shape}")
    dks = (int(self.dilated_kernel_size),)
    _check_groups(x.shape[-1], self.features, self.groups)
    shape = (self.features, x.shape[-1] // self.groups, self.kernel_count)
    uniform = _torch_uniform(shape[1] * shape[2])
    weight, P, sig = _tap_params(self, shape, dks, self.version, uniform)
    kernel_1d = dcls.construct_kernel(weight, P, sig, dks, self.version, impl=self.impl)   # [O, I/g, dks]
    kernel = jnp.expand_dims(kernel_1d, -1 - self.flat_dim)
    padding = self.padding
    if padding is None:
      padding = (self.dilated_kernel_size // 2, 0) if self.flat_dim == 0 else (0, self.dilated_kernel_size // 2)
    y = _conv(x, kernel, padding, self.padding_mode, self.strides, self.groups)
    if self.use_bias:
      y = y + self.param("bias", uniform, (self.features,)).astype(y.dtype)
    return y


def clamp_dcls_positions(params, dilated_kernel_size):
  """Clamps every DclsConv position array (a leaf named "P" beside a "weight") to ±dks // 2."""
  def walk(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: walk(v) for k, v in tree.items()}
    if "P" in out and "weight" in out and out["P"].shape[0] == len(dilated_kernel_size):
      out["P"] = dcls.clamp_positions(out["P"], dilated_kernel_size)
    return out
  return walk(dict(params))


def position_repulsion(P):
  """The repulsion between the taps of one DCLS layer's positions P [n, O, I/g, KC] (official ConvNeXt-dcls,
  utils.get_dcls_loss_rep, per layer): with p_a ∈ R^n the KC taps of one (out, in) kernel,

      R = mean over the O·I/g kernels and the KC(KC − 1)/2 pairs a < b of max(0, 1 − ‖p_a − p_b‖₂),

  i.e. taps closer than one pixel push each other apart. Coincident taps contribute 1 with a zero gradient (as
  torch.cdist). Returns a float32 scalar."""
  n, kc = P.shape[0], P.shape[-1]
  if kc < 2:
    raise ValueError(f"the repulsion between taps needs at least 2 taps per kernel, got P of shape {P.shape}")
  taps = jnp.moveaxis(P.astype(jnp.float32).reshape(n, -1, kc), 0, -1)      # [C, KC, n]
  d2 = jnp.sum(jnp.square(taps[:, :, None] - taps[:, None, :]), -1)          # [C, KC, KC]
  pairs = np.triu(np.ones((kc, kc), bool), 1)
  dist = jnp.where(d2 > 0, jnp.sqrt(jnp.where(d2 > 0, d2, 1.0)), 0.0)        # no NaN gradient at d = 0
  return jnp.sum(jnp.where(pairs, jax.nn.relu(1.0 - dist), 0.0)) / (taps.shape[0] * kc * (kc - 1) / 2)
