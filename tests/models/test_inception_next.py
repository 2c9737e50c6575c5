"""InceptionNeXt: timm golden equivalence and parameter counts, gradients, trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import inception_next

import timm_golden
import trainer_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = {"stem": "stem", "stages.0": "stage0", "stages.2": "stage2", "stages.3": "stage3"}


@pytest.mark.parametrize("key", ["tiny", "atto"])
def test_golden_logits_and_intermediates(key):
  sd, images, outputs, meta = timm_golden.load("inception_next", key)
  kw = meta["models"][key]["kwargs"]
  model = inception_next.Model(variant=key, num_classes=kw["num_classes"], depths=kw["depths"], widths=kw["dims"])
  timm_golden.check_outputs(model, inception_next.convert_official_variables(sd), meta, key, images, outputs, HOOKS)


def test_param_counts_equal_timm():
  counts = timm_golden.load("inception_next", "atto")[3]["param_counts"]
  assert set(counts) == {f"inception_next_{v}" for v in inception_next.VARIANTS}
  for name, count in counts.items():
    model = inception_next.Model(num_classes=1000, variant=name[len("inception_next_"):])
    assert timm_golden.param_count(model) == count, name


def test_convert_official_rejects_missing_and_unexpected_keys():
  sd = timm_golden.load("inception_next", "atto")[0]
  timm_golden.check_converter_is_strict(inception_next, sd, "stages.1.blocks.0.token_mixer.dwconv_w.bias")
  params = inception_next.convert_official_variables(sd)["params"]
  assert jax.tree.structure(inception_next.convert_official(sd)) == jax.tree.structure(params)


def test_gradients_finite_and_nonzero_for_every_param():
  model = inception_next.Model(num_classes=3, depths=(1, 1), widths=(8, 16), mlp_ratios=(2, 2), branch_ratio=0.25,
                               band_kernel_size=5, ls_init_value=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)

  def loss(p):  # eval mode: in training mode BatchNorm removes a per-channel constant, so the biases of the
    # convolutions before it have a gradient of exactly zero (in exact arithmetic; rounding may leave noise)
    return jnp.sum(model.apply({**variables, "params": p}, x, train=False) ** 2)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(variables["params"])):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="not divisible by the total stride"):
    jax.eval_shape(inception_next.Model(num_classes=3, depths=(1, 1), widths=(8, 16), mlp_ratios=(2, 2)).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)))
  with pytest.raises(ValueError, match="leave no branch channels"):
    jax.eval_shape(inception_next.Model(num_classes=3, depths=(1,), widths=(4,), mlp_ratios=(2,)).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="unknown InceptionNeXt variant"):
    inception_next.Model(num_classes=3, variant="huge")


@pytest.mark.parametrize("spec", ["runlocal", "variant=tiny", "variant=atto"])
def test_configs_build_their_models(spec):
  from effjax import config as cfg
  c = cfg.load_config_file(os.path.join(REPO, f"configs/inception_next.py:{spec}"))
  shape = (1, 32, 32, 1) if spec == "runlocal" else (1, 64, 64, 3)
  assert trainer_utils.logits_shape(c, shape) == (1, c.model.num_classes)
