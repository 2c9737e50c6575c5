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

Each op has a pure-XLA reference and `impl` dispatch: "xla"; "pallas" (the kernels of
`hyperzzw_pallas.py`, interpret mode off TPU/GPU; the 1D FFT global mix has no kernel and stays on XLA);
"auto" = Pallas on TPU (and on GPU for the 2D global mix), XLA elsewhere. `global_mix` carries a
custom_vjp whose backward is written out (matrix products in 2D, FFT correlations via the reference's
VJP in 1D), so a Pallas forward can replace the XLA one without changing the gradient contract.
"""
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "pallas")


def _check_impl(impl):
  if impl not in IMPLS:
    raise ValueError(f"unknown hyperzzw impl {impl!r}; expected one of {IMPLS}")


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


def _use_pallas(impl, platforms):
  _check_impl(impl)
  return impl == "pallas" or (impl == "auto" and jax.default_backend() in platforms)


def global_mix(ctx, v, *, impl="auto"):
  """Dispatches the global HyperZ·Z·W product; see `global_mix_reference` for the contract."""
  if _use_pallas(impl, ("tpu", "gpu")) and ctx.ndim == 4:
    from effjax.kernels import hyperzzw_pallas
    return hyperzzw_pallas.global_mix_pallas(ctx, v)
  return _global_mix_xla(ctx, v)


def local_conv_reference(x, kernel):
  """Depthwise "same" convolution of x with one kernel per channel, shared over the batch.

  Args:
    x: [B, L, C] or [B, H, W, C].
    kernel: [k, C] or [k, k, C] (odd k), matching x's rank.
  Returns:
    x's shape; out[b, p, c] = Σ_o kernel[o, c] x[b, p + o − (k−1)/2, c] (cross-correlation, as torch).
  """
  spatial = x.ndim - 2
  if kernel.ndim != spatial + 1 or kernel.shape[-1] != x.shape[-1]:
    raise ValueError(f"local_conv: kernel {kernel.shape} does not match input {x.shape} "
                     f"(expected [k]*{spatial} + [{x.shape[-1]}])")
  if any(k % 2 == 0 for k in kernel.shape[:-1]):
    raise ValueError(f"local_conv: kernel sizes must be odd, got {kernel.shape[:-1]}")
  channels = x.shape[-1]
  dims = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[spatial]
  return jax.lax.conv_general_dilated(
      x, kernel[..., None, :].astype(x.dtype), window_strides=(1,) * spatial,
      padding=[((k - 1) // 2, (k - 1) // 2) for k in kernel.shape[:-1]],
      dimension_numbers=dims, feature_group_count=channels)


def local_conv(x, kernel, *, impl="auto"):
  """Dispatches the local HyperZ·Z·W convolution; see `local_conv_reference`."""
  if _use_pallas(impl, ("tpu",)):
    from effjax.kernels import hyperzzw_pallas
    return hyperzzw_pallas.local_conv_pallas(x, kernel)
  return local_conv_reference(x, kernel)


def hyperzzw_global(hyper_kernel, z, v, *, impl="auto"):
  """Both global steps: K = Z ⊙ W, then global_mix(K, V). Returns (out, K)."""
  ctx = z * hyper_kernel
  return global_mix(ctx, v, impl=impl), ctx
