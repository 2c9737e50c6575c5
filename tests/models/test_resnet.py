"""ECA-ResNet and ResNet-RS (timm goldens, timm parameter counts), gradients, trainer; cSE/sSE/scSE/ECA gates."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import squeeze_excite as se
from effjax.models import resnet

import timm_golden
import trainer_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = {"maxpool": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}


def _golden_model(meta, key):
  """The golden's timm kwargs as this model's fields (timm's `channels` are the stage `widths`)."""
  kw = meta["models"][key]["kwargs"]
  return resnet.Model(variant=meta["models"][key]["timm_name"],
                      **{"widths" if k == "channels" else k: tuple(v) if isinstance(v, list) else v
                         for k, v in kw.items()})


@pytest.mark.parametrize("key", ["ecaresnet26t", "ecaresnetlight", "resnetrs50"])
def test_golden_logits_and_intermediates(key):
  sd, images, outputs, meta = timm_golden.load("resnet", key)
  timm_golden.check_outputs(_golden_model(meta, key), resnet.convert_official_variables(sd), meta, key, images,
                            outputs, HOOKS)


def _count(name):
  return timm_golden.param_count(resnet.Model(num_classes=1000, variant=name))


def test_param_counts_equal_timm():
  counts = timm_golden.load("resnet", "resnetrs50")[3]["param_counts"]
  for name in ("ecaresnet26t", "ecaresnetlight", "ecaresnet50d", "resnetrs50"):
    assert _count(name) == counts[name], name
  assert set(counts) == set(resnet.VARIANTS)


@pytest.mark.slow
def test_param_counts_equal_timm_all_variants():
  for name, count in timm_golden.load("resnet", "resnetrs50")[3]["param_counts"].items():
    assert _count(name) == count, name


def test_convert_official_rejects_missing_and_unexpected_keys():
  sd = timm_golden.load("resnet", "ecaresnet26t")[0]
  timm_golden.check_converter_is_strict(resnet, sd, "layer2.0.bn3.running_var")
  params = resnet.convert_official_variables(sd)["params"]
  assert jax.tree.structure(resnet.convert_official(sd)) == jax.tree.structure(params)


TINY = dict(layers=(1, 1), widths=(4, 8), stem_width=8, stem_type="deep", avg_down=True)


def test_gradients_finite_and_nonzero_for_every_param():
  """With the scSE gate (cSE + sSE); ECA's gradient flows in the trainer test."""
  model = resnet.Model(num_classes=3, **TINY, gate="scse")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, variables["params"])   # bn3 starts at scale 0 (zero_init_last)

  def loss(p):
    out, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


X = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 32))


def _init_apply(module, x=X):
  v = module.init(jax.random.PRNGKey(3), x)
  v = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(4), p.shape), v)
  return v["params"], module.apply(v, x)


def test_sse_is_the_papers_spatial_gate():
  p, y = _init_apply(se.SpatialSE())
  q = jax.nn.sigmoid(jnp.einsum("bhwc,c->bhw", X, p["conv"]["kernel"][:, 0]))
  np.testing.assert_allclose(y, X * q[..., None], rtol=1e-5, atol=1e-6)


