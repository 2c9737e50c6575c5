"""TVConv (translation-variant convolution) against the paper's equations: depthwise conv when the generated kernel
is position-independent, a per-position numpy loop, translation variance, parameter count, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.tvconv import TVConv


def _params(layer, x, seed=2):
  """Random parameters, every one away from its initial value: kernels N(0, 1/fan_in), affinity maps and LayerNorm
  scales 1 + N(0, 0.3²), LayerNorm biases N(0, 0.3²). Drawn in numpy from the shapes: no init to compile."""
  shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = jax.tree_util.keystr(path), leaf.shape
    if name.endswith("['kernel']"):
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape), jnp.float32)
    return jnp.asarray((not name.endswith("['bias']")) + 0.3 * rng.normal(size=shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _make_constant(gen, key, last):
  """Makes a weight generator's output the same at every position: its last LayerNorm gives a positive constant
  (scale 0, one bias per channel), and its output conv reads only the centre tap. Returns (params, the constant)."""
  k1, k2 = jax.random.split(key)
  norm = gen[f"norm{last}"]
  b = jax.random.uniform(k1, norm["bias"].shape[-1:], minval=0.1, maxval=1.0)
  m = jax.random.normal(k2, gen["out"]["kernel"].shape[2:])
  out = jnp.zeros_like(gen["out"]["kernel"]).at[1, 1].set(m)
  const = {"scale": jnp.zeros_like(norm["scale"]), "bias": jnp.broadcast_to(b, norm["bias"].shape)}
  gen = {**gen, f"norm{last}": const, "out": {"kernel": out}}
  return gen, b @ m


@pytest.mark.parametrize("stride,use_bias,hidden_layers", [(1, False, 1), (2, True, 0)])
def test_position_independent_kernel_equals_depthwise_conv(stride, use_bias, hidden_layers):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 5))
  layer = TVConv(stride=stride, hidden=8, hidden_layers=hidden_layers, use_bias=use_bias)
  params = _params(layer, x)
  params["weight_gen"], w = _make_constant(params["weight_gen"], jax.random.PRNGKey(3), hidden_layers)
  kernel = w.reshape(5, 3, 3).transpose(1, 2, 0)[:, :, None, :]  # channel c, tap u·3 + v -> HWIO [3, 3, 1, C]
  want = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=5)
  if use_bias:
    params["bias_gen"], bias = _make_constant(params["bias_gen"], jax.random.PRNGKey(4), hidden_layers)
    want = want + bias
  got = jax.jit(layer.apply)({"params": params}, x)
  assert got.shape == want.shape == (2, 4 if stride == 2 else 7, 4 if stride == 2 else 7, 5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _conv3x3(a, k):
  """Zero-padded 3×3 cross-correlation, numpy: a [H, W, I], k [3, 3, I, O] -> [H, W, O]."""
  h, w = a.shape[:2]
  ap = np.pad(a, ((1, 1), (1, 1), (0, 0)))
  return sum(ap[u:u + h, v:v + w] @ k[u, v] for u in range(3) for v in range(3))


def _generator(p, a, layers):
  for i in range(layers + 1):
    h = _conv3x3(a, p[f"conv{i}"]["kernel"])
    h = (h - h.mean()) / np.sqrt(h.var() + 1e-5) * p[f"norm{i}"]["scale"] + p[f"norm{i}"]["bias"]
    a = np.maximum(h, 0)
  return _conv3x3(a, p["out"]["kernel"])


@pytest.mark.parametrize("stride", [1, 2])
def test_equals_per_position_reference_loop(stride):
  """y[b, i, j, c] = Σ_{u,v} W[i, j, c, 3u + v] x_pad[b, s·i + u, s·j + v, c] + β[i, j, c], W and β from G(A)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
  layer = TVConv(stride=stride, hidden=4, hidden_layers=1, use_bias=True)
  params = _params(layer, x)
  got = np.asarray(jax.jit(layer.apply)({"params": params}, x))
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  ho, wo = p["affinity"].shape[:2]
  w = _generator(p["weight_gen"], p["affinity"], 1).reshape(ho, wo, 3, 9)
  beta = _generator(p["bias_gen"], p["affinity"], 1)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((2, ho, wo, 3))
  for b in range(2):
    for i in range(ho):
      for j in range(wo):
        for c in range(3):
          patch = xp[b, stride * i:stride * i + 3, stride * j:stride * j + 3, c].reshape(9)
          want[b, i, j, c] = patch @ w[i, j, c] + beta[i, j, c]
  assert (ho, wo) == ((5, 6) if stride == 1 else (3, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_translation_variance():
  """Shifting the input does not shift TVConv's output (it does for a depthwise conv, away from the border)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 12, 12, 4))
  shifted = jnp.roll(x, 2, axis=2)
  layer = TVConv(hidden=8, hidden_layers=1)
  params = _params(layer, x)
  y, y_shifted = (jax.jit(layer.apply)({"params": params}, v) for v in (x, shifted))
  inner = (slice(None), slice(1, -1), slice(3, -1))  # positions whose 3×3 window does not meet the border or wrap
  assert float(jnp.max(jnp.abs(jnp.roll(y, 2, axis=2) - y_shifted)[inner])) > 0.1
  dw = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 1, 4))
  conv = lambda v: jax.lax.conv_general_dilated(v, dw, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                feature_group_count=4)
  np.testing.assert_allclose(jnp.roll(conv(x), 2, axis=2)[inner], conv(shifted)[inner], rtol=1e-5, atol=1e-5)


def _formula(c, k, hw, ca, inter, layers, bias):
  """The module docstring's count: affinity maps + weight generator (+ bias generator)."""
  body = 9 * ca * inter + 2 * hw * inter + layers * (9 * inter * inter + 2 * hw * inter)
  return hw * ca + body + 9 * inter * c * k * k + (body + 9 * inter * c if bias else 0)


@pytest.mark.parametrize("size,stride,layers,bias", [(6, 1, 1, False), (8, 2, 0, True), (5, 1, 2, True)])
def test_parameter_count(size, stride, layers, bias):
  x = jnp.zeros((1, size, size, 8))
  layer = TVConv(stride=stride, hidden=16, hidden_layers=layers, use_bias=bias)
  count = sum(p.size for p in jax.tree.leaves(jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)))
  out = -(-size // stride)
  assert count == _formula(8, 3, out * out, 4, 16, layers, bias)
  if (size, stride, layers, bias) == (6, 1, 1, False):
    # by hand: affinity 6·6·4 = 144; conv0 9·4·16 = 576; norm0 2·36·16 = 1152; conv1 9·16·16 = 2304;
    # norm1 1152; out 9·16·72 = 10368
    assert count == 144 + 576 + 1152 + 2304 + 1152 + 10368 == 15696


def test_gradients_finite_and_nonzero_for_every_param():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  layer = TVConv(stride=2, hidden=4, hidden_layers=1, use_bias=True)
  params = _params(layer, x)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  layer = TVConv(hidden=4, hidden_layers=1)
  params = _params(layer, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="affinity maps are 8x8: the layer is tied to the input size"):
    layer.apply({"params": params}, jnp.zeros((1, 10, 8, 3)))
  with pytest.raises(ValueError, match=r"expects x \[B, H, W, C\]"):
    layer.init(jax.random.PRNGKey(0), jnp.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="odd kernel_size"):
    TVConv(kernel_size=4).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
