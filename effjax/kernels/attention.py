"""Dot-product attention: the one attention op every model calls.

Shapes follow Flax: q [batch, q_len, heads, head_dim], k/v [batch, kv_len, heads, head_dim].
`impl` selects the implementation; "auto" is the XLA reference on CPU.
"""
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla")


def attention_reference(q, k, v, *, mask=None, bias=None, scale=None):
  """softmax(q kᵀ · scale + bias, masked) v, computed in float32.

  Args:
    q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (v may have its own last dim).
    mask: optional bool, broadcastable to [B, H, Lq, Lk]; True means "may attend".
    bias: optional additive logits bias, broadcastable to [B, H, Lq, Lk].
    scale: logit scale, default D^-1/2.
  Returns:
    [B, Lq, H, Dv] in q's dtype.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def attention(q, k, v, *, mask=None, bias=None, scale=None, impl="auto"):
  """Dispatches to an implementation; see `attention_reference` for the contract."""
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
  return attention_reference(q, k, v, mask=mask, bias=bias, scale=scale)