def test_cse_is_squeeze_then_excitation():
  p, y = _init_apply(se.ChannelSE(rd_ratio=0.25))
  z = X.mean(axis=(1, 2))
  s = jax.nn.sigmoid(jax.nn.relu(z @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"])
  assert p["fc1"]["kernel"].shape == (32, 8)
  np.testing.assert_allclose(y, X * s[:, None, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combine", ["add", "max"])
def test_scse_combines_cse_and_sse(combine):
  p, y = _init_apply(se.ConcurrentSE(rd_ratio=0.25, combine=combine))
  c = se.ChannelSE(0.25).apply({"params": p["cse"]}, X)
  s = se.SpatialSE().apply({"params": p["sse"]}, X)
  np.testing.assert_allclose(y, c + s if combine == "add" else jnp.maximum(c, s), rtol=1e-6, atol=1e-6)


def test_eca_kernel_size_and_channel_convolution():
  assert [se.eca_kernel_size(c) for c in (32, 64, 256, 512, 2048)] == [3, 3, 5, 5, 7]
  p, y = _init_apply(se.ECA())
  w, z = p["conv"], jnp.pad(X.mean(axis=(1, 2)), ((0, 0), (1, 1)))
  s = jax.nn.sigmoid(w[0] * z[:, :-2] + w[1] * z[:, 1:-1] + w[2] * z[:, 2:])
  np.testing.assert_allclose(y, X * s[:, None, None], rtol=1e-5, atol=1e-6)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="unknown attention gate"):
    jax.eval_shape(resnet.Model(num_classes=3, **TINY, gate="cbam").init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="unknown stem_type"):
    jax.eval_shape(resnet.Model(num_classes=3, layers=(1,), widths=(4,), stem_type="wide").init,
                   jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="unknown ResNet variant"):
    resnet.Model(num_classes=3, variant="resnet50")


@pytest.mark.parametrize("spec", ["runlocal", "variant=ecaresnet50d", "runlocal,gate=se",
                                  "variant=resnetrs101", "runlocal,gate=scse", "variant=resnetrs50,gate=none"])
def test_configs_build_their_models(spec):
  from effjax import config as cfg
  c = cfg.load_config_file(os.path.join(REPO, "configs", f"resnet.py:{spec}"))
  shape = (1, 32, 32, 1) if spec.startswith("runlocal") else (1, 64, 64, 3)
  assert trainer_utils.logits_shape(c, shape) == (1, c.model.num_classes)


def test_head_dropout_acts_on_pooled_features_in_training_only():
  from effjax import config as cfg
  kw = dict(num_classes=3, layers=(1, 1), widths=(4, 4), stem_width=8)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  plain, dropped = resnet.Model(**kw), resnet.Model(**kw, head_dropout=1.0)
  variables = plain.init(jax.random.PRNGKey(1), images)
  np.testing.assert_array_equal(dropped.apply(variables, images), plain.apply(variables, images))  # eval: identity
  logits, _ = dropped.apply(variables, images, train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                            mutable=["batch_stats"])
  bias = variables["params"]["fc"]["bias"]
  np.testing.assert_array_equal(logits, jnp.broadcast_to(bias, logits.shape))  # every pooled feature dropped
  c = cfg.load_config_file(os.path.join(REPO, "configs/resnet.py:variant=resnetrs350"))  # imagenet_resnetrs350_i320
  assert (c.model.head_dropout, c.model.drop_path_rate) == (0.4, 0.1)


def test_resnet_rs_input_pipeline_is_the_official_one_and_timm_on_request():
  """Official TF pipeline (classification_input.py defaults): bilinear resizes, central 0.875 of the shorter side;
  eval_pp=timm: timm's pretrained cfg for the converted checkpoints (crop_pct 0.91 at 224, bicubic)."""
  from effjax import config as cfg
  load = lambda arg: cfg.load_config_file(os.path.join(REPO, f"configs/resnet.py:{arg}"))
  official, timm_eval, eca = load("variant=resnetrs50"), load("variant=resnetrs50,eval_pp=timm"), \
      load("variant=ecaresnet50d")
  assert official.data.pp_train[0] == "inception_crop(size=160,method=bilinear)"
  assert official.data.pp_eval[0] == "center_crop(size=224,resize_small=256,method=bilinear)"
  assert timm_eval.data.pp_train == official.data.pp_train
  assert timm_eval.data.pp_eval[0] == "center_crop(size=224,resize_small=246,method=bicubic)"
  assert eca.data.pp_train[0] == "inception_crop(size=224,method=bicubic)"  # a timm model: timm's recipe
  with pytest.raises(cfg.ConfigError, match="unknown eval_pp"):
    load("variant=resnetrs50,eval_pp=tf")
