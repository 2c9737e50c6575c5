"""The XLA:CPU depthwise path (shifted multiply-adds / FFT, FFT gradients) equals lax's grouped convolution."""
import jax
import jax.numpy as jnp
import numpy as np

from effjax.kernels.depthwise_conv import depthwise_conv, depthwise_conv_reference
from effjax.kernels.depthwise_conv_cpu import SHIFT_MAX_TAPS, depthwise_conv_cpu

CASES = [  # x shape, kernel, dilation: both forward paths (≤ / > SHIFT_MAX_TAPS taps), 1-3 spatial dims, dilation
    ((2, 37, 8), (7,), (2,)), ((2, 11, 13, 8), (5, 3), (1, 2)), ((2, 9, 10, 8), (9, 11), (1, 2)),
    ((1, 5, 6, 7, 4), (3, 3, 3), (1, 1, 1)), ((2, 7, 7, 16), (23, 23), (1, 1))]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_values_and_gradients_match_reference():
  assert min(np.prod(k) for _, k, _ in CASES) <= SHIFT_MAX_TAPS < max(np.prod(k) for _, k, _ in CASES)
  r = np.random.default_rng(0)
  args = [tuple(jnp.asarray(r.normal(size=s), jnp.float32) for s in (xs, k + xs[-1:], xs)) for xs, k, _ in CASES]

  def both(conv):
    def run(args):
      out = []
      for (x, w, c), (_, _, d) in zip(args, CASES):
        out.append((conv(x, w, d), jax.grad(lambda x, w: jnp.sum(conv(x, w, d) * c), (0, 1))(x, w)))
      return out
    return jax.jit(run)(args)
  got = both(depthwise_conv_cpu)
  want = both(lambda x, w, d: depthwise_conv_reference(x, w, dilation=d))
  for case, (y, (dx, dw)), (y_r, (dx_r, dw_r)) in zip(CASES, got, want):
    assert _rel(y, y_r) < 1e-5 and _rel(dx, dx_r) < 1e-5 and _rel(dw, dw_r) < 1e-5, case


def test_auto_takes_cpu_path_and_keeps_dtype():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 7, 4)), jnp.bfloat16)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 4)), jnp.bfloat16)
  text = jax.jit(lambda x, w: depthwise_conv(x, w)).lower(x, w).as_text()
  assert "convolution" not in text and "feature_group_count" not in text
  y = depthwise_conv(x, w)
  assert y.dtype == jnp.bfloat16 and _rel(y, depthwise_conv_reference(x, w)) < 1e-2
