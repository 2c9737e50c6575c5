"""Optimizers, schedules, decay masks, clipping and annealed gradient noise (effjax/optim.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effjax import optim, train_config


def _opt(**overrides):
  opt = train_config.base_config().optimizer
  opt.update(dict(schedule="constant", weight_decay=0.0, decay_mask="all"))
  opt.update(overrides)
  return opt


def _params():
  return {"dense": {"kernel": jnp.array([[1.0, -2.0, 0.5], [0.3, 0.0, -1.5]]), "bias": jnp.array([0.2, -0.7, 1.1])}}


def _quadratic(params):
  return sum(jnp.sum((x - 0.25) ** 2) for x in jax.tree.leaves(params))


def _run(tx, params, grads_fn, steps):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(steps):
    updates, state = update(grads_fn(params), state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_each_optimizer_decreases_a_quadratic(name):
  tx, _ = optim.make_optimizer(_opt(name=name, lr=0.02, weight_decay=1e-4,
                                    decay_mask="no_bias_norm", grad_clip_norm=5.0), 100, 10)
  params = _params()
  start = float(_quadratic(params))
  end = float(_quadratic(_run(tx, params, jax.grad(_quadratic), 10)))
  assert end < 0.95 * start, (name, start, end)


def _kar3_reference(theta, lr, b1, b2, wd, steps):
  """numpy Kar3: step with the old moments, then update them; gradient of Σ a·(θ - c)²."""
  a, c = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.3, -0.2, 0.1, 0.05])
  m1, m2, path = np.zeros_like(theta), np.zeros_like(theta), []
  for _ in range(steps):
    g = 2 * a * (theta - c)
    theta = theta - lr * (np.sign(g) + np.sign(m1) + np.sign(m2) + wd * theta)
    m1, m2 = b1 * m1 + (1 - b1) * g, b2 * m2 + (1 - b2) * g
    path.append(theta.copy())
  return path, (lambda t: 2 * jnp.asarray(a, jnp.float32) * (t - jnp.asarray(c, jnp.float32)))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_kar3_matches_its_formula_step_by_step(wd):
  theta0, lr = np.array([0.5, -0.4, 0.12, 0.3]), 0.01
  expected, grad = _kar3_reference(theta0, lr, 0.5, 0.95, wd, steps=8)
  # the toy gradient changes sign during the run, so the three signs disagree on some steps
  signs = [np.sign(expected[i + 1] - expected[i]) for i in range(len(expected) - 1)]
  assert any((s != signs[0]).any() for s in signs)
  tx, _ = optim.make_optimizer(_opt(name="kar3", lr=lr, b1=0.5, b2=0.95, weight_decay=wd), 100, 10)
  theta = jnp.asarray(theta0, jnp.float32)
  state, update = tx.init(theta), jax.jit(tx.update)
  for i in range(8):
    updates, state = update(grad(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(np.asarray(theta), expected[i], atol=1e-6, err_msg=f"step {i}")


def test_lion_matches_its_formula():
  b1, b2, lr, wd = 0.9, 0.99, 0.1, 0.5
  theta0 = np.array([[1.0, -1.0], [2.0, 0.5]])
  g1, g2 = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[-0.05, -1.0], [0.02, -4.0]])
  tx, _ = optim.make_optimizer(_opt(name="lion", lr=lr, b1=b1, b2=b2, weight_decay=wd), 100, 10)
  theta, state = jnp.asarray(theta0, jnp.float32), tx.init(jnp.asarray(theta0, jnp.float32))
  m, expected = np.zeros_like(theta0), theta0
  for g in (g1, g2):
    expected = expected - lr * (np.sign(b1 * m + (1 - b1) * g) + wd * expected)
    m = b2 * m + (1 - b2) * g
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, theta)
    theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(np.asarray(theta), expected, atol=1e-6)
  # second step: the interpolation b1·m + (1-b1)·g flips the sign of g for the small entries
  assert (np.sign(b1 * (1 - b2) * g1 + (1 - b1) * g2) != np.sign(g2)).any()


@pytest.mark.parametrize("name,values", [
    ("warmup_cosine", {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.1 + 0.45 * (1 + np.cos(np.pi / 4)), 110: 0.1, 500: 0.1}),
    ("warmup_linear", {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.775, 110: 0.1, 500: 0.1}),
    ("warmup_constant", {0: 0.0, 5: 0.5, 10: 1.0, 35: 1.0, 110: 1.0}),
    ("warmup_rsqrt", {0: 0.0, 10: 1.0, 40: 0.5, 90: 1 / 3}),
])
def test_schedule_values(name, values):
  peak = 2.0
  _, schedule = optim.make_optimizer(_opt(schedule=name, lr=peak, warmup_steps=10, end_lr_factor=0.1), 110, 7)
  for step, factor in values.items():
    assert float(schedule(step)) == pytest.approx(peak * factor, rel=1e-6, abs=1e-7), (name, step)
  assert float(jax.jit(schedule)(jnp.int32(10))) == pytest.approx(peak)


def test_schedule_warmup_epochs_and_errors():
  _, schedule = optim.make_optimizer(_opt(schedule="warmup_cosine", warmup_epochs=2.5), 100, 4)
  assert float(schedule(5)) == pytest.approx(0.5e-3) and float(schedule(10)) == pytest.approx(1e-3)
  _, schedule = optim.make_optimizer(_opt(schedule="constant"), 100, 4)
  assert float(schedule(0)) == float(schedule(99)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="not both"):
    optim.make_optimizer(_opt(schedule="warmup_cosine", warmup_steps=5, warmup_epochs=1.0), 100, 4)
  with pytest.raises(ValueError, match="warmup_constant"):
    optim.make_optimizer(_opt(schedule="constant", warmup_steps=5), 100, 4)


def _model_like_params():
  z = lambda shape: np.zeros(shape, np.float32)
  return {
      "patch_embed": {"kernel": z((4, 4, 3, 8)), "bias": z((8,))},
      "cls": z((1, 1, 8)), "pos_embedding": z((1, 5, 8)), "latent_pos_emb": z((6, 8)), "mask_token": z((1, 1, 8)),
      "encoder": {"block0": {"ln1": {"scale": z((8,)), "bias": z((8,))},
                             "attn": {"qkv": {"kernel": z((8, 24))}, "rel_bias": z((3, 9))},
                             "mha_ln": {"scale": z((8,))}}},
      "BatchNorm_0": {"scale": z((8,)), "bias": z((8,))},
      "group_norm_2d": {"scale": z((4, 8))},      # a norm with a multi-axis scale
      "slow_net": {"bias_p": z((4, 4)), "layers_0": {"kernel": z((2, 16))}},
      "token_embedding": z((10, 8)), "temperature": z(()), "layer_scale": {"gamma": z((8,))},
      "head": {"kernel": z((8, 3)), "bias": z((3,))},
  }


def test_no_bias_norm_mask_decays_only_weight_matrices():
  mask = optim.no_bias_norm_mask(_model_like_params())
  decayed = {jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(mask) if v}
  assert decayed == {"['patch_embed']['kernel']", "['encoder']['block0']['attn']['qkv']['kernel']",
                     "['slow_net']['layers_0']['kernel']", "['token_embedding']", "['head']['kernel']"}


@pytest.mark.parametrize("mask", ["all", "no_bias_norm"])
def test_weight_decay_follows_the_mask(mask):
  params = jax.tree.map(lambda x: x + 1.0, _model_like_params())
  tx, _ = optim.make_optimizer(_opt(name="adamw", lr=1.0, weight_decay=0.1, decay_mask=mask), 10, 1)
  updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)
  expected = optim.no_bias_norm_mask(params) if mask == "no_bias_norm" else jax.tree.map(lambda _: True, params)
  changed = jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), updates)
  assert changed == expected


def test_clipping_caps_the_global_norm():
  tx, _ = optim.make_optimizer(_opt(name="sgd", lr=1.0, momentum=0.0, grad_clip_norm=1.0), 10, 1)
  params = _params()
  for scale, norm in [(10.0, 1.0), (0.1, None)]:
    grads = jax.tree.map(lambda x: scale * jnp.ones_like(x), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = norm if norm is not None else float(optax.tree.norm(grads))
    assert float(optax.tree.norm(updates)) == pytest.approx(expected, rel=1e-5)


def test_noise_variance_is_eta_over_one_plus_t_to_the_gamma():
  eta, gamma = 0.3, 0.55
  noise = optim.add_annealed_noise(eta, gamma, seed=1)
  grads = {"a": jnp.zeros((400, 300)), "b": jnp.zeros((100_000,))}
  update = jax.jit(noise.update)
  for t in [0, 3, 20]:  # 3% tolerance: 7σ of the variance estimate, a third of the t → t+1 change at t=3
    out, new_state = update(grads, noise.init(grads)._replace(count=jnp.int32(t)))
    samples = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(out)])
    assert abs(samples.mean()) < 0.01 and int(new_state.count) == t + 1
    assert samples.var() == pytest.approx(eta / (1 + t) ** gamma, rel=0.03), t


def test_noise_is_reproducible_and_depends_only_on_seed_and_step():
  grads = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
  noise = optim.add_annealed_noise(0.5, 0.55, seed=7)
  state, draws = noise.init(grads), []
  for _ in range(3):
    out, state = noise.update(grads, state)
    draws.append(out)
  # a fresh transformation resumed at step 2 (as from a checkpoint) draws the same noise
  resumed, _ = optim.add_annealed_noise(0.5, 0.55, seed=7).update(grads, noise.init(grads)._replace(count=jnp.int32(2)))
  jax.tree.map(np.testing.assert_array_equal, resumed, draws[2])
  unit = [(d["w"] - 1) / np.sqrt(0.5 / (1 + t) ** 0.55) for t, d in enumerate(draws)]  # standard normal draws
  assert not np.allclose(unit[1], unit[2]) and not np.allclose(unit[0], unit[1])
  other_seed = optim.add_annealed_noise(0.5, 0.55, seed=8)
  other, _ = other_seed.update(grads, other_seed.init(grads))
  assert not np.allclose(other["w"], draws[0]["w"])
  # make_optimizer puts the same noise in front of the optimizer (sgd, lr 1: update = -(g + noise))
  tx, _ = optim.make_optimizer(_opt(name="sgd", lr=1.0, momentum=0.0, grad_noise_eta=0.5), 10, 1, seed=7)
  updates, _ = tx.update(grads, tx.init(grads), grads)
  jax.tree.map(lambda u, d: np.testing.assert_allclose(-u, d, rtol=1e-6), updates, draws[0])


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_state_is_plain_arrays(name):
  """Checkpointable by orbax and shardable by rules: no typed PRNG keys, no Python objects."""
  tx, _ = optim.make_optimizer(_opt(name=name, grad_clip_norm=1.0, grad_noise_eta=0.1), 10, 1)
  for leaf in jax.tree.leaves(jax.eval_shape(tx.init, _model_like_params())):
    assert isinstance(leaf, jax.ShapeDtypeStruct) and not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


@pytest.mark.parametrize("key,value,closest", [
    ("name", "adamww", "adamw"), ("name", "kar", "kar3"), ("schedule", "cosine", "warmup_cosine"),
    ("decay_mask", "no_bias", "no_bias_norm")])
def test_unknown_names_name_the_closest(key, value, closest):
  with pytest.raises(ValueError, match=f"did you mean '{closest}'"):
    optim.make_optimizer(_opt(**{key: value}), 10, 1)
