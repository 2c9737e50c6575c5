"""ConvNeXt and ConvNeXt-DCLS: timm golden equivalence, timm parameter counts, DCLS, gradients, trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import dcls
from effjax.models import convnext

import timm_golden

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = {"stem": "stem", "stages.0": "stage0", "stages.2": "stage2", "stages.3": "stage3"}


@pytest.mark.parametrize("key", ["linear_mlp", "conv_mlp"])
def test_golden_logits_and_intermediates(key):
  sd, images, outputs, meta = timm_golden.load("convnext", key)
  kw = meta["models"][key]["kwargs"]
  model = convnext.Model(num_classes=kw["num_classes"], depths=kw["depths"], widths=kw["dims"])
  timm_golden.check_outputs(model, {"params": convnext.convert_official(sd)}, meta, key, images, outputs, HOOKS)


def test_param_counts_equal_timm():
  counts = timm_golden.load("convnext", "linear_mlp")[3]["param_counts"]
  for name in ("convnext_atto", "convnext_tiny", "convnext_base"):
    model = convnext.Model(num_classes=1000, variant=name[len("convnext_"):])
    assert timm_golden.param_count(model) == counts[name], name
  assert set(counts) == {f"convnext_{v}" for v in convnext.VARIANTS}


@pytest.mark.slow
def test_param_counts_equal_timm_all_variants():
  counts = timm_golden.load("convnext", "linear_mlp")[3]["param_counts"]
  for name, count in counts.items():
    assert timm_golden.param_count(convnext.Model(num_classes=1000, variant=name[len("convnext_"):])) == count, name


def test_convert_official_rejects_missing_and_unexpected_keys():
  timm_golden.check_converter_is_strict(convnext, timm_golden.load("convnext", "conv_mlp")[0], "head.fc.bias")


DCLS = dict(kernel_count=4, dilated_kernel_size=5, version="gauss")
TINY = dict(depths=(1, 1), widths=(8, 16), patch_size=2)


def test_dcls_model_equals_dense_model_with_the_constructed_kernels():
  """ConvNeXt-DCLS is ConvNeXt whose depthwise kernel is K(weight, P, SIG) (effjax.kernels.dcls)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  model = convnext.Model(num_classes=4, **TINY, dcls=DCLS)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
  assert params["stage1_block0"]["conv_dw"]["P"].shape == (2, 16, 1, 4)
  dense = jax.tree.map(lambda a: a, params)
  for name in ("stage0_block0", "stage1_block0"):
    p = dense[name].pop("conv_dw")
    k = dcls.construct_kernel(p["weight"], p["P"], p["SIG"], (5, 5), "gauss")    # [C, 1, 5, 5]
    dense[name].update(kernel=k[:, 0].transpose(1, 2, 0), bias=p["bias"])
  want = jax.jit(convnext.Model(num_classes=4, **TINY, kernel_size=5).apply)({"params": dense}, x)
  np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, x), want, rtol=1e-5, atol=1e-5)


