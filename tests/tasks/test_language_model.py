"""Byte-level LM: the offline stdlib corpus, loss metrics, greedy/temperature generation with FIT-AR."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from effjax.data.sources import pytext
from effjax.models import fit_ar
from effjax.tasks import language_model


def test_pytext_source_is_deterministic_and_split():
  train = pytext.make("train", "seq_len=32,stride=16,max_bytes=20000")
  test = pytext.make("test", "seq_len=32,stride=16,max_bytes=20000")
  assert train.info["num_bytes"] == 19000 and test.info["num_bytes"] == 1000
  ex = train[3]
  assert ex["tokens"].shape == (33,) and ex["tokens"].dtype == np.int32
  np.testing.assert_array_equal(ex["tokens"][:16], train[2]["tokens"][16:32])  # stride 16 windows overlap
  np.testing.assert_array_equal(pytext.make("train", "seq_len=32,stride=16,max_bytes=20000")[3]["tokens"], ex["tokens"])
  assert len(test) == (1000 - 33) // 16 + 1
  with pytest.raises(ValueError, match="no split"):
    pytext.make("validation")
  with pytest.raises(IndexError):
    test[len(test)]


def _model():
  return fit_ar.Model(vocab_size=256, seq_len=16, layers="(1)1(1)", group_size=4, latents_per_group=2, width=16,
                      latent_width=16, num_heads=2, latent_num_heads=2, mlp_ratio=2)


def test_loss_metrics_and_generation():
  config = ml_collections.ConfigDict(dict(task=dict()))
  task, model = language_model.Task(config), _model()
  batch = {"tokens": jax.random.randint(jax.random.PRNGKey(0), (3, 17), 0, 256), "mask": jnp.array([1.0, 1.0, 0.0])}
  variables = jax.jit(lambda r: task.init_variables(model, r, batch))(jax.random.PRNGKey(1))
  loss, aux = jax.jit(lambda v: task.loss(model, v, batch, jax.random.PRNGKey(0), train=False))(variables)
  assert abs(float(loss) - np.log(256)) < 0.5  # near-uniform at init
  np.testing.assert_allclose(aux["metrics"]["bits_per_token"], loss / np.log(2), rtol=1e-6)

  prompt = batch["tokens"][:2, :5]
  gen = jax.jit(lambda v, rng, t: language_model.generate(model, v, prompt, 7, rng, seq_len=16, temperature=t),
                static_argnums=2)
  greedy = gen(variables, jax.random.PRNGKey(0), 0.0)
  assert greedy.shape == (2, 12)
  np.testing.assert_array_equal(greedy[:, :5], prompt)
  np.testing.assert_array_equal(greedy, gen(variables, jax.random.PRNGKey(5), 0.0))  # greedy ignores the rng
  # greedy token i+1 is the argmax of the logits at i given the generated prefix
  logits = jax.jit(model.apply)(variables, jnp.zeros((2, 16), jnp.int32).at[:, :12].set(greedy))
  np.testing.assert_array_equal(jnp.argmax(logits[:, 4:11], -1), greedy[:, 5:12])
  hot = [gen(variables, jax.random.PRNGKey(s), 5.0) for s in range(2)]
  assert (np.asarray(hot[0]) != np.asarray(hot[1])).any()
  with pytest.raises(ValueError, match="seq_len=16"):
    language_model.generate(model, variables, prompt, 20, jax.random.PRNGKey(0), seq_len=16)
