"""Terminator: parameter count vs the official modules, G-IBS groups, slow loss, batch independence."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from effjax.layers import hyperzzw_norms
from effjax.models import terminator
from effjax.tasks import terminator as terminator_task

SMALL_BRANCH = dict(global_hidden=8, local_hidden=8, channel_hidden=8, interact_channel_hidden=4,
                    interact_spatial_hidden=8, omega_0=30.0)


def small_model(stats_mode="batch", **kw):
  kw = dict(dict(num_classes=5, expansions=(4, 2, 2), skips=((), (), (0,)), global_layers=(2, 1, 1),
                 dropout=(0.0, 0.1, 0.1), branch=SMALL_BRANCH, stats_mode=stats_mode), **kw)
  return terminator.Model(**kw)


def test_cifar_parameter_count_matches_official():
  model = terminator.Model(num_classes=10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 1_336_855
  assert "batch_stats" not in shapes  # fidelity mode keeps no statistics


def test_gibs_groups_are_standardised():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 24)) * 3.0 + jnp.arange(24.0)
  layer = hyperzzw_norms.GroupIBS(groups=4)
  y = np.asarray(layer.apply(layer.init(jax.random.PRNGKey(1), x), x)).reshape(6, 5, 5, 4, 6)
  for g in range(4):
    group = y[..., g, :]
    if g % 2 == 0:   # batch standardisation: per channel over batch and space
      np.testing.assert_allclose(group.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
      np.testing.assert_allclose(group.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
    else:            # instance standardisation: per example and channel over space
      np.testing.assert_allclose(group.mean(axis=(1, 2)), 0.0, atol=1e-5)
      np.testing.assert_allclose(group.var(axis=(1, 2)), 1.0, atol=1e-3)
    assert not np.allclose(group.mean(axis=(1, 2)), 0.0, atol=1e-3) or g % 2 == 1


def test_gibs_rejects_bad_group_count():
  layer = hyperzzw_norms.GroupIBS(groups=5)
  with pytest.raises(ValueError, match="divisible"):
    layer.init(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 12)))


def test_slow_loss_matches_direct_computation():
  rng = np.random.default_rng(0)
  kernels = [rng.normal(size=(6, 6, c)).astype(np.float32) for c in (3, 12, 36)]
  direct = 0.0
  for i in range(1, 3):
    for j in range(i):
      repeats = kernels[i].shape[-1] // kernels[j].shape[-1]
      tiled = np.concatenate([kernels[j]] * repeats, axis=-1)
      direct += np.mean((tiled - kernels[i]) ** 2)
  np.testing.assert_allclose(terminator_task.slow_loss([jnp.asarray(k) for k in kernels]), direct, rtol=1e-5)


def one_block(stats_mode):
  return small_model(stats_mode, expansions=(4,), skips=((),), global_layers=(1,), dropout=(0.1,))


@pytest.fixture(scope="module")
def trained_accumulated():
  """A one-block 2D model in accumulated mode after three training-mode passes (statistics updated)."""
  model = one_block("accumulated")
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
  variables = jax.jit(lambda: model.init(jax.random.key(1, impl="unsafe_rbg"), x))()
  assert "batch_stats" in variables
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.PRNGKey(2)})[1])
  for i in range(3):
    variables = {**variables, **step(variables, x + 0.1 * i)}
  return model, variables


def test_accumulated_mode_prediction_independent_of_batch(trained_accumulated):
  model, variables = trained_accumulated
  predict = jax.jit(lambda x: model.apply(variables, x))
  data = jax.random.normal(jax.random.PRNGKey(3), (6, 8, 8, 3))
  alone = np.concatenate([np.asarray(predict(data[i:i + 1])) for i in range(6)])
  rng = np.random.default_rng(0)
  for _ in range(3):  # the same examples inside shuffled batches with other, differently scaled examples
    others = np.asarray(jax.random.normal(jax.random.PRNGKey(int(rng.integers(1 << 30))), (2, 8, 8, 3)) * 4)
    batch = np.concatenate([np.asarray(data), others])
    perm = rng.permutation(len(batch))
    out = np.asarray(predict(jnp.asarray(batch[perm])))
    inverse = np.argsort(perm)[:6]
    np.testing.assert_allclose(out[inverse], alone, rtol=1e-5, atol=1e-5)


def test_fidelity_mode_depends_on_batch(trained_accumulated):
  _, variables = trained_accumulated
  model = one_block("batch")
  predict = jax.jit(lambda x: model.apply({"params": variables["params"]}, x))
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
  full = np.asarray(predict(x))
  other = np.asarray(predict(jnp.concatenate([x[:4], 3.0 * x[4:]])))
  assert not np.allclose(full[:4], other[:4], atol=1e-4)


@pytest.mark.slow
def test_1d_model_shapes_gradients_and_task_loss():
  model = small_model(expansions=(12, 2), skips=((), ()), global_layers=(1, 1), dropout=(0.0, 0.1))
  batch = {"image": jax.random.normal(jax.random.PRNGKey(0), (4, 49, 1)),
           "label": jnp.array([0, 1, 2, 3])}
  variables = jax.jit(lambda: model.init(jax.random.key(1, impl="unsafe_rbg"), batch["image"]))()
  logits, kernels = jax.eval_shape(lambda v, x: model.apply(v, x, return_hyper_kernels=True), variables,
                                   batch["image"])  # shapes only: the loss below runs the model
  assert logits.shape == (4, 5)
  assert [k.shape for k in kernels] == [(49, 1), (49, 12)]
  config = ml_collections.ConfigDict(dict(model=dict(num_classes=5), task=dict(label_smoothing=0.09)))
  task = terminator_task.Task(config)

  def loss_fn(params):
    return task.loss(model, {"params": params}, batch, jax.random.PRNGKey(2), train=True)

  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  m = aux["metrics"]
  np.testing.assert_allclose(loss, m["ce"] + m["slow_loss"] + m["reg_loss"], rtol=1e-5)
  assert float(m["slow_loss"]) > 0 and float(m["reg_loss"]) > 0
  flat = traverse_util.flatten_dict(grads, sep="/")
  assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
  assert float(jnp.abs(flat["blocks_0/fast_multi_branch/slow_net_g/output_linear/kernel"]).sum()) > 0


def test_norm_penalty_selects_official_groups():
  params = {"blocks_0": {"fast_multi_branch": {
      "bottleneck_layer": {"kernel": jnp.full((2, 2), 1.0)},             # fast: norm 2
      "slow_net_g": {"linears_0": {"kernel": jnp.full((1, 4), 1.0)}},    # slow 2D weight: norm 2
      "channel_mixer_hci": {"slow_net_gc": {"linears_0": {"kernel": jnp.ones((3, 3))}}}},  # neither
      "bias": jnp.ones((1,))}, "out_layer": {"kernel": jnp.ones((2, 2))}}                   # neither
  got = terminator_task.norm_penalty(params, r"fast", r"slow_net_(g|gs|l\d)/.*kernel$", 0.5)
  np.testing.assert_allclose(got, 2.0 + 0.5 * 2.0, rtol=1e-6)


def _official_name(path, value):
  """effjax param path -> official PyTorch name and array layout (the inverse of convert_official)."""
  name = re.sub(r"(blocks|linears|filters|fast_linears_x)_(\d+)", r"\1.\2", path.replace("/", "."))
  name = re.sub(r"(slow_net_(g|gc|gs|l\d))\.", r"\1.Kernel.", name)
  leaf = name.rsplit(".", 1)[-1]
  if leaf == "kernel":
    value = value.T.reshape(value.shape[1], value.shape[0], *(1,) * (0 if "out_layer" in name else 2))
    name = name[:-len("kernel")] + "weight"
  elif leaf in ("bias_p", "bias_pk", "fast_bias_p"):
    value = value.reshape(1, 1, *value.shape)
  return name, value


def test_convert_official_roundtrip():
  model = small_model()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), jnp.zeros((2, 8, 8, 3))))
  variables = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32), variables)
  flat = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
  state_dict = dict(_official_name(k, np.asarray(v)) for k, v in flat.items())
  assert "blocks.0.fast_multi_branch.slow_net_g.Kernel.filters.1.linear.weight" in state_dict
  state_dict["blocks.0.fast_multi_branch.slow_net_g.train_length"] = np.zeros(1)
  converted = traverse_util.flatten_dict(terminator.convert_official(state_dict), sep="/")
  assert converted.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(converted[k], flat[k])


@pytest.mark.parametrize("shape", [(2, 49, 3), (2, 8, 8, 3)])
def test_training_step_lowers_for_tpu_and_gpu(shape):
  model = one_block("accumulated")
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))

  def grads(variables, x):
    def loss(params):
      logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.PRNGKey(0)})
      return logits.sum(), state
    return jax.grad(loss, has_aux=True)(variables["params"])

  exported = jax.export.export(jax.jit(grads), platforms=["tpu", "cuda"])(
      variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  assert exported.platforms == ("tpu", "cuda")
