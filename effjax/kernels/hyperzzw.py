"""The HyperZ·Z·W operator (Zhang, 2024): hyper-kernels W from a slow network meet hidden activations Z.

Step 1 (elementwise, context-dependent kernel):   K = Z ⊙ W
Step 2 (filtering Z with K):
  * global branch, `global_mix(K, V)` — full-context product of K with a fast feature map V:
      2D [B, H, W, C] (H == W): per example and channel, the matrix product K[:, :, c] @ V[:, :, c] over
      the spatial axes, as in the official code (torch.matmul on [B, C, H, W]);
      1D [B, L, C]: the paper's global convolution of V with the length-L kernel K, causal
      (out[t] = Σ_{s≤t} K[t−s] V[s]), computed with an FFT of length 2L.
  * local branches, `local_conv(Z, kernel)` — depthwise convolution ("same" zero padding) of Z with a
    context-dependent hyper-kernel [k, (k,) C] shared over the batch.
  * `hyperzzw_2e(W, Z) = (Z ⊙ W) ⊙ Z`, the two-elementwise form used by the hyper-interaction gates.

  * `hyperzzw_global(W, Z, V) = (global_mix(Z ⊙ W, V), Z ⊙ W)`, both global steps in one fused kernel;
    V may hold m feature maps filtered by the same context ([.., m·C] channels), one kernel call for all.

`impl` follows `dispatch.resolve` (op "hyperzzw_global" for the global ops: the fused kernel of
`hyperzzw_pallas.py`, 2D maps only, the 1D FFT mix has no kernel; `local_conv` is `depthwise_conv`).
The XLA global mix carries a custom_vjp whose backward is written out (matrix products in 2D, FFT
correlations via the reference's VJP in 1D).
"""
import jax
import jax.numpy as jnp

from effjax.kernels import dispatch, hyperzzw_pallas
from effjax.kernels.depthwise_conv import depthwise_conv, depthwise_conv_reference


def hyperzzw_2e(hyper_kernel, z):
  """(Z ⊙ W) ⊙ Z with W broadcast against Z."""
  return z * hyper_kernel * z


def global_mix_reference(ctx, v):
  """Full-context product of the context-dependent kernel `ctx` with `v` (same shape).

  Args:
    ctx, v: [B, H, W, C] with H == W (2D), or [B, L, C] (1D).
  Returns:
    Same shape: 2D out[b,i,j,c] = Σ_k ctx[b,i,k,c] v[b,k,j,c];
    1D out[b,t,c] = Σ_{s≤t} ctx[b,t−s,c] v[b,s,c].
  """
  if ctx.shape != v.shape:
    raise ValueError(f"global_mix: kernel shape {ctx.shape} != input shape {v.shape}")
  if ctx.ndim == 4:
    if ctx.shape[1] != ctx.shape[2]:
      raise ValueError(f"global_mix 2D needs square maps (H == W), got {ctx.shape[1:3]}")
    return jnp.einsum("bikc,bkjc->bijc", ctx, v, preferred_element_type=jnp.float32).astype(v.dtype)
  if ctx.ndim == 3:
    length = ctx.shape[1]
    n = 2 * length
    spectrum = jnp.fft.rfft(ctx.astype(jnp.float32), n=n, axis=1) * jnp.fft.rfft(v.astype(jnp.float32), n=n, axis=1)
    return jnp.fft.irfft(spectrum, n=n, axis=1)[:, :length].astype(v.dtype)
  raise ValueError(f"global_mix expects [B, L, C] or [B, H, W, C], got shape {ctx.shape}")


@jax.custom_vjp
def _global_mix_xla(ctx, v):
  return global_mix_reference(ctx, v)


def _global_mix_fwd(ctx, v):
  return global_mix_reference(ctx, v), (ctx, v)


def _global_mix_bwd(residuals, g):
  ctx, v = residuals
  if ctx.ndim == 4:  # out = K @ V  ->  dK = g @ Vᵀ, dV = Kᵀ @ g
    d_ctx = jnp.einsum("bijc,bkjc->bikc", g, v, preferred_element_type=jnp.float32).astype(ctx.dtype)
    d_v = jnp.einsum("bikc,bijc->bkjc", ctx, g, preferred_element_type=jnp.float32).astype(v.dtype)
    return d_ctx, d_v
  _, vjp = jax.vjp(global_mix_reference, ctx, v)
  return vjp(g)


_global_mix_xla.defvjp(_global_mix_fwd, _global_mix_bwd)


def _kernel(impl, z, v):
  """The resolved fused kernel for z [B, *S, C], v [B, *S, m·C], or None for XLA."""
  unsupported = None
  if z.ndim != 4 or z.shape[1] != z.shape[2]:
    unsupported = f"the fused global kernel takes square 2-D maps [B, H, H, C], got {z.shape} (1-D is an FFT)"
  elif dispatch.platform() == "gpu" and (z.shape[1] < 16 or z.shape[1] & (z.shape[1] - 1)):
    unsupported = f"the Triton global kernel needs H = W a power of two >= 16, got {z.shape[1]}"
  elif v.shape[:-1] != z.shape[:-1] or v.shape[-1] % z.shape[-1]:
    unsupported = f"v {v.shape} must have z's maps {z.shape[:-1]} and a multiple of its {z.shape[-1]} channels"
  return dispatch.resolve("hyperzzw_global", impl, unsupported=unsupported, pattern=f"{z.ndim - 2}d", dtype=z.dtype)


def global_mix(ctx, v, *, impl="auto"):
  """Dispatches the global HyperZ·Z·W product; see `global_mix_reference` for the contract."""
  kernel = _kernel(impl, ctx, v)
  if kernel is None:
    return _global_mix_xla(ctx, v)
  return hyperzzw_pallas.hyperzzw_global_pallas(jnp.ones(ctx.shape[1:], ctx.dtype), ctx, v,
                                                backend=kernel.backend, interpret=kernel.interpret)[0]


def local_conv_reference(x, kernel):
  """Depthwise "same" convolution of x [B, *S, C] with one kernel [*k, C] per channel shared over the batch
  (odd k; cross-correlation, as torch): `depthwise_conv_reference`."""
  return depthwise_conv_reference(x, kernel)


def local_conv(x, kernel, *, impl="auto"):
  """The local HyperZ·Z·W convolution: `depthwise_conv` (its kernels and dispatch)."""
  return depthwise_conv(x, kernel, impl=impl)


def hyperzzw_global(hyper_kernel, z, v, *, impl="auto"):
  """Both global steps: K = Z ⊙ W, then global_mix(K, V_i) for each of the m maps V = [V_1 .. V_m].

  Args:
    hyper_kernel: W, z's shape or batch-shared z.shape[1:].
    z: [B, *S, C]; v: [B, *S, m·C] (channel block i is V_i).
  Returns:
    (out [B, *S, m·C], K [B, *S, C]).
  """
  kernel = _kernel(impl, z, v)
  if kernel is None:
    ctx = z * hyper_kernel
    return _global_mix_xla(jnp.tile(ctx, v.shape[-1] // z.shape[-1]), v), ctx
  return hyperzzw_pallas.hyperzzw_global_pallas(hyper_kernel, z, v, backend=kernel.backend,
                                                interpret=kernel.interpret)
