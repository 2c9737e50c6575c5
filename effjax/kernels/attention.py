"""Dot-product attention: the one attention op every model calls.

    O = softmax(Q Kᵀ · scale + bias, restricted to visible pairs) V

Shapes follow Flax: q [batch, q_len, heads, head_dim], k/v [batch, kv_len, heads, head_dim]. Which pairs
are visible is the AND of a structured `pattern` (full, causal, sliding windows, dilated groups, FIT groups,
chunk-causal, windows and dilated groups over 2-D/3-D token grids; see `attention_patterns`), a key padding
mask `key_mask` [B, Lk] and an arbitrary dense `mask`. Query rows that see no key at all return 0.

`impl` ("auto" | "xla" | "pallas", resolved by `dispatch.resolve`):
  * "xla": XLA. On GPU, `jax.nn.dot_product_attention` (cuDNN's fused kernel) for bf16/f16 full or
    causal attention without masks; patterns that split tokens into equal groups (dilated, grouped, grid
    windows and dilated groups on divisible grids) as dense attention per group after a gather; sliding
    windows on the gathered band of keys of each query block ([B, H, Lq, block + left + right] logits);
    causal and chunk-causal attention one query block at a time (a checkpointed lax.map, [B, H, block, Lk]
    logits live at once); anything else as the reference (materialises the [B, H, Lq, Lk] logits).
  * "pallas": the block-sparse flash-attention kernel (`flash_attention`; Mosaic on TPU, Triton on GPU,
    the TPU kernel in interpret mode on CPU). It takes patterns and key masks; a dense `mask` only in
    key-mask form [B, 1, 1, Lk]; a `bias` or another dense mask raises.
  * "auto": the kernel where the arguments fit it and it is recorded as validated, else "xla".
"""
import jax
import jax.numpy as jnp
import numpy as np

from effjax.kernels import attention_patterns as ap, dispatch
from effjax.kernels.flash_attention import flash_attention


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


