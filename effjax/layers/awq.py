"""Weight-only int8 / int4 quantization of dense layers with activation-aware scaling (AWQ, Lin et al., 2024).

A dense layer y = x W + b (W [in, out], the Flax layout; a DenseGeneral kernel is flattened to [in, out]) is
stored as unsigned b-bit codes with a zero point per output channel and per group of g input channels
(g = in: one group, "per channel"), the quantizer of AWQ's `pseudo_quantize_tensor`:

    Δ = max(max W_g − min W_g, 1e-5) / (2^b − 1),   z = clip(−round(min W_g / Δ), 0, 2^b − 1)
    q = clip(round(W / Δ) + z, 0, 2^b − 1),          Q(W) = (q − z) Δ

Activation-aware scaling (AWQ §3.2, eq. 4–5): y ≈ (x diag(s)⁻¹) Q(diag(s) W) with per-input-channel scales
s = s_x^α / √(max s_x^α · min s_x^α), s_x = mean |x| per input channel over a calibration batch (clamped at
1e-4 before normalising), and α taken from the grid {0, 1/20, …, 19/20} as the first minimiser of the layer's
output error mean((x W − (x/s) Q(s W))²) — the official `_search_module_scale` with the layer as the inspected
module (the bias cancels). The official code folds 1/s into the previous op (LayerNorm, Linear or activation),
which forces one s on all layers sharing an input; here 1/s stays a per-input-channel multiply on x, so every
layer gets its own s and any dense layer can be quantized. α = 0 gives s = 1: plain round-to-nearest (RTN).

Inference: `quantized_apply` runs a Flax model with every dense layer named in the quantized tree replaced by
`qdot`, layers chosen by module path: impl "xla" dequantizes the codes, then one matmul (the reference path);
"pallas" dequantizes inside the kernel (effjax/kernels/quant_matmul.py).
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from effjax.kernels.quant_matmul import dequantize, quant_matmul
from effjax.layers import dense as dense_lib

DENSE_TYPES = (nn.Dense, nn.DenseGeneral, dense_lib.Dense)
SKIP = r"(^|/)(head|patch_proj)$"  # the classifier head and patch embedding stay float (AWQ: LM head, embeddings)
N_GRID = 20


def _check(bits, group_size, n_in, name="layer"):
  if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
    raise ValueError(f"AWQ weight quantization takes bits from 2 to 8 (int4, int8, ...), got {bits!r}")
  g = n_in if group_size in (0, -1) else group_size
  if not isinstance(g, int) or g < 1 or n_in % g:
    raise ValueError(f"group_size {group_size!r} does not divide the {n_in} input channels of {name} "
                     f"(0 = one group per output channel)")
  return g


def quantize(w, bits, group_size=0):
  """w [in, out] -> (codes [in, out], delta [in/g, out], zero [in/g, out]); group_size 0: g = in.

  Codes are uint4 for bits <= 4 (packed two to a byte where the backend packs), else uint8.
  """
  n_in, n_out = w.shape
  g = _check(bits, group_size, n_in)
  max_int = 2 ** bits - 1
  wg = w.astype(jnp.float32).reshape(n_in // g, g, n_out)
  lo, hi = wg.min(axis=1), wg.max(axis=1)
  delta = jnp.maximum(hi - lo, 1e-5) / max_int
  zero = jnp.clip(-jnp.round(lo / delta), 0, max_int)
  codes = jnp.clip(jnp.round(wg / delta[:, None]) + zero[:, None], 0, max_int)
  return codes.reshape(n_in, n_out).astype(jnp.uint4 if bits <= 4 else jnp.uint8), delta, zero


def activation_scale(x):
  """s_x: mean |x| per input channel over all rows, x [..., in] -> [in]."""
  return jnp.abs(x.astype(jnp.float32)).reshape(-1, x.shape[-1]).mean(axis=0)


def search_scale(w, x, bits, group_size=0, n_grid=N_GRID):
  """AWQ's grid search: (w [in, out], calibration inputs x [..., in]) -> (s [in], errors [n_grid]).

  errors[i] is the output error mean((x W − (x/s) Q(s W))²) at α = i/n_grid; s is the first minimiser's.
  """
  x = x.astype(jnp.float32).reshape(-1, x.shape[-1])
  w = w.astype(jnp.float32)
  ref = x @ w
  s_x = activation_scale(x)

  def scales(alpha):
    s = jnp.maximum(s_x ** alpha, 1e-4)
    return s / jnp.sqrt(s.max() * s.min())

  def error(alpha):
    s = scales(alpha)
    wq = dequantize(*quantize(w * s[:, None], bits, group_size)) / s[:, None]
    return jnp.mean(jnp.square(ref - x @ wq))

  alphas = jnp.arange(n_grid) / n_grid
  errors = jax.lax.map(error, alphas)
  return scales(alphas[jnp.argmin(errors)]), errors


def quantize_layer(w, x, bits, group_size=0, search=True):
  """One dense layer's quantized form {codes, delta, zero, inv_s}; `search` False: RTN (s = 1)."""
  s = search_scale(w, x, bits, group_size)[0] if search else jnp.ones((w.shape[0],), jnp.float32)
  codes, delta, zero = quantize(w.astype(jnp.float32) * s[:, None], bits, group_size)
  return {"codes": codes, "delta": delta, "zero": zero, "inv_s": 1.0 / s}


