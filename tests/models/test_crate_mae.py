"""CRATE-MAE: golden equivalence with the official PyTorch model, masking, the mae task and its evaluator."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax.evaluators import reconstruction
from effjax.layers.patches import patchify, unpatchify
from effjax.models import crate_mae
from effjax.tasks import mae

TOL = dict(rtol=1e-5, atol=1e-5)  # reference README section 2


def _golden(golden):
  arrays, meta = golden("crate_ae_small")
  c = meta["ctor"]
  model = crate_mae.Model(patch_size=c["patch_size"], width=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                          decoder_depth=c["decoder_depth"], decoder_num_heads=c["decoder_num_heads"], lmbda=c["lambd"])
  official = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  images = jnp.asarray(arrays["input/imgs"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  return arrays, model, official, images


def test_golden_pred_loss_masks_and_intermediates(golden):
  arrays, model, official, images = _golden(golden)
  params = crate_mae.convert_official(official)
  ratio = float(arrays["input/mask_ratio"])
  out, state = model.apply({"params": params}, images, mask_ratio=ratio, noise=jnp.asarray(arrays["input/noise"]),
                           mutable=["intermediates"])
  inter = jax.tree.map(lambda t: t[0], state["intermediates"], is_leaf=lambda t: isinstance(t, tuple))
  np.testing.assert_allclose(out["pred"], arrays["output/pred"], rtol=0, atol=1e-5)
  np.testing.assert_array_equal(out["mask"], arrays["output/mask"])
  np.testing.assert_array_equal(out["ids_restore"], arrays["output/ids_restore"])
  mask, ids_restore, ids_keep = crate_mae.random_masking(jnp.asarray(arrays["input/noise"]), ratio)
  np.testing.assert_array_equal(ids_keep, arrays["output/ids_keep"])
  np.testing.assert_array_equal(np.argsort(arrays["input/noise"], axis=1), arrays["output/ids_shuffle"])
  for norm_pix, key in [(False, "output/loss"), (True, "output/loss_norm_pix")]:
    loss = mae.reconstruction_loss(out["pred"], images, out["mask"], 8, norm_pix)
    np.testing.assert_allclose(loss, arrays[key], rtol=1e-5)
  np.testing.assert_allclose(patchify(images, 8), arrays["output/target_patchified"], rtol=0, atol=0)
  ours = {"patch_embed": inter["patch_tokens"], "latent": inter["latent"]}
  for i in range(2):
    ours[f"encoder_block{i}_after_attn_residual"] = inter[f"layer{i}"]["after_attn_residual"]
    ours[f"encoder_block{i}"] = inter[f"layer{i}"]["after_ista"]
    ours[f"decoder_block{i}_after_dict"] = inter[f"decoder_layer{i}"]["after_dict"]
    ours[f"decoder_block{i}"] = inter[f"decoder_layer{i}"]["output"]
  for name, value in ours.items():
    np.testing.assert_allclose(value, arrays[f"output/{name}"], **TOL, err_msg=name)


def test_convert_official_checks_fixed_pos_embed_and_skips_decoder_embed(golden):
  _, _, official, _ = _golden(golden)
  params = crate_mae.convert_official(official)
  assert "decoder_embed" not in params and "pos_embed" not in params
  bad = dict(official, decoder_pos_embed=official["decoder_pos_embed"] + 0.1)
  with pytest.raises(ValueError, match="decoder_pos_embed is not the fixed"):
    crate_mae.convert_official(bad)


def _tiny_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(patch_size=4, width=16, depth=1, num_heads=2, decoder_depth=1))
  c.task = ml_collections.ConfigDict(dict(mask_ratio=0.75))
  c.evaluator = ml_collections.ConfigDict()
  return c


def test_task_masking_is_reproducible_from_rng_and_loss_is_on_removed_patches():
  config = _tiny_config()
  task, model = mae.Task(config), crate_mae.Model(**config.model)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
  batch = {"image": images}
  variables = task.init_variables(model, jax.random.PRNGKey(1), batch)
  forward = jax.jit(lambda rng: task.forward(model, variables, images, rng))
  out_a, out_b, out_c = forward(jax.random.PRNGKey(5)), forward(jax.random.PRNGKey(5)), forward(jax.random.PRNGKey(6))
  np.testing.assert_array_equal(out_a["mask"], out_b["mask"])
  assert not np.array_equal(out_a["mask"], out_c["mask"])
  np.testing.assert_array_equal(out_a["mask"].sum(axis=1), 16 - int(16 * 0.25))
  loss, aux = jax.jit(lambda: task.loss(model, variables, batch, jax.random.PRNGKey(5), train=True))()
  per_patch = np.mean((np.asarray(out_a["pred"]) - np.asarray(patchify(images, 4))) ** 2, axis=-1)
  np.testing.assert_allclose(loss, (per_patch * out_a["mask"]).sum() / out_a["mask"].sum(), rtol=1e-5)
  assert np.isfinite(aux["metrics"]["mse_visible"])
  grads = jax.jit(jax.grad(lambda p: task.loss(model, {"params": p}, batch, jax.random.PRNGKey(5), True)[0]))(
      variables["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="unknown config.task option"):
    mae.Task(ml_collections.ConfigDict(dict(model=config.model, task=dict(mask_raito=0.5))))


def test_reconstruction_evaluator_metrics_and_png(tmp_path):
  config = _tiny_config()
  task, model = mae.Task(config), crate_mae.Model(**config.model)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
  variables = task.init_variables(model, jax.random.PRNGKey(1), {"image": images})
  evaluator = reconstruction.Evaluator(config, task, model)
  batches = [{"image": images, "mask": jnp.array([1.0, 1.0, 1.0, 0.0])}]
  metrics = evaluator.run(variables, batches, step=3, workdir=str(tmp_path))
  out = task.predict(model, variables, {"image": images[:3]})
  expected = mae.reconstruction_loss(out["pred"], images[:3], out["mask"], 4)
  np.testing.assert_allclose(metrics["mse_masked"], expected, rtol=1e-5)
  assert metrics["examples"] == 3.0
  assert os.path.getsize(tmp_path / "reconstruction" / "step_3.png") > 1000


def test_unpatchify_inverts_patchify():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
  np.testing.assert_array_equal(unpatchify(patchify(images, 4), 4, (2, 3), 3), images)
