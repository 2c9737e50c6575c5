"""P3D-A/B/C bottlenecks against the paper's equations written with explicit lax convolutions; P3D-A with an identity
temporal convolution is a 2-D bottleneck applied frame by frame; parameter count; bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from effjax.layers.p3d import P3DBottleneck

EPS = 1e-5


@functools.cache
def _setup(stride, channels):
  """(x, random variables) of a width-4 bottleneck, shared by the kinds, whose parameters are the same: every
  parameter and BatchNorm statistic drawn away from its initial value (drawn in numpy: no init to compile)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 6, channels))
  shapes = jax.eval_shape(P3DBottleneck(4, "A", stride).init, jax.random.PRNGKey(1), x)
  rng = np.random.default_rng(stride * 100 + channels)

  def draw(path, leaf):
    name, shape = jax.tree_util.keystr(path), leaf.shape
    if name.endswith("['kernel']"):
      v = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
    elif name.endswith("['var']"):
      v = 0.5 + rng.random(shape)
    else:  # BatchNorm scale (around 1), bias and mean (around 0)
      v = name.endswith("['scale']") + 0.3 * rng.normal(size=shape)
    return jnp.asarray(v, jnp.float32)
  return x, jax.tree_util.tree_map_with_path(draw, shapes)


def _conv(x, kernel, stride=1):
  """Bias-free 3-D convolution, 'same' zero padding per axis, stride (1, s, s); x NDHWC, kernel DHWIO."""
  pad = [(k // 2, k // 2) for k in kernel.shape[:3]]
  return lax.conv_general_dilated(x, kernel, (1, stride, stride), pad, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def _reference(kind, variables, x, stride):
  """The paper's P3D bottleneck: 1×1×1 reduce, S / T combined as P3D-`kind`, 1×1×1 expand, + shortcut, ReLU."""
  p, st = variables["params"], variables["batch_stats"]

  def cbn(v, name, stride=1, relu=True):
    y = _conv(v, p[name]["kernel"], stride)
    n, s = p[f"{name}_norm"], st[f"{name}_norm"]
    y = (y - s["mean"]) / jnp.sqrt(s["var"] + EPS) * n["scale"] + n["bias"]
    return jax.nn.relu(y) if relu else y

  S = lambda v: cbn(v, "spatial")  # 1×3×3
  T = lambda v: cbn(v, "temporal")  # 3×1×1
  h = cbn(x, "reduce", stride)
  g = {"A": lambda: T(S(h)), "B": lambda: S(h) + T(h), "C": lambda: S(h) + T(S(h))}[kind]()
  shortcut = cbn(x, "shortcut", stride, relu=False) if "shortcut" in p else x
  return jax.nn.relu(shortcut + cbn(g, "expand", relu=False))


@pytest.mark.parametrize("kind", ["A", "B", "C"])
@pytest.mark.parametrize("stride,channels", [(1, 16), (2, 8)])  # identity shortcut; projection with stride 2
def test_block_equals_the_paper_equations(kind, stride, channels):
  x, variables = _setup(stride, channels)
  block = P3DBottleneck(4, kind, stride)
  assert ("shortcut" in variables["params"]) == (stride == 2)
  assert variables["params"]["spatial"]["kernel"].shape == (1, 3, 3, 4, 4)
  assert variables["params"]["temporal"]["kernel"].shape == (3, 1, 1, 4, 4)
  got = jax.jit(block.apply)(variables, x)
  assert got.shape == (2, 4, 6 // stride, 6 // stride, 16)
  np.testing.assert_allclose(got, _reference(kind, variables, x, stride), rtol=1e-5, atol=1e-5)


def test_kinds_differ():
  x, variables = _setup(1, 16)
  outs = [P3DBottleneck(4, k).apply(variables, x) for k in "ABC"]
  for i in range(3):
    assert float(jnp.max(jnp.abs(outs[i] - outs[(i + 1) % 3]))) > 1e-2


@pytest.mark.parametrize("stride", [1, 2])
def test_p3d_a_with_identity_temporal_conv_is_a_2d_bottleneck_per_frame(stride):
  x, variables = _setup(stride, 8)
  block = P3DBottleneck(4, "A", stride)
  p, st = dict(variables["params"]), dict(variables["batch_stats"])
  p["temporal"] = {"kernel": jnp.zeros((3, 1, 1, 4, 4)).at[1, 0, 0].set(jnp.eye(4))}  # centre tap 1
  s = st["temporal_norm"]
  p["temporal_norm"] = {"scale": jnp.sqrt(s["var"] + EPS), "bias": s["mean"]}          # BN = identity
  got = jax.jit(block.apply)({"params": p, "batch_stats": st}, x)

  frames = x.reshape((-1,) + x.shape[2:])  # [B·T, H, W, C]

  def cbn2d(v, name, stride=1, relu=True):
    k = p[name]["kernel"][0]  # [1, kh, kw, I, O] -> 2-D HWIO
    pad = [(k.shape[0] // 2,) * 2, (k.shape[1] // 2,) * 2]
    y = lax.conv_general_dilated(v, k, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, s = p[f"{name}_norm"], st[f"{name}_norm"]
    y = (y - s["mean"]) / jnp.sqrt(s["var"] + EPS) * n["scale"] + n["bias"]
    return jax.nn.relu(y) if relu else y

  g = cbn2d(cbn2d(frames, "reduce", stride), "spatial")
  y = jax.nn.relu(cbn2d(frames, "shortcut", stride, relu=False) + cbn2d(g, "expand", relu=False))
  np.testing.assert_allclose(got, y.reshape(got.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,stride", [(16, 1), (8, 1), (8, 2)])
def test_parameter_count(channels, stride):
  block = P3DBottleneck(4, "B", stride)
  variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 4, 4, channels)))
  count = sum(v.size for v in jax.tree.leaves(variables["params"]))
  c, p = channels, 4
  want = c * p + 9 * p * p + 3 * p * p + 4 * p * p + 2 * (3 * p + 4 * p)
  if channels != 4 * p or stride != 1:
    want += 4 * c * p + 8 * p
  assert count == want


def test_gradients_finite_and_nonzero_for_every_param():
  """P3D-C (S and T in series and in parallel) with a projection shortcut: every parameter is on a path."""
  x, variables = _setup(2, 8)
  block = P3DBottleneck(4, "C", 2)

  def loss(params):
    out, _ = block.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(variables["params"])):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"expect x \[B, T, H, W, C\]"):
    P3DBottleneck(4).init(jax.random.PRNGKey(0), jnp.zeros((2, 6, 6, 16)))
  with pytest.raises(ValueError, match="unknown P3D block kind 'D'"):
    P3DBottleneck(4, "D").init(jax.random.PRNGKey(0), jnp.zeros((2, 2, 6, 6, 16)))
