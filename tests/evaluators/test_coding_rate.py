"""Coding-rate / sparsity evaluator: official values on the golden CRATE, padding, any transformer, PNG."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax.evaluators import coding_rate
from effjax.models import crate, crate_alpha, crate_mae, vit
from effjax.tasks import classification, mae


def _config(model_kwargs, **opts):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(model_kwargs)
  c.task = ml_collections.ConfigDict()
  c.evaluator = ml_collections.ConfigDict({"coding_rate": opts})
  return c


def _evaluator(config, model):
  """The evaluator runs the model through the task's predict, here classification's."""
  return coding_rate.Evaluator(config, classification.Task(config), model)


def _golden_setup(golden):
  arrays, meta = golden("crate_small")
  k = meta["ctor"]
  kwargs = dict(num_classes=k["num_classes"], patch_size=k["patch_size"], width=k["dim"], depth=k["depth"],
                num_heads=k["heads"], head_dim=k["dim_head"])
  params = crate.convert_official({n[len("param/"):]: v for n, v in arrays.items() if n.startswith("param/")})
  images = jnp.asarray(arrays["input/img"].transpose(0, 2, 3, 1))
  return arrays, kwargs, {"params": params}, images


def test_matches_official_coding_rate_and_sparsity(golden, tmp_path):
  arrays, kwargs, variables, images = _golden_setup(golden)
  config = _config(kwargs)
  evaluator = _evaluator(config, crate.Model(**kwargs))
  # The same 4 images split over two batches, the second padded with 2 fake examples (mask 0).
  pad = jnp.concatenate([images[2:], jnp.zeros_like(images[:2])])
  batches = [{"image": images[:2], "mask": jnp.ones(2)}, {"image": pad, "mask": jnp.array([1.0, 1, 0, 0])}]
  metrics = evaluator.run(variables, batches, step=7, workdir=str(tmp_path))
  for i in range(2):
    np.testing.assert_allclose(metrics[f"coding_rate/layer{i}"], arrays["output/coding_rate_mean"][i], rtol=1e-4)
    np.testing.assert_allclose(metrics[f"coding_rate_std/layer{i}"], arrays["output/coding_rate_std"][i], rtol=1e-3)
    np.testing.assert_allclose(metrics[f"sparsity/layer{i}"], arrays["output/sparsity_mean"][i], atol=2e-3)
    np.testing.assert_allclose(metrics[f"sparsity_std/layer{i}"], arrays["output/sparsity_std"][i], atol=2e-3)
    heads = [metrics[f"coding_rate/layer{i}/head{h}"] for h in range(4)]
    np.testing.assert_allclose(sum(heads), metrics[f"coding_rate/layer{i}"], rtol=1e-5)
  assert os.path.getsize(tmp_path / "coding_rate" / "step_7.png") > 1000


def test_per_sample_values_match_official(golden):
  arrays, kwargs, variables, images = _golden_setup(golden)
  _, state = crate.Model(**kwargs).apply(variables, images, mutable=["intermediates"])
  qkv = coding_rate.select(state["intermediates"], coding_rate.DEFAULTS["subspace"])
  assert [name for name, _ in qkv] == ["layer0/qkv", "layer1/qkv"]
  for i, (_, tokens) in enumerate(qkv):
    rate = coding_rate.coding_rate(tokens.reshape(4, 17, 4, 16)).sum(axis=1)
    np.testing.assert_allclose(rate, arrays["output/coding_rate_per_sample"][i], rtol=1e-4)
  zeros = coding_rate.select(state["intermediates"], coding_rate.DEFAULTS["sparse"])
  for i, (_, x) in enumerate(zeros):
    np.testing.assert_allclose(coding_rate.sparsity(x), arrays["output/sparsity_per_sample"][i], atol=2e-3)


def test_small_gram_equals_large_gram():
  """logdet(I_N + c XXᵀ) is computed through whichever Gram matrix is smaller; both sides agree."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3, 10))  # p > N
  ours = coding_rate.coding_rate(x, eps=0.5)
  xn = np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=-1, keepdims=True)
  gram = np.einsum("bnhp,bmhp->bhnm", xn, xn)
  want = 0.5 * np.linalg.slogdet(np.eye(6) + 10 / (6 * 0.5) * gram)[1]
  np.testing.assert_allclose(ours, want, rtol=1e-5)


