"""effjax.layers.conv: the CPU gradients (1×1 kernel gradient as a matmul, max pooling's) equal lax's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers import conv


def test_gradients_equal_lax():
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(2, 9, 11, 5)), jnp.float32)
  ws = [jnp.asarray(r.normal(size=shape), jnp.float32) for shape in ((1, 1, 5, 4), (1, 1, 5, 8), (3, 3, 5, 4))]
  # 1×1 (CPU path) with fewer and with more output channels (the two matmul orders), strides 1 and 2; 3×3 (lax's)
  cases = [(ws[0], (1, 1)), (ws[0], (2, 2)), (ws[1], (1, 1)), (ws[1], (2, 2)), (ws[2], (2, 2))]

  def grads(f):
    return jax.jit(lambda x: [jax.grad(lambda x, w: jnp.sum(f(x, w, s, ((w.shape[0] // 2,) * 2,) * 2) ** 2), (0, 1))(
        x, w) for w, s in cases])(x)
  for got, want in zip(grads(conv.conv2d), grads(conv._lax_conv)):
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  relu = jnp.maximum(x, 0.0)  # zeros: ties inside the windows, resolved to the first maximum like select_and_scatter
  pool = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2 + f(x, (3, 3), (
      2, 2), ((1, 1), (1, 1))))))(relu)
  np.testing.assert_array_equal(pool(conv.max_pool), pool(nn.max_pool))