def _cudnn_fits(q, k, v, pattern, mask, bias, key_mask):
  """Whether cuDNN's fused attention (through jax.nn.dot_product_attention) computes this call on GPU."""
  causal = pattern.kind == "causal" and q.shape[1] == k.shape[1]
  return (dispatch.platform() == "gpu" and mask is None and bias is None and key_mask is None
          and (pattern.kind == "full" or causal) and q.dtype in (jnp.bfloat16, jnp.float16)
          and k.dtype == v.dtype == q.dtype and v.shape[-1] == q.shape[-1] == k.shape[-1]
          and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


def _softmax_av(logits, visible, v):
  """softmax over the last axis restricted to `visible` (rows with none give 0), times v; f32 logits."""
  lowest = jnp.finfo(jnp.float32).min
  logits = jnp.where(visible, logits, lowest)
  seen = jnp.max(logits, axis=-1, keepdims=True) > lowest
  return jnp.where(seen, jax.nn.softmax(logits, axis=-1), 0.0).astype(v.dtype)


def _pad_to(x, n, axis=1):
  return jnp.pad(x, [(0, n - x.shape[axis]) if a == axis else (0, 0) for a in range(x.ndim)])


def band_block(pattern: ap.Pattern) -> int:
  """Query block of the banded XLA path: about the window width (less padding work), 16 to 128."""
  return int(min(128, max(16, 1 << int(np.ceil(np.log2(pattern.left + pattern.right + 1))))))


def attention_banded(q, k, v, *, pattern, key_mask=None, scale=None, block=None):
  """Sliding-window attention (`ap.local(left, right)`) in XLA without [Lq, Lk] arrays.

  Query block n (queries nB .. nB + B - 1) sees at most the keys nB - left .. nB + B - 1 + right: those
  W = B + left + right keys are gathered per block, and the logits are [B, H, Lq / B, B, W]. The visibility
  test j - i in [-left, right] depends only on the offsets inside the block and the band ([B, W], static).
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  b, lq, h, d = q.shape
  lk = k.shape[1]
  blk = block or band_block(pattern)
  nq = -(-lq // blk)
  width = blk + pattern.left + pattern.right
  keys = np.arange(nq)[:, None] * blk - pattern.left + np.arange(width)[None, :]  # [nq, W] key index, may be out
  inside = (keys >= 0) & (keys < lk)
  take = lambda x: jnp.take(x, np.clip(keys, 0, lk - 1), axis=1)                  # [B, nq, W, ...]
  offset = np.arange(width)[None, :] - pattern.left - np.arange(blk)[:, None]      # j - i inside a block [B, W]
  visible = ((offset >= -pattern.left) & (offset <= pattern.right))[None, None, None] & inside[None, None, :, None]
  if key_mask is not None:
    visible = visible & take(key_mask)[:, None, :, None, :]
  qb = _pad_to(q, nq * blk).reshape(b, nq, blk, h, d)
  logits = jnp.einsum("bnqhd,bnkhd->bhnqk", qb, take(k), preferred_element_type=jnp.float32) * scale
  out = jnp.einsum("bhnqk,bnkhd->bnqhd", _softmax_av(logits, visible, v), take(v))
  return out.reshape(b, nq * blk, h, v.shape[-1])[:, :lq].astype(q.dtype)


def attention_by_query_block(q, k, v, *, pattern, key_mask=None, scale=None, block=128, segments=4):
  """Attention with a causal-like pattern (coordinates non-decreasing, c_k - c_q <= hi: causal, chunk-causal)
  one query block at a time.

  The query blocks are split into `segments` runs; within a run, a checkpointed lax.map over its blocks
  attends to the key prefix the run's last query can see (found from the coordinates), so [B, H, block,
  prefix] logits exist at once, the backward pass recomputes them per block, and causal attention does
  (S + 1) / 2S of the dense work (62.5 % for S = 4). The visibility test uses the pattern's coordinates
  ([Lq] and [Lk] vectors), never an [Lq, Lk] mask.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  b, lq, h, d = q.shape
  blk = min(block, lq)
  nq = -(-lq // blk)
  lo, hi = pattern.bounds()
  kc_all = pattern.coords(k.shape[1], "k")
  qc_all = np.pad(pattern.coords(lq, "q"), (0, nq * blk - lq)).reshape(nq, blk)
  qb = _pad_to(q, nq * blk).reshape(b, nq, blk, h, d).swapaxes(0, 1)
  outs = []
  for blocks in np.array_split(np.arange(nq), min(segments, nq)):
    n = max(1, int(np.searchsorted(kc_all, qc_all[blocks[-1]].max() + hi, side="right")))  # visible key prefix
    kp, vp, kc = k[:, :n], v[:, :n], jnp.asarray(kc_all[:n], jnp.int32)
    km = None if key_mask is None else key_mask[:, None, None, :n]

    @jax.checkpoint
    def one_block(args, kp=kp, vp=vp, kc=kc, km=km):
      qi, ci = args                                                   # [B, blk, H, D], [blk]
      logits = jnp.einsum("bqhd,bkhd->bhqk", qi, kp, preferred_element_type=jnp.float32) * scale
      diff = kc[None, :] - ci[:, None]
      visible = ((diff >= lo) & (diff <= hi))[None, None]
      visible = visible if km is None else visible & km
      return jnp.einsum("bhqk,bkhd->bqhd", _softmax_av(logits, visible, vp), vp)

    outs.append(jax.lax.map(one_block, (qb[blocks[0]:blocks[-1] + 1], jnp.asarray(qc_all[blocks], jnp.int32))))
  out = jnp.concatenate(outs)                                         # [nq, B, blk, H, Dv]
  return out.swapaxes(0, 1).reshape(b, nq * blk, h, v.shape[-1])[:, :lq].astype(q.dtype)


def attention_xla(q, k, v, *, mask=None, bias=None, scale=None, pattern=None, key_mask=None):
  """The "xla" implementation: cuDNN on GPU where it fits, per-group dense attention for partition
  patterns, the banded / per-query-block paths for sliding windows and (chunk-)causal patterns, else
  `attention_reference`. Same contract as the reference."""
  pattern = ap.as_pattern(pattern)
  if _cudnn_fits(q, k, v, pattern, mask, bias, key_mask):
    try:  # cuDNN checks its version, the GPU and the shapes while tracing; the reference is XLA too
      return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=pattern.kind == "causal",
                                          implementation="cudnn")
    except (ValueError, RuntimeError, NotImplementedError):
      pass
  structured = mask is None and bias is None
  if structured and pattern.kind == "local" and q.shape[1] > band_block(pattern):
    return attention_banded(q, k, v, pattern=pattern, key_mask=key_mask, scale=scale)
  if structured and pattern.kind in ("causal", "chunk_causal") and q.shape[1] > 128:
    return attention_by_query_block(q, k, v, pattern=pattern, key_mask=key_mask, scale=scale)
  split = ap.groups(pattern, q.shape[1], k.shape[1]) if structured else None
  if split is None:
    return attention_reference(q, k, v, mask=mask, bias=bias, scale=scale, pattern=pattern, key_mask=key_mask)
  q_order, k_order, g = split
  b = q.shape[0]
  blocks = lambda x, order: jnp.take(x, order, axis=1).reshape(b * g, x.shape[1] // g, *x.shape[2:])
  km = None if key_mask is None else blocks(key_mask, k_order)
  out = attention_reference(blocks(q, q_order), blocks(k, k_order), blocks(v, k_order), scale=scale, key_mask=km)
  return jnp.take(out.reshape(b, q.shape[1], *out.shape[2:]), np.argsort(q_order), axis=1)


def attention(q, k, v, *, mask=None, bias=None, scale=None, impl="auto", pattern=None, key_mask=None,
              block_q=None, block_k=None):
  """Dispatches to an implementation; see `attention_reference` for the contract.

  block_q / block_k tune the kernel tiles (ignored by "xla").
  """
  pattern = ap.as_pattern(pattern)
  as_keys = _as_key_mask(mask, q, k)
  if as_keys is not None:
    key_mask = as_keys if key_mask is None else key_mask & as_keys
    mask = None
  unsupported = None
  if mask is not None or bias is not None:
    unsupported = ("a bias or a dense mask other than [B, 1, 1, Lk] has no kernel form; express visibility as "
                   "an attention pattern plus a key mask")
  kernel = dispatch.resolve("attention", impl, unsupported=unsupported, pattern=ap.pattern_class(pattern),
                            dtype=q.dtype, head_dim=q.shape[-1])
  if kernel is None:
    return attention_xla(q, k, v, mask=mask, bias=bias, scale=scale, pattern=pattern, key_mask=key_mask)
  return flash_attention(q, k, v, pattern=pattern, key_mask=key_mask, scale=scale, backend=kernel.backend,
                         interpret=kernel.interpret, block_q=block_q, block_k=block_k)
