"""P3D ResNet (block equations: tests/layers/test_p3d_blocks.py): A -> B -> C cycling, clips and volumes, parameter
counts by formula, gradients, bad input, configs, the moving-digit clips, trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.p3d import P3DBottleneck
from effjax.models import p3d

import trainer_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(layers=(2, 2), width=4, dropout_rate=0.0)


@pytest.fixture(scope="module")
def tiny():
  model = p3d.Model(num_classes=5, **TINY)
  clips = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 16, 16, 3))
  return model, clips, jax.jit(model.init)(jax.random.PRNGKey(1), clips)


def test_blocks_cycle_a_b_c_over_the_network(tiny):
  """The model equals its stem followed by P3D blocks of kinds A, B, C, A (stride 2 opening stage 1)."""
  model, clips, variables = tiny
  _, state = model.apply(variables, clips, mutable=["intermediates"])
  inter = {k: v[0] for k, v in state["intermediates"].items()}
  assert inter["stem"].shape == (2, 3, 4, 4, 4)
  assert inter["stage0"].shape == (2, 3, 4, 4, 16) and inter["stage1"].shape == (2, 3, 2, 2, 32)

  def chain(kinds):
    x = inter["stem"]
    for (name, planes, stride), kind in zip([("stage0_block0", 4, 1), ("stage0_block1", 4, 1),
                                             ("stage1_block0", 8, 2), ("stage1_block1", 8, 1)], kinds):
      v = {c: variables[c][name] for c in ("params", "batch_stats")}
      x = P3DBottleneck(planes, kind, stride).apply(v, x)
    return x
  np.testing.assert_allclose(inter["stage1"], chain("ABCA"), rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(inter["stage1"] - chain("AAAA")))) > 1e-3


def test_clips_and_volumes(tiny):
  """Same maths and parameters on [B, T, H, W, C] clips and [B, D, H, W, C] volumes of any size: the first axis
  keeps its length, H and W shrink 16×."""
  model, clips, variables = tiny
  volume = jax.random.normal(jax.random.PRNGKey(2), (1, 7, 32, 24, 3))
  logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, volume)
  assert logits.shape == (1, 5)
  assert [state["intermediates"][f"stage{i}"][0].shape for i in range(2)] == [(1, 7, 8, 6, 16), (1, 7, 4, 3, 32)]
  assert jax.jit(model.apply)(variables, clips).shape == (2, 5)


def _formula(layers, width=64, in_channels=3, num_classes=400):
  """Stem conv + BN, bottlenecks C·p + 16p² + 14p (+ 4Cp + 8p projection), classifier."""
  count, c = 49 * in_channels * width + 2 * width, width
  for i, depth in enumerate(layers):
    p = width * 2 ** i
    for j in range(depth):
      count += c * p + 16 * p * p + 14 * p + (4 * c * p + 8 * p if j == 0 else 0)
      c = 4 * p
  return count + c * num_classes + num_classes


@pytest.mark.parametrize("variant", list(p3d.VARIANTS))
def test_parameter_counts_by_formula(variant):
  model = p3d.Model(num_classes=400, variant=variant)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 32, 32, 3)))["params"]
  assert sum(v.size for v in jax.tree.leaves(shapes)) == _formula(p3d.VARIANTS[variant]["layers"])


def test_parameter_count_by_hand():
  # stem 49·1·2 + 4; block (C=2, p=2): reduce 4 + 4, S 36 + 4, T 12 + 4, expand 16 + 16, shortcut 16 + 16;
  # classifier 8·3 + 3
  shapes = jax.eval_shape(p3d.Model(num_classes=3, layers=(1,), width=2).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 2, 8, 8, 1)))["params"]
  assert sum(v.size for v in jax.tree.leaves(shapes)) == 98 + 4 + 8 + 40 + 16 + 32 + 32 + 27 == _formula((1,), 2, 1, 3)


def test_gradients_finite_and_nonzero_for_every_param(tiny):
  model, clips, variables = tiny

  def loss(p):
    out, _ = model.apply({**variables, "params": p}, clips, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(variables["params"])):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"expects clips \[B, T, H, W, C\] or volumes"):
    p3d.Model(num_classes=3, **TINY).init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match="kinds must be a non-empty string"):
    p3d.Model(num_classes=3, kinds="AD", **TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 16, 16, 3)))
  with pytest.raises(ValueError, match="unknown P3DResNet variant"):
    p3d.Model(num_classes=3, variant="p3d50")


def test_moving_digits_clips():
  from effjax.data.sources import mnist5k, moving_digits
  source = moving_digits.make("test", "frames=5;size=34")
  base = mnist5k.make("test")
  assert len(source) == len(base) == 1000 and source.info["image_shape"] == (5, 34, 34, 1)
  for i in (0, 999):
    clip, digit = source[i]["image"], base[i]["image"]
    assert clip.shape == (5, 34, 34, 1) and clip.dtype == np.uint8 and source[i]["label"] == base[i]["label"]
    np.testing.assert_array_equal(source[i]["image"], clip)  # deterministic
    for f in range(5):  # each frame holds the whole digit at one offset within the canvas
      hits = [(r, c) for r in range(7) for c in range(7) if np.array_equal(clip[f, r:r + 28, c:c + 28], digit)]
      assert hits and clip[f].sum() == digit.sum(), (i, f)
  moving = [i for i in range(50) if not np.array_equal(source[i]["image"][0], source[i]["image"][-1])]
  assert len(moving) > 40
  with pytest.raises(ValueError, match="size >= 28"):
    moving_digits.make("train", "size=20")


@pytest.mark.parametrize("spec", ["runlocal", "variant=p3d199", "variant=p3d63"])
def test_configs_build_their_models(spec):
  from effjax import config as cfg
  c = cfg.load_config_file(os.path.join(REPO, f"configs/p3d.py:{spec}"))
  shape = (1, 4, 32, 32, 1) if spec == "runlocal" else (1, 4, 64, 64, 3)
  assert trainer_utils.logits_shape(c, shape) == (1, c.model.num_classes)