def test_gradients_finite_and_nonzero_for_every_param():
  """With DCLS (weights, positions and widths); the dense path trains in the trainer test."""
  model = convnext.Model(num_classes=3, **TINY, ls_init_value=0.5, dcls=DCLS)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="not divisible by the total stride"):
    convnext.Model(num_classes=3, **TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  with pytest.raises(ValueError, match="unknown ConvNeXt variant"):
    convnext.Model(num_classes=3, variant="huge")


@pytest.mark.parametrize("spec", ["runlocal", "runlocal,dcls=True", "variant=tiny", "variant=tiny,dcls=True"])
def test_configs_build_their_models(spec):
  from effjax import components, config as cfg
  c = cfg.load_config_file(os.path.join(REPO, f"configs/convnext.py:{spec}"))
  model = components.load("models", c.model_name).Model(**c.model)
  assert (model.dcls is not None) == ("dcls" in spec)
  assert c.optimizer.dcls_clamp == (c.model.dcls.dilated_kernel_size if "dcls" in spec else 0)


def test_dcls_config_keeps_positions_inside_the_kernel():
  """convnext.param_constraint clamps the DCLS positions after every update of the trainer's step, as the official
  loop does; without it (dcls_clamp = 0) the same step moves them out of the 7×7 kernel."""
  from effjax import config as cfg, optim, train
  from effjax.models import convnext
  from effjax.tasks import classification

  def max_position(dcls_clamp):
    c = cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:runlocal,dcls=True"))
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.dcls_clamp = 100.0, 0, dcls_clamp
    c.model.update(depths=(1, 1), widths=(8, 16), ls_init_value=1.0)  # gradients for the positions (1e-6: ~1e-10)
    model, task = convnext.Model(**c.model), classification.Task(c)
    tx, schedule = optim.make_optimizer(c.optimizer, 10, 10)
    batch = {"image": jax.random.normal(jax.random.key(2), (2, 16, 16, 1)), "label": jnp.array([0, 1])}
    variables = dict(task.init_variables(model, jax.random.key(0), batch))
    params = variables.pop("params")
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "model_state": variables, "ema_params": {}, "rng": jax.random.key(1)}
    new, _ = jax.jit(train.make_train_step(c, model, task, tx, schedule, jnp.float32))(state, batch)
    positions = [v for p, v in jax.tree_util.tree_leaves_with_path(new["params"])
                 if jax.tree_util.keystr(p).endswith("['P']")]
    assert positions
    return max(float(jnp.max(jnp.abs(v))) for v in positions)

  assert max_position(0) > 3.0
  assert max_position(7) == 3.0  # dks 7: ±3
  assert convnext.param_constraint(cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:runlocal"))) is None


def _official_state_dict(params, depths):
  """An official-layout (timm names) state dict of a shared-position ConvNeXt-DCLS: P repeated in every block."""
  ln = lambda p: {"weight": p["scale"], "bias": p["bias"]}
  conv = lambda p: {"weight": np.transpose(p["kernel"], (3, 2, 0, 1)), "bias": p["bias"]}
  dense = lambda p: {"weight": np.transpose(p["kernel"]), "bias": p["bias"]}
  parts = {"stem.0": conv(params["stem_conv"]), "stem.1": ln(params["stem_norm"]), "head.norm": ln(params["head_norm"]),
           "head.fc": dense(params["head"])}
  for i, depth in enumerate(depths):
    if i:
      parts.update({f"stages.{i}.downsample.0": ln(params[f"stage{i}_down_norm"]),
                    f"stages.{i}.downsample.1": conv(params[f"stage{i}_down"])})
    for j in range(depth):
      b, pre = params[f"stage{i}_block{j}"], f"stages.{i}.blocks.{j}"
      parts.update({f"{pre}.norm": ln(b["norm"]), f"{pre}.mlp.fc1": dense(b["fc1"]), f"{pre}.mlp.fc2": dense(b["fc2"]),
                    f"{pre}.conv_dw": dict(b["conv_dw"], P=params[f"stage{i}_dcls_P"]), pre: {"gamma": b["gamma"]}})
  return {f"{k}.{n}": np.asarray(v) for k, d in parts.items() for n, v in d.items()}


def test_shared_positions_load_official_layout():
  """The official ConvNeXt-dcls shares P [2, C, 1, K] across a stage's blocks and its checkpoints repeat it per block:
  one stage{i}_dcls_P here, and the official layout converts back to the same params; unequal copies are an error."""
  depths = (2, 1)
  model = convnext.Model(num_classes=3, depths=depths, widths=(8, 16), patch_size=2,
                         dcls=dict(DCLS, shared_positions=True, init_std=0.02))
  params = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))["params"])
  assert params["stage0_dcls_P"].shape == (2, 8, 1, 4) and "P" not in params["stage0_block1"]["conv_dw"]
  assert abs(params["stage1_block0"]["conv_dw"]["weight"].std() - 0.02) < 0.01
  sd = _official_state_dict(params, depths)
  back = convnext.convert_official(sd)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  assert "P" in convnext.convert_official(sd, shared_positions=False)["stage0_block1"]["conv_dw"]
  sd["stages.0.blocks.1.conv_dw.P"] = sd["stages.0.blocks.1.conv_dw.P"] + 1.0
  with pytest.raises(ValueError, match="stage 0 has different DCLS positions"):
    convnext.convert_official(sd, shared_positions=True)


def test_dcls_recipe_positions_without_decay_at_5x_lr():
  """configs/convnext.py:dcls=True follows the official optimiser groups: P (shared or per block) gets no weight
  decay and 5x the learning rate; the DCLS weights and convolution kernels are decayed at 1x."""
  from effjax import config as cfg, optim
  c = cfg.load_config_file(os.path.join(REPO, "configs/convnext.py:dcls=True"))
  assert c.model.dcls.shared_positions and c.model.dcls.init_std == 0.02
  tx, _ = optim.make_optimizer(c.optimizer, 100, 10)
  params = {"stage0_dcls_P": jnp.ones((2, 2)), "stage0_block0": {"conv_dw": {"P": jnp.ones((2, 2)),
                                                                             "weight": jnp.ones((2, 2))}}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(3):  # past the first step (lr 0 at step 0 of the warm-up)
    updates, state = tx.update(grads, state, params)
  no_decay = lambda u: float(u.mean())
  p_shared, p_block = no_decay(updates["stage0_dcls_P"]), no_decay(updates["stage0_block0"]["conv_dw"]["P"])
  w = updates["stage0_block0"]["conv_dw"]["weight"]
  assert p_shared == p_block != 0.0
  lr_w_only = float(w.mean()) + c.optimizer.weight_decay * float(optim.make_schedule(c.optimizer, 100, 10)(2))
  assert np.isclose(p_shared, 5 * lr_w_only, rtol=1e-5)
