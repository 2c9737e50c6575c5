"""Diffusion task: schedules, prediction algebra, self-conditioning loss, DDIM/DDPM sampling, sample PNGs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from effjax.evaluators import samples as samples_lib
from effjax.models import fit_denoiser
from effjax.tasks import diffusion


def _config(**task):
  c = ml_collections.ConfigDict()
  c.task = ml_collections.ConfigDict({**dict(schedule="cosine", pred_type="eps", num_classes=3), **task})
  c.evaluator = ml_collections.ConfigDict(dict(samples=dict(num_samples=4, steps=3, methods=("ddim", "ddpm"))))
  return c


def _tiny_model(self_cond="latent"):
  return fit_denoiser.Model("(1)1(1)", 2, 16, 16, 2, 2, mlp_ratio=2, self_cond=self_cond, patch_size=2,
                            group_size=2)


@pytest.mark.parametrize("name", ["cosine", "cosine@0.2,1,1", "sigmoid@-3,3,0.9", "linear"])
def test_schedules_decrease_from_one_to_zero(name):
  gamma = np.asarray(diffusion.make_schedule(name)(jnp.linspace(0, 1, 11)))
  assert gamma[0] > 0.99 and gamma[-1] < 0.01 and np.all(np.diff(gamma) < 0)


def test_unknown_schedule_and_pred_type_are_errors():
  with pytest.raises(ValueError, match="unknown noise schedule"):
    diffusion.make_schedule("cosin")
  with pytest.raises(ValueError, match="unknown pred_type"):
    diffusion.Task(_config(pred_type="score"))


@pytest.mark.parametrize("pred_type", ["eps", "x", "v"])
def test_prediction_algebra_recovers_x0_and_eps(pred_type):
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  g = 0.3
  x_t = np.sqrt(g) * x0 + np.sqrt(1 - g) * eps
  pred = {"eps": eps, "x": x0, "v": np.sqrt(g) * eps - np.sqrt(1 - g) * x0}[pred_type]
  got_x0, got_eps = diffusion.x0_eps_from_prediction(pred, x_t, g, pred_type, clip=1.0)
  np.testing.assert_allclose(got_x0, x0, atol=1e-5)
  np.testing.assert_allclose(got_eps, eps, atol=1e-5)


@pytest.mark.slow
def test_loss_trains_and_sampler_writes_pngs(tmp_path):
  config = _config()
  task, model = diffusion.Task(config), _tiny_model()
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1)) > 0.5
  batch = {"image": images.astype(jnp.float32), "label": jnp.arange(8) % 3}
  variables = jax.jit(lambda r: task.init_variables(model, r, batch))(jax.random.PRNGKey(0))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt, rng):
    (loss, aux), grads = jax.value_and_grad(
        lambda p: task.loss(model, {"params": p}, batch, rng, train=True), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  params, opt = variables["params"], tx.init(variables["params"])
  losses = []
  for i in range(60):
    params, opt, loss = step(params, opt, jax.random.PRNGKey(i % 4))
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses

  evaluator = samples_lib.Evaluator(config, task, model)
  eval_batch = {**batch, "mask": jnp.ones((8,))}
  results = evaluator.run({"params": params}, [eval_batch], step=7, workdir=str(tmp_path))
  assert np.isfinite(results["loss"])
  from PIL import Image
  for method in ("ddim", "ddpm"):
    grid = np.asarray(Image.open(tmp_path / "samples" / f"step_7_{method}.png"), np.float32) / 255
    assert grid.shape == (19, 19)  # 2x2 grid of 8x8 with 1-pixel borders
    tiles = np.delete(np.delete(grid, [0, 9, 18], axis=0), [0, 9, 18], axis=1)
    assert abs(tiles.mean() - results[f"sample_mean_{method}"]) < 1 / 255  # the reported mean is the written images'


def test_self_conditioning_feeds_latents_back():
  """With latent self-conditioning the training loss depends on the first pass; without, it does not."""
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 4, 1))
  batch = {"image": images, "label": jnp.arange(4) % 3}
  for self_cond in ("latent", "none"):
    task, model = diffusion.Task(_config(self_cond_rate=0.5)), _tiny_model(self_cond)
    variables = jax.jit(lambda r: task.init_variables(model, r, batch))(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda p: p + 0.05, variables["params"])  # LN scale of latent_prev_ln starts at 0
    loss = lambda: jax.jit(lambda p: task.loss(model, {"params": p}, batch, jax.random.PRNGKey(1), True)[0])(params)
    with_sc = loss()
    task.self_cond_rate = 0.0
    without = loss()
    assert (abs(float(with_sc) - float(without)) > 1e-6) == (self_cond == "latent")


def test_image_grid_layout():
  grid = samples_lib.image_grid(np.ones((5, 2, 3, 3)) * 0.5, columns=3)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3) and grid[0, 0, 0] == 255 and grid[1, 1, 0] == 128


class _Oracle:
  """A 'model' that knows the clean image x0 and returns the exact ε for any x_t (and dummy latents)."""
  self_cond = "latent"

  def __init__(self, x0):
    self.x0 = x0

  def apply(self, variables, x_t, gamma, cond, latents_prev, train=False):
    g = gamma.reshape(-1, 1, 1, 1)
    latents = jnp.zeros((x_t.shape[0], 2, 1, 3)) if latents_prev is None else latents_prev + 1.0
    return (x_t - jnp.sqrt(g) * self.x0) / jnp.sqrt(1 - g), latents


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_samplers_with_an_exact_denoiser_return_the_data(method):
  task = diffusion.Task(_config(num_classes=0))
  images = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 1))
  oracle = _Oracle((images * 2 - 1) * task.b_scale)
  out = jax.jit(lambda rng: task.sample(oracle, {}, rng, images.shape, steps=10, method=method))(jax.random.PRNGKey(1))
  np.testing.assert_allclose(out, images, atol=1e-4)