def test_any_transformer_vit_query_projection(tmp_path):
  kwargs = dict(num_classes=10, patch_size=4, width=16, depth=3, num_heads=2, mlp_dim=32)
  model = vit.Model(**kwargs)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(1), images)
  evaluator = _evaluator(_config(kwargs, subspace=r"attn/query$", sparse="", per_head=False), model)
  metrics = evaluator.run(variables, [{"image": images, "mask": jnp.ones(3)}], step=0, workdir=str(tmp_path))
  assert sorted(metrics) == sorted([f"coding_rate/layer{i}" for i in range(3)] +
                                   [f"coding_rate_std/layer{i}" for i in range(3)])
  _, state = model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
  query = state["intermediates"]["block2"]["attn"]["query"]["__call__"][0]
  np.testing.assert_allclose(metrics["coding_rate/layer2"], coding_rate.coding_rate(query).sum(1).mean(), rtol=1e-5)


def test_crate_alpha_sparse_code():
  kwargs = dict(num_classes=10, patch_size=4, width=16, depth=2, num_heads=2)
  model = crate_alpha.Model(**kwargs)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(1), images)
  metrics = _evaluator(_config(kwargs, plot=False), model).run(
      variables, [{"image": images, "mask": jnp.ones(2)}], step=0, workdir="")
  assert {"sparsity/layer0", "sparsity/layer1", "coding_rate/layer1/head1"} <= set(metrics)
  assert 0.0 < metrics["sparsity/layer1"] <= 1.0


def test_runs_the_model_as_the_task_predicts_mae_evaluation_masking():
  """Through mae's predict, the tokens are those of the task's fixed evaluation masking (eval_seed, mask_ratio)."""
  kwargs = dict(patch_size=4, width=16, depth=1, num_heads=2, decoder_depth=1)
  config = _config(kwargs, plot=False, per_head=False)
  config.task = ml_collections.ConfigDict(dict(mask_ratio=0.5, eval_seed=3))
  model, task = crate_mae.Model(**kwargs), mae.Task(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  variables = task.init_variables(model, jax.random.PRNGKey(1), {"image": images})
  metrics = coding_rate.Evaluator(config, task, model).run(variables, [{"image": images, "mask": jnp.ones(2)}],
                                                           step=0, workdir="")

  def rate(masking_rng):
    _, state = model.apply(variables, images, mask_ratio=0.5, rngs={"masking": masking_rng}, mutable=["intermediates"])
    return float(coding_rate.coding_rate(state["intermediates"]["layer0"]["qkv"][0].reshape(2, 17, 2, 8)).sum(1).mean())
  masking_rng, other_rng = jax.random.split(jax.random.PRNGKey(3))  # mae.Task: split(PRNGKey(eval_seed))[0]
  np.testing.assert_allclose(metrics["coding_rate/layer0"], rate(masking_rng), rtol=1e-5)
  assert abs(rate(other_rng) - metrics["coding_rate/layer0"]) > 1e-3  # the masking matters


def test_clear_errors():
  kwargs = dict(num_classes=10, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)
  model = vit.Model(**kwargs)
  with pytest.raises(ValueError, match="unknown config.evaluator.coding_rate option"):
    _evaluator(_config(kwargs, epsilon=0.1), model)
  images = jnp.ones((2, 8, 8, 1))
  evaluator = _evaluator(_config(kwargs, subspace="nothing_here$", sparse=""), model)
  with pytest.raises(ValueError, match="no intermediates match"):
    evaluator.run(model.init(jax.random.PRNGKey(0), images), [{"image": images, "mask": jnp.ones(2)}],
                  step=0, workdir="")
  with pytest.raises(ValueError, match="tokens"):
    coding_rate.coding_rate(jnp.ones((2, 3, 4)))
