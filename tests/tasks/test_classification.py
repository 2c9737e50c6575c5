"""Classification task: label smoothing, Mixup and CutMix on device, evaluation unchanged."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from effjax.tasks import classification

NUM_CLASSES = 5
_mix = jax.jit(classification.mix_batch, static_argnums=(3, 4))


def _config(**task):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(num_classes=NUM_CLASSES))
  c.task = ml_collections.ConfigDict(task)
  return c


class _Linear:
  """Stands in for a model: logits = flatten(image) @ W."""

  def __init__(self, features):
    self.w = jax.random.normal(jax.random.PRNGKey(1), (features, NUM_CLASSES))

  def apply(self, variables, image, train=False, rngs=None, mutable=False):
    return image.reshape(image.shape[0], -1) @ self.w


def _batch(b=6, h=8, w=8):
  images = jax.random.uniform(jax.random.PRNGKey(0), (b, h, w, 1)) + jnp.arange(b)[:, None, None, None]
  return {"image": images, "label": jnp.array([0, 1, 2, 3, 4, 0][:b], jnp.int32)}


def _ce(logits, labels, smoothing):
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), smoothing))


def test_mixup_mixes_pairs_with_weights_summing_to_one():
  batch = _batch()
  targets = jax.nn.one_hot(batch["label"], NUM_CLASSES)
  images, soft, lam = classification.mix_batch(jax.random.PRNGKey(3), batch["image"], targets, mixup_alpha=1.0)
  assert 0.0 < float(lam) < 1.0
  np.testing.assert_allclose(images, lam * batch["image"] + (1 - lam) * batch["image"][::-1], rtol=1e-6)
  np.testing.assert_allclose(soft, lam * targets + (1 - lam) * targets[::-1], rtol=1e-6)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)


def test_mixup_loss_equals_weighted_cross_entropy_with_label_smoothing():
  smoothing = 0.1
  task = classification.Task(_config(label_smoothing=smoothing, mixup_alpha=0.4))
  batch, model, rng = _batch(), _Linear(64), jax.random.PRNGKey(7)
  loss, aux = jax.jit(lambda b, r: task.loss(model, {"params": {}}, b, r, train=True))(batch, rng)
  lam = aux["metrics"]["mix_lambda"]
  mixed = lam * batch["image"] + (1 - lam) * batch["image"][::-1]
  logits = model.apply(None, mixed)
  expected = jnp.mean(lam * _ce(logits, batch["label"], smoothing)
                      + (1 - lam) * _ce(logits, batch["label"][::-1], smoothing))
  assert 0.0 < float(lam) < 1.0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  again, _ = task.loss(model, {"params": {}}, batch, rng, train=True)  # deterministic for a given step rng
  np.testing.assert_allclose(again, loss, rtol=1e-6)
  other, _ = task.loss(model, {"params": {}}, batch, jax.random.PRNGKey(8), train=True)
  assert not np.isclose(float(other), float(loss))


def test_cutmix_label_weight_equals_pasted_area():
  b, h, w = 4, 16, 12
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None], (b, h, w, 3))
  targets = jax.nn.one_hot(jnp.arange(b) % NUM_CLASSES, NUM_CLASSES)
  lams = []
  for seed in range(40):
    mixed, soft, lam = _mix(jax.random.PRNGKey(seed), images, targets, 0.0, 1.0)
    pasted = np.asarray(mixed[..., 0] != images[..., 0])  # every example differs from its mirror everywhere
    fraction = pasted.mean(axis=(1, 2))
    np.testing.assert_allclose(fraction, 1.0 - float(lam), atol=1e-6)
    np.testing.assert_array_equal(pasted, pasted[:1].repeat(b, 0))  # one box for the whole batch
    rows, cols = np.nonzero(pasted[0])
    if rows.size:  # the pasted region is one axis-aligned box
      assert pasted[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    np.testing.assert_allclose(soft, lam * targets + (1 - lam) * targets[::-1], atol=1e-6)
    lams.append(float(lam))
  assert min(lams) < 0.5 < max(lams) and any(0 < x < 1 for x in lams)


def test_mixup_and_cutmix_together_use_both():
  batch = _batch()
  targets = jax.nn.one_hot(batch["label"], NUM_CLASSES)
  kinds = set()
  for seed in range(16):
    mixed, _, lam = _mix(jax.random.PRNGKey(seed), batch["image"], targets, 0.8, 1.0)
    blended = lam * batch["image"] + (1 - lam) * batch["image"][::-1]
    kinds.add("mixup" if np.allclose(mixed, blended, rtol=1e-6) else "cutmix")
  assert kinds == {"mixup", "cutmix"}


def test_evaluation_and_alpha_zero_are_plain_cross_entropy():
  batch, model = {**_batch(), "mask": jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)}, _Linear(64)
  expected = jnp.sum(_ce(model.apply(None, batch["image"]), batch["label"], 0.1)[:4]) / 4
  mixing = classification.Task(_config(label_smoothing=0.1, mixup_alpha=1.0, cutmix_alpha=1.0))
  loss, aux = mixing.loss(model, {"params": {}}, batch, jax.random.PRNGKey(0), train=False)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert "mix_lambda" not in aux["metrics"]
  plain = classification.Task(_config(label_smoothing=0.1))
  loss, aux = plain.loss(model, {"params": {}}, batch, jax.random.PRNGKey(0), train=True)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert set(aux["metrics"]) == {"accuracy"}


def test_bad_alphas_raise():
  with pytest.raises(ValueError, match="mixup_alpha"):
    classification.Task(_config(mixup_alpha=-1.0))
  with pytest.raises(ValueError, match="CutMix needs images"):
    classification.mix_batch(jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.zeros((4, 2)), cutmix_alpha=1.0)
