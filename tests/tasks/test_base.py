"""The shared task base: mutable collections in training only, predict's capture, padding-aware means."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from effjax.tasks import _base, classification


class _BatchNormNet(nn.Module):
  """Dense -> BatchNorm -> Dense: a model with a non-param collection ("batch_stats")."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8, name="hidden")(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(x)
    return nn.Dense(3, name="head")(x)


def _setup():
  config = ml_collections.ConfigDict(dict(model=dict(num_classes=3), task=dict()))
  task, model = classification.Task(config), _BatchNormNet()
  batch = {"image": jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 1)), "label": jnp.array([0, 1, 2, 1])}
  return task, model, batch, task.init_variables(model, jax.random.PRNGKey(1), batch)


def test_training_updates_the_non_param_collections_and_evaluation_does_not():
  task, model, batch, variables = _setup()
  _, aux = task.loss(model, variables, batch, jax.random.PRNGKey(2), train=True)
  old, new = variables["batch_stats"]["bn"]["mean"], aux["model_state"]["batch_stats"]["bn"]["mean"]
  assert not np.allclose(old, new)
  _, aux = task.loss(model, variables, batch, jax.random.PRNGKey(2), train=False)
  assert aux["model_state"] == {}


def test_predict_with_capture_returns_the_selected_module_outputs():
  task, model, batch, variables = _setup()
  logits = task.predict(model, variables, batch)
  same, intermediates = task.predict(model, variables, batch, capture=lambda module, name: module.name == "hidden")
  np.testing.assert_array_equal(logits, same)
  assert list(intermediates) == ["hidden"] and intermediates["hidden"]["__call__"][0].shape == (4, 8)


def test_padding_examples_do_not_count():
  task, model, batch, variables = _setup()
  padded = {k: jnp.concatenate([v, v[:2]]) for k, v in batch.items()}
  padded["label"] = padded["label"].at[4:].set(0)
  padded["mask"] = jnp.array([1.0, 1, 1, 1, 0, 0])
  rng = jax.random.PRNGKey(2)
  real, _ = task.loss(model, variables, batch, rng, train=False)
  with_padding, _ = task.loss(model, variables, padded, rng, train=False)
  np.testing.assert_allclose(with_padding, real, rtol=1e-6)
  np.testing.assert_allclose(_base.weighted_mean(jnp.array([[1.0, 3.0], [5.0, 7.0]]), jnp.array([[1.0], [0.0]])), 2.0)
