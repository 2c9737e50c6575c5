"""CRATE-α: golden equivalence with the official JAX model, parameter counts, stochastic depth/LayerScale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import crate_alpha

TOL = dict(rtol=1e-5, atol=1e-5)  # reference README section 3
BLOCK_KEYS = {"sa": "attn_out", "+sa": "after_attn_residual", "mlp": "ista_out", "+mlp": "output"}


def _golden(golden):
  arrays, meta = golden("crate_alpha_small")
  c = meta["ctor"]
  model = crate_alpha.Model(num_classes=c["num_classes"], patch_size=c["patch_size"][0], width=c["width"],
                            depth=c["depth"], num_heads=c["num_heads"], eta=c["eta"], lmbda=c["lmbda"],
                            posemb=c["posemb"])
  params = crate_alpha.convert_official({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
  return arrays, c, model, params


def test_golden_logits_and_every_returned_intermediate(golden):
  arrays, c, model, params = _golden(golden)
  logits, state = model.apply({"params": params}, jnp.asarray(arrays["input/image"]), mutable=["intermediates"])
  inter = jax.tree.map(lambda t: t[0], state["intermediates"], is_leaf=lambda t: isinstance(t, tuple))
  np.testing.assert_allclose(logits, arrays["output/logits"], **TOL)
  ours = {"stem": inter["stem"], "with_posemb": inter["with_posemb"], "encoded": inter["encoded"],
          "encoder/pre_ln": inter["encoded"], "head_input": inter["head_input"], "pre_logits": inter["head_input"],
          "pre_logits_2d": inter["encoded"][:, 1:].reshape(arrays["output/out/pre_logits_2d"].shape)}
  for i in range(c["depth"]):
    for theirs, mine in BLOCK_KEYS.items():
      ours[f"encoder/block{i:02d}/{theirs}"] = inter[f"layer{i}"][mine]
  golden_keys = {k[len("output/out/"):] for k in arrays if k.startswith("output/out/")}
  assert golden_keys == set(ours)
  for name, value in ours.items():
    np.testing.assert_allclose(value, arrays[f"output/out/{name}"], **TOL, err_msg=name)


def test_overcomplete_ista_matches_the_two_step_formula():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  block = crate_alpha.OvercompleteISTA(eta=0.1, lmbda=0.1)
  params = block.init(jax.random.PRNGKey(1), x)
  d, d1 = params["params"]["D"], params["params"]["D1"]
  assert d.shape == d1.shape == (8, 32)
  z1 = jax.nn.relu(0.1 * x @ d - 0.01)
  z2 = jax.nn.relu(z1 - 0.1 * (z1 @ d.T - x) @ d - 0.01)
  np.testing.assert_allclose(block.apply(params, x), z2 @ d1.T, rtol=1e-5, atol=1e-6)


def _count(model, image_size=224):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# Counts of the official _Model at 224 px, 1000 classes, learned pos-emb, no LayerScale:
# conv p²·3·d + d, cls d, pos-emb (N+1)·d, per block 10·d² + 4·d, encoder_norm 2·d, head d·1000 + 1000.
@pytest.mark.parametrize("variant,count", [
    ("Ti/16", 4_811_944), ("S/16", 40_975_912), ("B/16", 72_328_936), ("B/32", 73_985_512),
    ("L/14", 253_650_920), ("H/14", 526_819_560)])
def test_param_counts_official_variants(variant, count):
  assert _count(crate_alpha.Model(num_classes=1000, variant=variant)) == count


def test_layer_scale_and_drop_path():
  model = crate_alpha.Model(num_classes=10, patch_size=4, width=16, depth=2, num_heads=2, drop_path_rate=0.5,
                            layer_scale=1e-5, posemb="sincos2d")
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  assert params["layer1"]["ls1"].shape == (16,) and "pos_embedding" not in params
  train = jax.jit(lambda rng: model.apply({"params": params}, images, train=True, rngs={"dropout": rng}))
  evaluate = jax.jit(lambda: model.apply({"params": params}, images))
  a, b = train(jax.random.PRNGKey(2)), train(jax.random.PRNGKey(3))
  e1, e2 = evaluate(), evaluate()
  assert not np.allclose(a, b) and np.array_equal(e1, e2)


def test_convert_official_rejects_unexpected_keys(golden):
  arrays, _, _, _ = _golden(golden)
  official = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  with pytest.raises(ValueError, match="unexpected key"):
    crate_alpha.convert_official({**official, "MAPHead_0/probe": np.zeros(3)})
  with pytest.raises(ValueError, match="unknown CRATE-α variant"):
    crate_alpha.Model(num_classes=10, variant="Z/16")
