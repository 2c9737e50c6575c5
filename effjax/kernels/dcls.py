"""DCLS kernel construction: learnable-position taps interpolated into a dense dilated kernel.

Dilated Convolution with Learnable Spacings (Khalfaoui-Hassani et al., 2021/2023). Each (out, in) channel
pair has `kernel_count` taps with weight w_t, position P_t (one coordinate per kernel axis) and, for the
"gauss" and "max" versions, width σ_t. With d_{t,k}(x) = x_k - (P_{t,k} + dks_k // 2) the tap profile is

    v0 (bilinear, not normalised): X_t(x) = Π_k relu(1 - |d_{t,k}|), K(x) = Σ_t w_t · X_t(x)
    v1 (bilinear):   X_t(x) = Π_k relu(1 - |d_{t,k}|)
    max (triangle):  X_t(x) = Π_k relu(|σ_{t,k}| + 1 - |d_{t,k}|)
    gauss:           X_t(x) = exp(-½ Σ_k (d_{t,k} / (|σ_{t,k}| + 0.27))²)

and the kernel is  K(x) = Σ_t w_t · X_t(x) / (Σ_x' X_t(x') + 1e-7).

All three profiles are products of one factor per axis, so X_t and its normaliser factorise: the op builds
per-axis factors ([.., dks_a] vectors) and one contraction over taps, never the [.., dks, taps] tensor.

Conventions of the official code (kept for compatibility, see tests/data/dcls_kernels.npz):
* kernel layout [O, I/groups, *dks] (OIHW);
* P[k] moves taps along kernel axis n-1-k (P[0] = width for 2-D) but is centred with dks[k] // 2, so for
  non-square kernels taps may fall outside the grid and contribute nothing.
* v0 (the official `forward_v0`: floor, fractional part, taps at ⌊p⌋ and ⌊p⌋+1 — for integer x exactly
  relu(1 - |x - p|)) maps P[k] to other axes: 1-D P[0] -> 0; 2-D P[k] -> k; 3-D P[0] -> 0, P[1] -> 2,
  P[2] -> 1; still centred with dks[k] // 2, and taps that fall off the grid are dropped (no normaliser).

`impl="pallas"` runs the tap contraction (a batched [KC, R]ᵀ[KC, C] product per channel pair) in a Pallas
kernel that lowers for TPU and GPU (zero-padded to power-of-two tiles; interpret mode on CPU); the per-axis
factors and their gradients stay in XLA.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from effjax.kernels import dispatch

VERSIONS = ("v0", "v1", "gauss", "max")
_V0_AXES = {1: (0,), 2: (0, 1), 3: (0, 2, 1)}  # kernel axis moved by P[k] in the official forward_v0


def _axis_factors(P, sig, dks, version):
  """Per-axis normalised tap profiles: list over kernel axes a of [O, I, KC, dks_a]."""
  n = len(dks)
  factors = [None] * n
  for k in range(n):
    axis = _V0_AXES[n][k] if version == "v0" else n - 1 - k
    x = jnp.arange(dks[axis], dtype=P.dtype)
    d = x - (P[k] + dks[k] // 2)[..., None]
    if version in ("v0", "v1"):
      f = jax.nn.relu(1.0 - jnp.abs(d))
    elif version == "max":
      f = jax.nn.relu(jnp.abs(sig[k])[..., None] + 1.0 - jnp.abs(d))
    else:
      f = jnp.exp(-0.5 * (d / (jnp.abs(sig[k])[..., None] + 0.27)) ** 2)
    factors[axis] = f
  return factors


def _check(weight, P, sig, dks, version):
  if version not in VERSIONS:
    raise ValueError(f"unknown DCLS version {version!r}; expected one of {VERSIONS}")
  if P.shape != (len(dks),) + weight.shape:
    raise ValueError(f"P must be [{len(dks)}, O, I/g, kernel_count] = {(len(dks),) + weight.shape}, got {P.shape}")
  if version in ("gauss", "max") and (sig is None or sig.shape != P.shape):
    raise ValueError(f"DCLS version {version!r} needs SIG of P's shape {P.shape}, got "
                     f"{None if sig is None else sig.shape}")


def _scaled_factors(weight, P, sig, dks, version):
  """Factors with the normaliser (none for v0) and the tap weight folded into the first axis."""
  factors = _axis_factors(P, sig, dks, version)
  norm = 1.0 if version == "v0" else math.prod(f.sum(-1) for f in factors) + 1e-7          # [O, I, KC]
  factors[0] = factors[0] * (weight / norm)[..., None]
  return factors


def construct_kernel_reference(weight, P, sig, dilated_kernel_size, version):
  """Dense DCLS kernel [O, I/g, *dks] from weight [O, I/g, KC], P and SIG [n, O, I/g, KC] (XLA)."""
  dks = tuple(dilated_kernel_size)
  _check(weight, P, sig, dks, version)
  factors = _scaled_factors(weight, P, sig, dks, version)
  letters = "abcdefgh"[:len(dks)]
  spec = ",".join(f"oit{a}" for a in letters) + f"->oi{letters}"
  return jnp.einsum(spec, *factors)


# ------------------------------------------------------------------------- Pallas tap contraction (2-D)

def _contract_kernel(rows_ref, cols_ref, out_ref):
  """out[n] = rows[n]ᵀ cols[n] for a block of channel pairs: [KC, R]ᵀ [KC, C] -> [R, C]."""
  for n in range(out_ref.shape[0]):
    out_ref[n] = jnp.dot(rows_ref[n].T, cols_ref[n], preferred_element_type=jnp.float32).astype(out_ref.dtype)


def _contract_call(rows, cols, block, backend, interpret):
  n, kc, r = rows.shape
  c = cols.shape[-1]
  params = plgpu.CompilerParams(num_warps=4, num_stages=1) if backend == "gpu" else None
  return pl.pallas_call(
      _contract_kernel, grid=(n // block,), compiler_params=params,
      in_specs=[pl.BlockSpec((block, kc, r), lambda i: (i, 0, 0)), pl.BlockSpec((block, kc, c), lambda i: (i, 0, 0))],
      out_specs=pl.BlockSpec((block, r, c), lambda i: (i, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((n, r, c), rows.dtype), interpret=interpret)(rows, cols)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _contract(rows, cols, block, backend, interpret):
  return _contract_call(rows, cols, block, backend, interpret)


def _contract_fwd(rows, cols, block, backend, interpret):
  return _contract_call(rows, cols, block, backend, interpret), (rows, cols)


def _contract_bwd(block, backend, interpret, res, g):
  rows, cols = res
  # d rows[n] = cols[n] gᵀ ; d cols[n] = rows[n] g : the same contraction on transposed operands.
  d_rows = _contract_call(jnp.swapaxes(g, 1, 2), jnp.swapaxes(cols, 1, 2), block, backend, interpret)
  d_cols = _contract_call(g, jnp.swapaxes(rows, 1, 2), block, backend, interpret)
  return jnp.swapaxes(d_rows, 1, 2), jnp.swapaxes(d_cols, 1, 2)


_contract.defvjp(_contract_fwd, _contract_bwd)


def construct_kernel_pallas(weight, P, sig, dilated_kernel_size, version, *, block=8, backend=None,
                            interpret=None):
  """`construct_kernel_reference` with the tap contraction in a Pallas kernel (2-D kernels).

  backend: "tpu" (Mosaic) or "gpu" (Triton), default from the platform; interpret: default True off it.
  """
  dks = tuple(dilated_kernel_size)
  _check(weight, P, sig, dks, version)
  if len(dks) != 2:
    raise ValueError(f"the Pallas DCLS kernel builds 2-D kernels, got dilated_kernel_size {dks}")
  kernel = dispatch.resolve("dcls", "pallas", backend=backend, interpret=interpret)
  rows, cols = _scaled_factors(weight, P, sig, dks, version)      # [O, I, KC, R], [O, I, KC, C]
  o, i, kc = weight.shape
  n = o * i
  n_pad = -(-n // block) * block
  pow2 = lambda x: max(16, pl.next_power_of_2(x))   # Triton tiles; Mosaic takes them as full dims
  flat = lambda f: jnp.pad(f.reshape(n, kc, f.shape[-1]),
                           ((0, n_pad - n), (0, pow2(kc) - kc), (0, pow2(f.shape[-1]) - f.shape[-1])))
  out = _contract(flat(rows), flat(cols), block, kernel.backend, kernel.interpret)
  return out[:n, :dks[0], :dks[1]].reshape(o, i, *dks)


def construct_kernel(weight, P, sig, dilated_kernel_size, version, *, impl="auto"):
  """Dispatch (`dispatch.resolve`): "xla" (any rank), "pallas" (2-D kernels only), "auto"."""
  dks = tuple(dilated_kernel_size)
  unsupported = None if len(dks) == 2 else f"the Pallas DCLS kernel builds 2-D kernels, got {dks}"
  if dispatch.resolve("dcls", impl, unsupported=unsupported, pattern=version, dtype=weight.dtype) is not None:
    return construct_kernel_pallas(weight, P, sig, dks, version)
  return construct_kernel_reference(weight, P, sig, dks, version)


def clamp_positions(P, dilated_kernel_size):
  """Clamps P[k] to ±dks[k] // 2 (the official `clamp_parameters`, same per-index limits)."""
  lim = jnp.asarray([d // 2 for d in dilated_kernel_size], P.dtype).reshape((-1,) + (1,) * (P.ndim - 1))
  return jnp.clip(P, -lim, lim)
