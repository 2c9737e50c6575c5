"""ResNet stochastic-depth schedules: timm's per-block ramp and TF Model Garden's per-stage rates (which the official
ResNet-RS configs train with), against rewrites of the two references' formulas, and as the model builds its blocks."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from effjax import config as cfg
from effjax.layers.resnet_blocks import Bottleneck
from effjax.models import resnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tf_model_garden_rates(layers, init_rate):
  """official/vision/modeling/backbones/resnet.py: block group i (level i + 2 of levels 2..5) passes
  get_stochastic_depth_rate(init_rate, i + 2, 5) = init_rate · (i + 2) / 5 to each of its blocks."""
  return [[init_rate * float(i + 2) / 5] * n for i, n in enumerate(layers)]


def timm_rates(layers, drop_path_rate):
  """timm resnet.py make_blocks: the running block index over all stages, drop_path_rate · idx / (blocks − 1)."""
  total, idx, out = sum(layers), 0, []
  for n in layers:
    out.append([drop_path_rate * (idx + j) / (total - 1) for j in range(n)])
    idx += n
  return out


@pytest.mark.parametrize("layers", [(3, 4, 6, 3), (4, 44, 87, 4)])
def test_schedules_equal_their_references(layers):
  assert resnet.drop_path_rates(layers, 0.1, "stage") == tf_model_garden_rates(layers, 0.1)
  assert resnet.drop_path_rates(layers, 0.05, "block") == timm_rates(layers, 0.05)
  with pytest.raises(ValueError, match="drop_path_schedule"):
    resnet.drop_path_rates(layers, 0.1, "linear")


def test_model_builds_its_blocks_with_the_schedule():
  """The rate each Bottleneck is built with, recorded while the model initialises."""
  def built_rates(schedule):
    rates = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, Bottleneck) and context.method_name == "__call__":
        rates[context.module.name] = context.module.drop_path_rate
      return next_fun(*args, **kwargs)

    model = resnet.Model(num_classes=2, layers=(1, 2, 1, 1), widths=(4, 4, 4, 4), stem_width=4,
                         drop_path_rate=0.5, drop_path_schedule=schedule)
    with nn.intercept_methods(record):
      jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return [rates[f"layer{i + 1}_block{j}"] for i, n in enumerate((1, 2, 1, 1)) for j in range(n)]

  assert built_rates("stage") == [0.2, 0.3, 0.3, 0.4, 0.5]
  assert built_rates("block") == [0.0, 0.125, 0.25, 0.375, 0.5]


def test_configs_choose_the_schedule_of_their_recipe():
  rs = cfg.load_config_file(os.path.join(REPO, "configs/resnet.py:variant=resnetrs200"))
  eca = cfg.load_config_file(os.path.join(REPO, "configs/resnet.py:variant=ecaresnet50d"))
  assert (rs.model.drop_path_schedule, rs.model.drop_path_rate) == ("stage", 0.1)
  assert (eca.model.drop_path_schedule, eca.model.drop_path_rate) == ("block", 0.05)
