"""FIT encoder: golden equivalence with the official pix2seq FIT, layer specs, structural properties."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import fit_grouping, fit_layers
from effjax.models import fit

TOL = dict(rtol=1e-5, atol=2e-5)  # reference README section 4


def _official(arrays, name):
  prefix = f"param/{name}/"
  return {name + "/" + k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _fit_from_meta(meta, name, **kw):
  c = meta["ctor"][name]
  return fit.FIT(c["layers"], c["num_groups"], c["latents_per_group"], c["x_dim"], c["latent_dim"],
                 c["x_num_heads"], c["latent_num_heads"], c["mlp_ratio"], mask=c["mask"], **kw)


def _count_leaves(tree):
  return len(jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("spec,expected", [
    ("(2)4(2)", [(2, 4), (2, 0)]), ("(1)1(1)", [(1, 1), (1, 0)]), ("(3)2", [(3, 2)]),
    ("(1)2(0)3(4)", [(1, 2), (0, 3), (4, 0)]), ("(2)", [(2, 0)])])
def test_parse_layers(spec, expected):
  assert fit_layers.parse_layers(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("(2)0(2)", "no global layers"), ("2(2)", "malformed"), ("(a)1", "malformed"), ("", "malformed"),
    ("(0)0", "no layers"), (3, "must be a string")])
def test_parse_layers_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    fit_layers.parse_layers(spec)


@pytest.mark.parametrize("name", ["fit", "fit_causal"])
def test_golden_encoder(golden, name):
  arrays, meta = golden("fit_small")
  official = _official(arrays, name)
  params = fit.convert_official(official)
  model = _fit_from_meta(meta, name)
  (x, latents), state = model.apply({"params": params}, jnp.asarray(arrays["input/fit/x"]),
                                    mutable=["intermediates"])
  np.testing.assert_allclose(x, arrays[f"output/{name}/x"], **TOL)
  np.testing.assert_allclose(latents, arrays[f"output/{name}/latents"], **TOL)
  # every official weight is used: a fresh init has the same tree (without the y stem, unused here)
  init = model.init(jax.random.PRNGKey(0), jnp.asarray(arrays["input/fit/x"]))["params"]
  used = {k: v for k, v in params.items() if not k.startswith("stem_y")}
  assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(used)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), init, used)
  if name == "fit":
    inter = state["intermediates"]
    for key in ["x_network0", "l2x_cross_attn0", "l_network0", "x2l_cross_attn0", "x_network1"]:
      np.testing.assert_allclose(inter["out_" + key][0], arrays[f"output/fit/{key}"], **TOL, err_msg=key)
  else:
    mask = np.asarray(fit_layers.chunk_causal_mask(4, 2), np.float32)
    np.testing.assert_array_equal(mask, arrays["output/fit_causal/attention_mask"][0, 0])


def test_golden_encoder_with_y(golden):
  arrays, meta = golden("fit_small")
  params = fit.convert_official(_official(arrays, "fit"))
  x, latents = _fit_from_meta(meta, "fit").apply(
      {"params": params}, jnp.asarray(arrays["input/fit/x"]), jnp.asarray(arrays["input/fit/y"]))
  np.testing.assert_allclose(x, arrays["output/fit/with_y/x"], **TOL)
  np.testing.assert_allclose(latents, arrays["output/fit/with_y/latents"], **TOL)


def test_convert_official_rejects_foreign_prefix():
  with pytest.raises(ValueError, match="does not start with"):
    fit.convert_official({"fit/stem/kernel:0": np.zeros((2, 2)), "other/stem/bias:0": np.zeros(2)})


def test_wrong_group_count_is_a_clear_error():
  model = fit.FIT("(1)1(1)", 4, 2, 16, 16, 2, 2)
  with pytest.raises(ValueError, match="num_groups=4"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 4, 5)))
