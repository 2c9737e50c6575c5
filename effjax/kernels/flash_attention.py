"""Block-sparse flash attention: layout, tile plan, custom_vjp; the kernels live in the backend modules.

    O = softmax(Q Kᵀ · scale, masked by the pattern and key mask) V     (online softmax, FlashAttention-2)

The wrapper puts tokens in kernel order (sorting by pattern coordinate, which makes dilated groups
contiguous), pads the lengths to block multiples, moves heads next to batch ([B, H, L, D]) and runs the
backend over the tiles of `attention_patterns.tile_plan` only. The backward pass recomputes the tile
probabilities from the saved log-sum-exp (LSE) and runs one dQ and one dK/dV kernel over the same plan.

Query rows with no visible key return 0 (and 0 gradients).
"""
import jax
import jax.numpy as jnp
import numpy as np

from effjax.kernels import attention_patterns as ap
from effjax.kernels.dispatch import BACKENDS


def _backend(name):
  if name == "tpu":
    from effjax.kernels import flash_attention_tpu as mod
  elif name == "gpu":
    from effjax.kernels import flash_attention_gpu as mod
  else:
    raise ValueError(f"unknown flash attention backend {name!r}; expected one of {BACKENDS}")
  return mod


def _to_kernel(x, perm, l_pad):
  """[B, L, H, D] -> [B, H, L_pad, D] in kernel token order."""
  if perm is not None:
    x = jnp.take(x, perm, axis=1)
  x = jnp.pad(x, ((0, 0), (0, l_pad - x.shape[1]), (0, 0), (0, 0)))
  return x.transpose(0, 2, 1, 3)


def _from_kernel(x, perm, length):
  """Inverse of `_to_kernel`: [B, H, L_pad, D] -> [B, L, H, D]."""
  x = x.transpose(0, 2, 1, 3)[:, :length]
  if perm is not None:
    x = jnp.take(x, np.argsort(perm), axis=1)
  return x


def _core(mod, plan, scale, bounds, interpret):
  """The custom_vjp kernel call on kernel-layout arrays, closed over the static plan."""
  qc, kc = plan.q_coord, plan.k_coord
  kw = dict(scale=scale, bounds=bounds, interpret=interpret)

  @jax.custom_vjp
  def core(q, k, v, km):
    return mod.forward(q, k, v, km, qc, kc, plan, **kw)[0]

  def fwd(q, k, v, km):
    o, lse = mod.forward(q, k, v, km, qc, kc, plan, **kw)
    return o, (q, k, v, km, o, lse)

  def bwd(res, do):
    q, k, v, km, o, lse = res
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # [B, H, Lq_pad]
    dq, dk, dv = mod.backward(q, k, v, km, qc, kc, lse, delta, do, plan, **kw)
    return dq, dk, dv, None

  core.defvjp(fwd, bwd)
  return core


def flash_attention(q, k, v, *, pattern=None, key_mask=None, scale=None, backend="tpu", interpret=False,
                    block_q=None, block_k=None):
  """Pattern attention with a block-sparse Pallas kernel.

  Args:
    q: [B, Lq, H, D]; k: [B, Lk, H, D]; v: [B, Lk, H, Dv].
    pattern: an `attention_patterns.Pattern` (or "full"/"causal"/None).
    key_mask: optional bool [B, Lk]; False keys are never attended to.
    scale: logit scale, default D^-1/2.
    backend: "tpu" (Mosaic) or "gpu" (Triton).
    interpret: False, True, or `pltpu.InterpretParams(...)` (TPU backend) to run on CPU.
    block_q, block_k: tile sizes (defaults per backend).
  Returns:
    [B, Lq, H, Dv] in q's dtype.
  """
  mod = _backend(backend)
  pattern = ap.as_pattern(pattern)
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"flash attention expects [B, L, H, D] arrays, got q {q.shape}, k {k.shape}, v {v.shape}")
  b, lq, h, d = q.shape
  if k.shape[:3] != (b, k.shape[1], h) or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
    raise ValueError(f"incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
  lk = k.shape[1]
  if key_mask is not None and key_mask.shape != (b, lk):
    raise ValueError(f"key_mask must be [B, Lk] = {(b, lk)}, got {key_mask.shape}")
  bq, bk = mod.default_blocks(lq, lk, d)
  bq, bk = block_q or bq, block_k or bk
  plan = ap.tile_plan(pattern, lq, lk, bq, bk)
  scale = d ** -0.5 if scale is None else float(scale)
  km = None
  if key_mask is not None:
    km = key_mask if plan.k_perm is None else jnp.take(key_mask, plan.k_perm, axis=1)
    km = jnp.pad(km.astype(jnp.int32), ((0, 0), (0, plan.lk_pad - lk)))
  core = _core(mod, plan, scale, pattern.bounds(), interpret)
  o = core(_to_kernel(q, plan.q_perm, plan.lq_pad), _to_kernel(k, plan.k_perm, plan.lk_pad),
           _to_kernel(v, plan.k_perm, plan.lk_pad), km)
  return _from_kernel(o, plan.q_perm, lq)