def qdot(x, layer, impl="xla"):
  """x [..., in] -> (x/s) Q(s W) [..., out] for a `quantize_layer` dict (effjax.kernels.quant_matmul: "xla"
  dequantizes, then one matmul; "pallas" dequantizes inside the kernel)."""
  return quant_matmul(x * layer["inv_s"].astype(x.dtype), layer["codes"], layer["delta"], layer["zero"], impl)


def _in_axes(module) -> int:
  """How many trailing input axes the layer contracts (DenseGeneral's `axis`; 1 for Dense)."""
  if isinstance(module, nn.DenseGeneral):
    axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
    if sorted(axis) != list(range(-len(axis), 0)) or module.batch_dims:
      raise ValueError(f"AWQ: {module.name} contracts axes {module.axis}; only trailing axes given as negative "
                       f"numbers are supported")
    return len(axis)
  return 1


def _features(module) -> tuple:
  return tuple(module.features) if isinstance(module.features, (tuple, list)) else (module.features,)


def _path(module) -> str:
  return "/".join(module.path)


def _dense_layers(fn, select):
  """Runs fn() with every dense layer's __call__ that `select(path)` accepts routed through `hook`."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, DENSE_TYPES) or not select(_path(module)):
      return next_fun(*args, **kwargs)
    return fn(module, args[0], next_fun, args, kwargs)
  return nn.intercept_methods(interceptor)


def calibrate(model, variables, *args, skip=SKIP, **kwargs):
  """{layer path: (kernel [in, out], inputs [rows, in])} for every dense layer that `skip` does not match, from
  one float forward pass model.apply(variables, *args, **kwargs)."""
  def forward(variables, args):
    found = {}

    def record(module, x, next_fun, a, kw):
      n = _in_axes(module)
      kernel = module.variables["params"]["kernel"]
      n_in = int(np.prod(kernel.shape[:n]))
      found[_path(module)] = (kernel.reshape(n_in, -1), x.reshape(-1, n_in))
      return next_fun(*a, **kw)

    with _dense_layers(record, lambda p: not re.search(skip, p)):
      model.apply(variables, *args, **kwargs)
    return found

  found = jax.jit(forward)(variables, args)
  if not found:
    raise ValueError(f"AWQ: no dense layer left to quantize in {type(model).__name__} (skip={skip!r})")
  return found


def awq_quantize(model, variables, *calib_args, bits, group_size=0, search=True, skip=SKIP, **calib_kwargs):
  """Quantizes every dense layer of `model` (but those matching `skip`) -> (variables without their kernels,
  {layer path: quantize_layer dict}). Scales are searched on one forward pass over calib_args (a calibration
  batch); group_size 0 = per output channel; search False = round-to-nearest."""
  _check(bits, 0, 1)
  found = calibrate(model, variables, *calib_args, skip=skip, **calib_kwargs)
  for path, (kernel, _) in found.items():
    _check(bits, group_size, kernel.shape[0], path)
  layer_fn = jax.jit(quantize_layer, static_argnums=(2, 3, 4))
  quantized = {p: layer_fn(k, x, bits, group_size, search) for p, (k, x) in found.items()}
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  kept = {k: v for k, v in flat.items() if not (k.endswith("/kernel") and k[:-len("/kernel")] in quantized)}
  return {**variables, "params": traverse_util.unflatten_dict(kept, sep="/")}, quantized


def quantized_apply(model, variables, quantized, *args, impl="xla", **kwargs):
  """model.apply(variables, *args, **kwargs) with the layers in `quantized` computed by `qdot` (+ their bias)."""
  def run(module, x, next_fun, a, kw):
    n = _in_axes(module)
    layer = quantized[_path(module)]
    y = qdot(x.reshape(x.shape[:x.ndim - n] + (-1,)), layer, impl)
    y = y.reshape(x.shape[:x.ndim - n] + _features(module))
    if module.use_bias:
      y = y + module.variables["params"]["bias"].astype(y.dtype)
    return y

  with _dense_layers(run, lambda p: p in quantized):
    return model.apply(variables, *args, **kwargs)
