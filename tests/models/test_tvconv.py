"""MobileNetV2 with TVConv depthwise layers (layer equations: tests/layers/test_tvconv_layer.py): shapes, parameter
counts, the tvconv switch, gradients, configs, trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import tvconv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(blocks=((1, 8, 1, 1), (2, 16, 2, 2)), stem_width=8, last_width=32, tvconv_hidden=4,
            tvconv_hidden_layers=1)
X = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))


@pytest.fixture(scope="module")
def tiny():
  model = tvconv.Model(num_classes=5, **TINY)
  return model, jax.jit(model.init)(jax.random.PRNGKey(1), X)


def _count(tree):
  return sum(p.size for p in jax.tree.leaves(tree))


def test_shapes_and_intermediates(tiny):
  model, variables = tiny
  logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, X)
  assert logits.shape == (2, 5)
  shapes = {k: v[0].shape for k, v in state["intermediates"].items()}
  assert shapes == {"stem": (2, 8, 8, 8), "stage0": (2, 8, 8, 8), "stage1": (2, 4, 4, 16)}
  p = variables["params"]
  assert p["stage0_block0"]["dw"]["affinity"].shape == (8, 8, 4)   # t = 1: no expansion conv
  assert p["stage1_block0"]["dw"]["affinity"].shape == (4, 4, 4)   # stride 2: the output size
  assert p["stage1_block1"]["dw"]["weight_gen"]["out"]["kernel"].shape == (3, 3, 4, 32 * 9)
  assert "expand" not in p["stage0_block0"] and p["stage1_block0"]["expand"]["kernel"].shape == (1, 1, 8, 16)


def _tvconv_params(c, hw, ca=4, inter=4, layers=1):
  return hw * ca + 9 * ca * inter + 2 * hw * inter + layers * (9 * inter * inter + 2 * hw * inter) + 9 * inter * c * 9


def test_parameter_counts_differ_by_the_tvconv_formula():
  """TVConv model = plain MobileNetV2 − 9C per depthwise conv + the TVConv count of each layer."""
  shape = lambda m: jax.eval_shape(m.init, jax.random.PRNGKey(0), X)["params"]
  plain, tv = (_count(shape(tvconv.Model(num_classes=5, tvconv=t, **TINY))) for t in (False, True))
  layers = [(8, 64), (16, 16), (32, 16)]  # (channels, output positions) of the three depthwise layers
  assert tv - plain == sum(_tvconv_params(c, hw) - 9 * c for c, hw in layers)
  # plain by hand: stem 3·3·3·8 + 16; s0b0 dw 9·8 + 16, project 8·8 + 16; s1b0 expand 8·16 + 32, dw 9·16 + 32,
  # project 16·16 + 32; s1b1 expand 16·32 + 64, dw 9·32 + 64, project 32·16 + 32; head 16·32 + 64; classifier 32·5 + 5
  assert plain == (216 + 16 + 72 + 16 + 64 + 16 + 128 + 32 + 144 + 32 + 256 + 32 + 512 + 64 + 288 + 64 + 512 + 32
                   + 512 + 64 + 165)


def test_official_widths():
  """Official x1_0: 32 -> 16, 24, 32, 64, 96, 160, 320 -> 512; x0_5 rounds to multiples of 8 (16, 8, 16, ...)."""
  shapes = jax.eval_shape(tvconv.Model(num_classes=10, variant="x0_5", tvconv=False).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 96, 96, 3)))["params"]
  assert shapes["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert [shapes[f"stage{i}_block0"]["project"]["kernel"].shape[-1] for i in range(7)] == [8, 16, 16, 32, 48, 80, 160]
  assert shapes["head_conv"]["kernel"].shape == (1, 1, 160, 512)
  assert [tvconv.round_width(v) for v in (3.2, 12, 16, 24 * 0.3, 100)] == [8, 16, 16, 8, 104]


def test_gradients_finite_and_nonzero_for_every_param(tiny):
  model, variables = tiny

  def loss(p):
    out, _ = model.apply({**variables, "params": p}, X, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(variables["params"])):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors(tiny):
  model, variables = tiny
  with pytest.raises(ValueError, match="tied to the input size"):
    model.apply(variables, jnp.zeros((1, 12, 12, 3)))
  with pytest.raises(ValueError, match=r"expects images \[B, H, W, C\]"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="unknown TVConvMobileNetV2 variant"):
    tvconv.Model(num_classes=3, variant="x2_0")


@pytest.mark.parametrize("spec", ["runlocal", "runlocal,tvconv=False", "variant=x1_0"])
def test_configs_build_their_models(spec):
  from effjax import components, config as cfg
  c = cfg.load_config_file(os.path.join(REPO, f"configs/tvconv.py:{spec}"))
  model = components.load("models", c.model_name).Model(**c.model)
  assert model.tvconv == ("tvconv=False" not in spec)
