"""Dot-product attention: the one attention op every model calls.

    O = softmax(Q Kᵀ · scale + bias, restricted to visible pairs) V

Shapes follow Flax: q [batch, q_len, heads, head_dim], k/v [batch, kv_len, heads, head_dim]. Which pairs
are visible is the AND of a structured `pattern` (full, causal, sliding windows, dilated groups, FIT groups,
chunk-causal, windows and dilated groups over 2-D/3-D token grids; see `attention_patterns`), a key padding mask `key_mask` [B, Lk] and an arbitrary dense
`mask`. Query rows that see no key at all return 0.

`impl`:
  * "xla": the pure-XLA reference (materialises the [B, H, Lq, Lk] logits);
  * "pallas": the block-sparse flash-attention kernel of the current backend (Mosaic on TPU, Triton on GPU;
    the TPU kernel in interpret mode on CPU). It takes patterns and key masks; a dense `mask` is accepted
    only in key-mask form [B, 1, 1, Lk], `bias` not at all;
  * "pallas_tpu" / "pallas_gpu": that backend's kernel (interpret mode when not on its hardware);
  * "auto": "pallas" on TPU/GPU when the arguments fit the kernel, otherwise "xla" (always on CPU).
"""
import jax
import jax.numpy as jnp

from effjax.kernels import attention_patterns as ap
from effjax.kernels.flash_attention import flash_attention

IMPLS = ("auto", "xla", "pallas", "pallas_tpu", "pallas_gpu")


def attention_reference(q, k, v, *, mask=None, bias=None, scale=None, pattern=None, key_mask=None):
  """softmax(q kᵀ · scale + bias, masked) v, computed in float32.

  Args:
    q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (v may have its own last dim).
    mask: optional bool, broadcastable to [B, H, Lq, Lk]; True means "may attend".
    bias: optional additive logits bias, broadcastable to [B, H, Lq, Lk].
    scale: logit scale, default D^-1/2.
    pattern: optional `attention_patterns.Pattern` (or "full" / "causal").
    key_mask: optional bool [B, Lk]; False keys are never attended to.
  Returns:
    [B, Lq, H, Dv] in q's dtype; rows with no visible key are 0.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias
  visible = mask
  pattern = ap.as_pattern(pattern)
  if pattern.kind != "full":
    visible = _and(visible, jnp.asarray(pattern.mask(q.shape[1], k.shape[1])))
  if key_mask is not None:
    visible = _and(visible, key_mask[:, None, None, :])
  if visible is None:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    lowest = jnp.finfo(jnp.float32).min
    logits = jnp.where(visible, logits, lowest)
    # Rows with no visible key are zeroed; testing the (data-dependent) row max instead of any(visible)
    # keeps XLA from constant-folding large pattern masks.
    seen = jnp.max(logits, axis=-1, keepdims=True) > lowest
    weights = jnp.where(seen, jax.nn.softmax(logits, axis=-1), 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).astype(q.dtype)


def _and(a, b):
  return b if a is None else jnp.logical_and(a, b)


def _as_key_mask(mask, q, k):
  """A dense mask of shape [B|1, 1, 1, Lk] as a key mask [B, Lk]; None if it has another form."""
  if mask is None or mask.ndim != 4 or mask.shape[1:3] != (1, 1) or mask.shape[3] != k.shape[1]:
    return None
  return jnp.broadcast_to(mask[:, 0, 0, :], (q.shape[0], k.shape[1])).astype(bool)


def _kernel_backend(impl, dense_left):
  """The flash backend for `impl`, or None for the XLA reference."""
  platform = jax.default_backend()
  if impl == "xla" or (impl == "auto" and (platform not in ("tpu", "gpu") or dense_left)):
    return None
  if dense_left:
    raise ValueError(f"attention impl={impl!r} takes patterns and key masks only; a dense mask (other than "
                     "[B, 1, 1, Lk]) or a bias needs impl='xla'")
  if impl in ("pallas_tpu", "pallas_gpu"):
    return impl[len("pallas_"):]
  return "gpu" if platform == "gpu" else "tpu"


def attention(q, k, v, *, mask=None, bias=None, scale=None, impl="auto", pattern=None, key_mask=None,
              block_q=None, block_k=None):
  """Dispatches to an implementation; see `attention_reference` for the contract.

  block_q / block_k tune the kernel tiles (ignored by "xla").
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
  pattern = ap.as_pattern(pattern)
  as_keys = _as_key_mask(mask, q, k)
  if as_keys is not None:
    key_mask = as_keys if key_mask is None else key_mask & as_keys
    mask = None
  backend = _kernel_backend(impl, mask is not None or bias is not None)
  if backend is None:
    return attention_reference(q, k, v, mask=mask, bias=bias, scale=scale, pattern=pattern, key_mask=key_mask)
  return flash_attention(q, k, v, pattern=pattern, key_mask=key_mask, scale=scale, backend=backend,
                         interpret=jax.default_backend() != backend, block_q=block_q, block_k=block_k)
