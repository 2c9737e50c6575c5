"""Pallas kernels for the HyperZ·Z·W operator; contracts in `effjax.kernels.hyperzzw` (the XLA reference).

* `hyperzzw_global_pallas(hyper_kernel, z, v)` fuses both global steps for 2-D maps:
      ctx = Z ⊙ W,   out[:, :, c] = ctx[:, :, c] @ V[:, :, c]
  per (batch, channel block): Z, W and V are read once, ctx is formed in VMEM / registers and written
  once (the caller needs it), and the product runs on the MXU / tensor cores. The backward kernel
  recomputes ctx and fuses  dctx = G Vᵀ + G_ctx,  dZ = dctx ⊙ W,  dW = dctx ⊙ Z,  dV = ctxᵀ G.
  Same result as `hyperzzw.hyperzzw_global` (returns (out, ctx)).
  V may carry m maps ([.., m·C] channels) filtered by the same ctx: Z and W are tiled to m·C channels
  and the gradients of the copies summed (autodiff of the tiling).

The kernels work channel-major ([B, C, H, W], one [H, W] matrix per channel); the wrapper transposes
from and to channels-last. TPU (Mosaic) processes `block_c` channels per grid step; GPU (Triton) one
channel per program and needs H, W powers of two >= 16. The 1-D (FFT) global mix has no kernel here.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu, triton as plgpu

from effjax.kernels import dispatch


def _dot(a, b, backend, trans_a=False, trans_b=False):
  if backend == "gpu":
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b)
  if trans_b:  # a @ bᵀ is a native MXU form
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  if trans_a:  # transpose in f32, then cast back for the MXU
    a = a.astype(jnp.float32).T.astype(a.dtype)
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _fwd_kernel(z_ref, w_ref, v_ref, out_ref, ctx_ref, *, backend):
  for c in range(z_ref.shape[0]):
    ctx = z_ref[c].astype(jnp.float32) * w_ref[c].astype(jnp.float32)
    ctx_ref[c] = ctx.astype(ctx_ref.dtype)
    v = v_ref[c]
    out_ref[c] = _dot(ctx.astype(v.dtype), v, backend).astype(out_ref.dtype)


def _bwd_kernel(z_ref, w_ref, v_ref, g_ref, gctx_ref, dz_ref, dw_ref, dv_ref, *, backend):
  for c in range(z_ref.shape[0]):
    z, w, v, g = z_ref[c], w_ref[c], v_ref[c], g_ref[c]
    ctx = z.astype(jnp.float32) * w.astype(jnp.float32)
    dctx = _dot(g, v, backend, trans_b=True) + gctx_ref[c].astype(jnp.float32)
    dz_ref[c] = (dctx * w.astype(jnp.float32)).astype(dz_ref.dtype)
    dw_ref[c] = dctx * z.astype(jnp.float32)
    dv_ref[c] = _dot(ctx.astype(g.dtype), g, backend, trans_a=True).astype(dv_ref.dtype)


def _call(kernel, ins, outs, block_c, backend, interpret):
  """Grid (B, C / block_c) over channel-major [B, C, H, W] arrays; a [C, H, W] input is batch-shared."""
  b, c, h, w = ins[0].shape
  spec = lambda a: pl.BlockSpec((None, block_c, h, w), lambda i, j: (i, j, 0, 0)) if a.ndim == 4 else \
      pl.BlockSpec((block_c, h, w), lambda i, j: (j, 0, 0))
  params = (plgpu.CompilerParams(num_warps=4, num_stages=1) if backend == "gpu" else
            pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")))
  return pl.pallas_call(
      functools.partial(kernel, backend=backend), grid=(b, c // block_c), in_specs=[spec(a) for a in ins],
      out_specs=[spec(o) for o in outs], out_shape=outs, compiler_params=params, interpret=interpret)(*ins)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused(z, w, v, block_c, backend, interpret):
  return _fused_fwd(z, w, v, block_c, backend, interpret)[0]


def _fused_fwd(z, w, v, block_c, backend, interpret):
  outs = [jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct(z.shape, z.dtype)]
  out, ctx = _call(_fwd_kernel, [z, w, v], outs, block_c, backend, interpret)
  return (out, ctx), (z, w, v)


def _fused_bwd(block_c, backend, interpret, res, cts):
  z, w, v = res
  g, gctx = cts
  outs = [jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct(z.shape, jnp.float32),
          jax.ShapeDtypeStruct(v.shape, v.dtype)]
  dz, dw, dv = _call(_bwd_kernel, [z, w, v, g.astype(v.dtype), gctx], outs, block_c, backend, interpret)
  if w.ndim == 3:  # batch-shared hyper-kernel
    dw = jnp.sum(dw, axis=0)
  return dz, dw.astype(w.dtype), dv


_fused.defvjp(_fused_fwd, _fused_bwd)


def hyperzzw_global_pallas(hyper_kernel, z, v, *, block_c=8, backend=None, interpret=None):
  """Fused global HyperZ·Z·W for 2-D maps.

  Args:
    hyper_kernel: W, [B, H, W, C] or batch-shared [H, W, C].
    z: [B, H, W, C] with H == W; v: [B, H, W, m·C].
    backend: "tpu" or "gpu" (default from the platform); interpret: default True off that platform.
  Returns:
    (out [B, H, W, m·C] = (Z ⊙ W)[:, :, c mod C] @ V[:, :, c] per channel, ctx = Z ⊙ W).
  """
  if z.ndim != 4 or v.shape[:-1] != z.shape[:-1] or v.shape[-1] % z.shape[-1] or z.shape[1] != z.shape[2]:
    raise ValueError(f"fused global HyperZ·Z·W needs z [B, H, H, C] and v [B, H, H, m·C], got {z.shape}, {v.shape}")
  if hyper_kernel.shape not in (z.shape, z.shape[1:]):
    raise ValueError(f"hyper-kernel {hyper_kernel.shape} must be z's shape {z.shape} or {z.shape[1:]}")
  kernel = dispatch.resolve("hyperzzw_global", "pallas", backend=backend, interpret=interpret)
  c, m = z.shape[-1], v.shape[-1] // z.shape[-1]
  zt, wt = (jnp.tile(a, (1,) * (a.ndim - 1) + (m,)) for a in (z, hyper_kernel))
  block_c = 1 if kernel.backend == "gpu" else (block_c if (m * c) % block_c == 0 else m * c)
  to_cm = lambda a: jnp.moveaxis(a, -1, -3)           # [.., H, W, C] -> [.., C, H, W]
  from_cm = lambda a: jnp.moveaxis(a, -3, -1)
  out, ctx = _fused(to_cm(zt), to_cm(wt), to_cm(v), block_c, kernel.backend, kernel.interpret)
  return from_cm(out), from_cm(ctx)[..., :c]
