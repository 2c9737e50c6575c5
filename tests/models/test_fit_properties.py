"""Structural properties of FIT: reduction to a plain transformer, group isolation, causality."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.transformer import EncoderBlock
from effjax.models import fit, fit_ar


class PlainStack(nn.Module):
  """stem -> LN -> +pos -> pre-LN EncoderBlocks (the shared effjax block) -> LN."""
  depth: int
  width: int
  heads: int

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(1e-6, name="stem_ln")(nn.Dense(self.width, name="stem")(x))
    x = x + self.param("pos", nn.initializers.zeros, x.shape[1:])
    for i in range(self.depth):
      x = EncoderBlock(self.heads, 2 * self.width, name=f"block{i}")(x)
    return nn.LayerNorm(1e-6, name="out_ln")(x)


def _plain_params(p, depth):
  out = {"stem": p["stem"], "stem_ln": p["stem_ln"], "pos": p["x_pos_emb"], "out_ln": p["x_output_ln"]}
  for i in range(depth):
    layer = p["x_network0"][f"layer{i}"]
    mha = layer["mha"]
    out[f"block{i}"] = {
        "ln1": layer["mha_ln"], "ln2": layer["mlp"]["ln"],
        "attn": {"query": mha["query"], "key": mha["key"], "value": mha["value"], "out": mha["attention_output"]},
        "mlp": {"fc1": layer["mlp"]["dense1"], "fc2": layer["mlp"]["dense2"]}}
  return out


@jax.jit
def _randomize(params, seed=1):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_one_group_no_global_layers_is_a_plain_transformer():
  model = fit.FIT("(3)", num_groups=1, latents_per_group=2, width=32, latent_width=24, num_heads=4,
                  latent_num_heads=2, mlp_ratio=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 10, 6))
  params = _randomize(jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"])
  out, latents = jax.jit(model.apply)({"params": params}, x)
  ref = jax.jit(PlainStack(3, 32, 4).apply)({"params": _plain_params(params, 3)}, x[:, 0])
  np.testing.assert_allclose(out[:, 0], ref, rtol=1e-5, atol=1e-5)
  pos = params["latent_pos_emb"]
  np.testing.assert_allclose(latents[0, 0], nn.LayerNorm(1e-6).apply({"params": params["l_output_ln"]}, pos),
                             rtol=1e-5, atol=1e-5)


def test_no_gradient_between_groups_before_the_first_global_layer():
  model = fit.FIT("(2)1(1)", num_groups=3, latents_per_group=2, width=16, latent_width=16, num_heads=2,
                  latent_num_heads=2, mlp_ratio=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4, 5))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]

  probe = jax.random.normal(jax.random.PRNGKey(2), (4, 16))  # a random readout (LN outputs sum to a constant)

  @jax.jit
  def grads(x):
    def group0(x, local):
      (out, _), state = model.apply({"params": params}, x, mutable=["intermediates"])
      out = state["intermediates"]["out_x_network0"][0][0] if local else out[0, 0]
      return (out * probe).sum()
    return jax.grad(group0)(x, True), jax.grad(group0)(x, False)

  g_local, g_final = grads(x)
  assert np.abs(g_local[0, 0]).max() > 0
  np.testing.assert_array_equal(g_local[0, 1:], 0.0)
  # after READ -> global -> WRITE every other group does reach group 0
  assert np.abs(g_final[0, 1:]).max(axis=(-1, -2)).min() > 1e-4


def test_causal_encoder_latents_ignore_later_groups():
  model = fit.FIT("(1)1(1)", num_groups=4, latents_per_group=2, width=16, latent_width=16, num_heads=2,
                  latent_num_heads=2, mlp_ratio=2, mask="causal")
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 3, 5))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]
  probe = jax.random.normal(jax.random.PRNGKey(2), (2, 16))
  jac = jax.jit(jax.grad(lambda x: (model.apply({"params": params}, x)[1][0, 1] * probe).sum()))(x)
  np.testing.assert_array_equal(jac[0, 2:], 0.0)
  assert np.abs(jac[0, :2]).max() > 0


def test_ar_decoder_is_causal_across_and_within_groups():
  model = fit_ar.Model(vocab_size=11, seq_len=24, layers="(1)1(1)1(1)", group_size=4, latents_per_group=2,
                       width=16, latent_width=16, num_heads=2, latent_num_heads=2, mlp_ratio=2)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 24), 0, 11)
  params = _randomize(jax.jit(model.init)(jax.random.PRNGKey(1), tokens)["params"])
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, tokens)
  assert logits.shape == (2, 24, 11)
  for pos in (0, 5, 9, 22):  # first token, inside a group, group boundary-1, last group
    changed = tokens.at[:, pos + 1:].set((tokens[:, pos + 1:] + 3) % 11)
    other = apply({"params": params}, changed)
    np.testing.assert_allclose(other[:, :pos + 1], logits[:, :pos + 1], rtol=1e-6, atol=1e-6)
    assert np.abs(other[:, pos + 1:] - logits[:, pos + 1:]).max() > 1e-4
  far = apply({"params": params}, tokens.at[:, 1].set((tokens[:, 1] + 1) % 11))
  assert np.abs(far[:, 20:] - logits[:, 20:]).max() > 1e-4  # far-reaching: group 0 reaches group 5


@pytest.mark.slow
def test_group_chunking_and_chunked_attention_are_exact():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 6, 5))
  probe = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 16))
  grads = {}
  for chunks, max_logits in ((0, 0), (2, 0), (1, 20)):
    model = fit.FIT("(1)1(1)", num_groups=4, latents_per_group=3, width=16, latent_width=16, num_heads=2,
                    latent_num_heads=2, mlp_ratio=2, mask="causal", chunk_groups=chunks,
                    max_attention_logits=max_logits)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]  # same tree with and without chunks

    def loss(p):
      out, latents = model.apply({"params": p}, x)
      return (out[0] * probe).sum() + jnp.sin(latents).sum()
    grads[(chunks, max_logits)] = jax.jit(jax.value_and_grad(loss))(params)
  ref_value, ref_grads = grads[(0, 0)]
  for key in ((2, 0), (1, 20)):
    value, g = grads[key]
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    # float32 re-association only: compare relative to each gradient's scale
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max())),
                 g, ref_grads)
