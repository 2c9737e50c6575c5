"""Dilated 2-D image classifier and 1-D sequence model built from the D-Former blocks."""
import os

import jax
import jax.numpy as jnp
import pytest

from effjax import config as cfg
from effjax.models import dilated_vit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_image_classifier_shapes_and_shared_blocks():
  model = dilated_vit.Model(10, patch_size=(2, 2), width=16, depths=(2, 2), num_heads=(2, 4), group_size=(7, 7))
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)
  p = variables["params"]
  assert p["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"].shape == (16, 48)
  assert p["layers_0"]["pos_block"]["proj"]["kernel"].shape == (3, 3, 1, 16)
  assert p["layers_0"]["downsample"]["reduction"]["kernel"].shape == (64, 32)  # 2-D merging: 4C -> 2C
  assert "downsample" not in p["layers_1"]


@pytest.mark.parametrize("inputs,kwargs", [
    (jnp.zeros((2, 64, 3)), dict(patch_size=(2,), group_size=(8,), intervals=(1,))),
    (jnp.zeros((2, 64), jnp.int32), dict(patch_size=(1,), group_size=(8,), intervals=(1,), vocab_size=20)),
])
def test_sequence_model_shapes(inputs, kwargs):
  model = dilated_vit.Model(4, width=16, depths=(2,), num_heads=(2,), **kwargs)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs)
  assert jax.eval_shape(model.apply, variables, inputs).shape == (2, 4)


def test_bad_inputs_are_clear_errors():
  model = dilated_vit.Model(4, patch_size=(4, 4), group_size=(2, 2))
  with pytest.raises(ValueError, match="not divisible"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 30, 32, 1)))
  with pytest.raises(ValueError, match="grid axes"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 1)))
  with pytest.raises(ValueError, match="token ids"):
    jax.eval_shape(dilated_vit.Model(4, patch_size=(1,), group_size=(4,), vocab_size=8, depths=(2,), num_heads=(2,),
                                     intervals=(1,)).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 1)))


@pytest.mark.parametrize("depth,reach", [(1, 9), (2, 32)])
def test_sequence_model_reaches_the_whole_sequence_after_one_block_pair(depth, reach):
  """Stage-0 output token 0 sees its window of 8 (+1 through the 3-tap position conv) after one local block,
  and all 32 tokens after local + dilated."""
  model = dilated_vit.Model(2, patch_size=(1,), width=8, depths=(depth,), num_heads=(2,), group_size=(8,),
                            intervals=(1,))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 3))
  variables = model.init(jax.random.PRNGKey(1), x)

  def stage_output_token0(x):
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return state["intermediates"]["layers_0"]["__call__"][0][0, 0].sum()

  grad = jnp.abs(jax.jit(jax.grad(stage_output_token0))(x)[0]).sum(-1)
  # relative threshold: the CPU depthwise conv's FFT gradient leaves ~1e-8 round-off outside the receptive field
  assert int((grad > 1e-5 * grad.max()).sum()) == reach


@pytest.mark.parametrize("arg,image", [("runlocal", (28, 28, 1)), ("dataset=tfds:cifar10,image=32", (32, 32, 3))])
def test_configs_build(arg, image):
  c = cfg.load_config_file(os.path.join(REPO, f"configs/dformer_dilated_vit.py:{arg}"))
  model = dilated_vit.Model(**c.model)
  x = jnp.zeros((2, *image))
  assert jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.PRNGKey(0), x), x).shape == (2, 10)
