"""DeepCache for the FIT denoiser: the cached call reuses the latent path exactly, the sampler's cache schedule
(full call on steps i mod k = 0) against a hand-written loop, interval 1 = the plain sampler, bad intervals."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax.models import fit_denoiser
from effjax.tasks import diffusion

STEPS, SHAPE = 5, (2, 8, 8, 1)


@pytest.fixture(scope="module")
def setup():
  model = fit_denoiser.Model("(1)1(1)1(1)", 2, 16, 16, 2, 2, mlp_ratio=2, patch_size=2, group_size=2)
  c = ml_collections.ConfigDict(dict(task=dict(schedule="cosine", pred_type="eps", num_classes=3)))
  task = diffusion.Task(c)
  batch = {"image": jnp.zeros(SHAPE), "label": jnp.arange(2)}
  # + 0.05: a non-zero self-conditioning LN scale, so that the fed-back latents matter.
  variables = jax.jit(lambda r: jax.tree.map(lambda a: a + 0.05, task.init_variables(model, r, batch)))(
      jax.random.PRNGKey(0))
  # XLA's default CPU emitters (tests/conftest.py turns them off for compile speed): with them the cached call's
  # shallow path is summed exactly as the full call's, which test_cached_call_reuses_the_latent_path_exactly checks.
  default_emitters = {"xla_cpu_use_fusion_emitters": True}
  full = jax.jit(lambda *a: model.apply(variables, *a, mutable=["latent_cache"]), compiler_options=default_emitters)
  cached = jax.jit(lambda *a, cache: model.apply(variables, *a, latent_cache=cache), compiler_options=default_emitters)
  return model, task, variables, full, cached


def _reference_loop(setup, rng, labels, guidance, interval):
  """DDIM with latent self-conditioning, step by step in Python: full calls on i % interval == 0."""
  _, task, _, full, cached = setup
  n = SHAPE[0]
  cond = jax.nn.one_hot(labels, 3)
  x = jax.random.normal(jax.random.split(rng)[0], SHAPE)
  latents, caches, x0 = None, {}, None
  for i in range(STEPS):
    g_now, g_next = task.gamma(1.0 - i / STEPS), task.gamma(max(1.0 - (i + 1) / STEPS, 0.0))
    gam = jnp.full((n,), g_now)
    lat_in = jnp.zeros((n, 4, 2, 16)) if latents is None else latents
    preds = {}
    for key, c in (("cond", cond), ("free", cond * 0.0)):
      if key == "free" and guidance == 0:
        continue
      if i % interval == 0:
        (preds[key], out_latents), state = full(x, gam, c, lat_in)
        caches[key] = state["latent_cache"]
      else:
        preds[key], out_latents = cached(x, gam, c, lat_in, cache=caches[key])
      if key == "cond":
        new_latents = out_latents
    pred = preds["cond"] if guidance == 0 else (1 + guidance) * preds["cond"] - guidance * preds["free"]
    x0, eps = diffusion.x0_eps_from_prediction(pred, x, g_now, "eps", 1.0)
    x = jnp.sqrt(g_next) * x0 + jnp.sqrt(1.0 - g_next) * eps
    latents = new_latents
  return jnp.clip(x0 / 2.0 + 0.5, 0.0, 1.0)


def test_cached_call_reuses_the_latent_path_exactly(setup):
  model, _, variables, _, _ = setup
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  x, lat = jax.random.normal(k[0], SHAPE), jax.random.normal(k[1], (2, 4, 2, 16))
  t, cond = jnp.array([0.3, 0.8]), jax.nn.one_hot(jnp.arange(2), 3)
  (full, full_lat), state = setup[3](x, t, cond, lat)
  cache = state["latent_cache"]
  assert sorted(cache) == ["block0", "block1"] and cache["block0"].shape == (2 * 4, 2, 16)
  # Same tokens: identical output; other time, labels and latents_prev are not even read on a cached call.
  cached, cached_lat = setup[4](x, 1.0 - t, cond[::-1], lat * 0, cache=cache)
  np.testing.assert_allclose(cached, full, atol=1e-6)
  np.testing.assert_array_equal(cached_lat, full_lat)
  # New tokens: only the shallow path is recomputed, so the output moves, and the cached call does fewer matmuls.
  x2 = x + 0.5 * jax.random.normal(k[2], SHAPE)
  assert not np.allclose(setup[4](x2, t, cond, lat, cache=cache)[0], full, atol=1e-3)
  dots = lambda **kw: str(jax.make_jaxpr(lambda v: model.apply(v, x, t, cond, lat, **kw))(variables)).count(
      "dot_general")
  assert dots(latent_cache=cache) < dots() // 2


class _Uncached:
  """The denoiser behind a call without `latent_cache`: the sampler takes its plain path (no recording, no cond)."""

  def __init__(self, model):
    self.model, self.self_cond = model, model.self_cond

  def __call__(self, images, time, cond=None, latents_prev=None, train=False):
    raise NotImplementedError  # only the signature is read; the sampler calls apply

  def apply(self, variables, *args, **kwargs):
    return self.model.apply(variables, *args, **kwargs)


@pytest.mark.parametrize("interval,guidance", [(1, 0.0), (2, 1.5)])
def test_sampler_cache_schedule_matches_a_hand_loop(setup, interval, guidance):
  model, task, variables, _, _ = setup
  rng, labels = jax.random.PRNGKey(2), jnp.array([0, 2])
  sample = lambda m, k: jax.jit(lambda v: task.sample(m, v, rng, SHAPE, steps=STEPS, labels=labels,
                                                      guidance=guidance, cache_interval=k))(variables)
  got = sample(model, interval)
  # The hand loop runs each network call as its own jit: float32 rounding differs, amplified by 1/√γ near t = 1.
  np.testing.assert_allclose(got, _reference_loop(setup, rng, labels, guidance, interval), atol=2e-4)
  plain = sample(_Uncached(model), 1)
  if interval == 1:  # the caching sampler at interval 1 is the plain sampler
    np.testing.assert_allclose(got, plain, atol=1e-6)
  else:  # cached steps change the sample
    assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-3


def test_bad_cache_intervals_are_errors(setup):
  model, task, variables, _, _ = setup
  for bad in (0, -2, 1.5, True, "2"):
    with pytest.raises(ValueError, match="cache_interval must be an integer >= 1"):
      task.sample(model, variables, jax.random.PRNGKey(0), SHAPE, steps=2, labels=jnp.arange(2), cache_interval=bad)

  class NoCache:
    def __call__(self, x, gamma, cond=None, latents_prev=None, train=False):
      return x, None
  with pytest.raises(ValueError, match="needs a model with a latent feature cache"):
    task.sample(NoCache(), {}, jax.random.PRNGKey(0), SHAPE, steps=2, labels=jnp.arange(2), cache_interval=2)
