"""FasterNet (PConv blocks): timm golden equivalence and parameter counts, gradients, trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import fasternet

import timm_golden
import trainer_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = {"patch_embed": "stem", "stages.0": "stage0", "stages.2": "stage2", "stages.3": "stage3"}


@pytest.mark.parametrize("key", ["t0", "t2"])
def test_golden_logits_and_intermediates(key):
  sd, images, outputs, meta = timm_golden.load("fasternet", key)
  kw = meta["models"][key]["kwargs"]
  names = {"embed_dim": "width"}  # timm's constructor names -> ours
  model = fasternet.Model(variant=key, **{names.get(k, k): tuple(v) if isinstance(v, list) else v
                                          for k, v in kw.items()})
  timm_golden.check_outputs(model, fasternet.convert_official_variables(sd), meta, key, images, outputs, HOOKS)


def test_param_counts_equal_timm():
  counts = timm_golden.load("fasternet", "t0")[3]["param_counts"]
  assert set(counts) == {f"fasternet_{v}" for v in fasternet.VARIANTS}
  for name, count in counts.items():
    model = fasternet.Model(num_classes=1000, variant=name[len("fasternet_"):])
    assert timm_golden.param_count(model) == count, name


def test_convert_official_rejects_missing_and_unexpected_keys():
  sd = timm_golden.load("fasternet", "t0")[0]
  timm_golden.check_converter_is_strict(fasternet, sd, "stages.1.blocks.0.mlp.1.running_var")
  params = fasternet.convert_official_variables(sd)["params"]
  assert jax.tree.structure(fasternet.convert_official(sd)) == jax.tree.structure(params)


def test_gradients_finite_and_nonzero_for_every_param():
  model = fasternet.Model(num_classes=3, depths=(1, 1), width=8, feature_dim=16, layer_scale_init_value=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)

  def loss(p):
    out, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  for path, g in jax.tree_util.tree_leaves_with_path(jax.jit(jax.grad(loss))(variables["params"])):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="not divisible by the total stride"):
    jax.eval_shape(fasternet.Model(num_classes=3, depths=(1, 1), width=8).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)))
  with pytest.raises(ValueError, match="leave no channel"):
    jax.eval_shape(fasternet.Model(num_classes=3, depths=(1,), width=3).init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="unknown FasterNet variant"):
    fasternet.Model(num_classes=3, variant="huge")


@pytest.mark.parametrize("spec", ["runlocal", "variant=t0", "variant=l"])
def test_configs_build_their_models(spec):
  from effjax import config as cfg
  c = cfg.load_config_file(os.path.join(REPO, f"configs/fasternet.py:{spec}"))
  shape = (1, 32, 32, 1) if spec == "runlocal" else (1, 64, 64, 3)
  assert trainer_utils.logits_shape(c, shape) == (1, c.model.num_classes)


def test_partial_conv_convolves_only_the_first_channels():
  from effjax.layers.pconv import PartialConv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 8))
  layer = PartialConv(n_div=4)
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  assert params["partial_conv3"]["kernel"].shape == (3, 3, 2, 2)
  y = layer.apply({"params": params}, x)
  np.testing.assert_array_equal(y[..., 2:], x[..., 2:])
  want = jax.lax.conv_general_dilated(x[..., :2], params["partial_conv3"]["kernel"], (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[..., :2], want, rtol=1e-5, atol=1e-6)
