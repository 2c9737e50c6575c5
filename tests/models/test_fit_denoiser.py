"""FIT denoiser: golden equivalence with the official pix2seq FITDenoiser, image wrapper shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import fit_denoiser

TOL = dict(rtol=1e-5, atol=2e-5)  # reference README section 4


def _setup(golden):
  arrays, meta = golden("fit_small")
  c = meta["ctor"]["fit_denoiser"]
  prefix = "param/fit_denoiser/"
  official = {"fit_denoiser/" + k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  model = fit_denoiser.FITDenoiser(
      layers=c["layers"], latents_per_group=c["latents_per_group"], width=c["x_dim"], latent_width=c["latent_dim"],
      num_heads=c["x_num_heads"], latent_num_heads=c["latent_num_heads"], out_dim=c["out_dim"],
      mlp_ratio=c["mlp_ratio"], mask=c["mask"], self_cond=c["self_cond"],
      x_self_attention=c["x_self_attention"], xattn_with_mlp=c["xattn_with_mlp"], xattn_enc_ln=c["xattn_enc_ln"])
  inputs = {k: jnp.asarray(arrays[f"input/fit_denoiser/{k}"]) for k in ("x", "time", "cond", "latents_prev")}
  return arrays, model, fit_denoiser.convert_official(official), inputs


def test_golden_denoiser(golden):
  arrays, model, params, inp = _setup(golden)
  (x, latents), state = model.apply({"params": params}, inp["x"], inp["time"], inp["cond"], inp["latents_prev"],
                                    mutable=["intermediates"])
  np.testing.assert_allclose(x, arrays["output/fit_denoiser/x"], **TOL)
  np.testing.assert_allclose(latents, arrays["output/fit_denoiser/latents"], **TOL)
  inter = state["intermediates"]
  for key in ["time_emb", "l2x_cross_attn0", "l2c_cross_attn0", "x2l_cross_attn0"]:
    np.testing.assert_allclose(inter["out_" + key][0], arrays[f"output/fit_denoiser/{key}"], **TOL, err_msg=key)
  init = model.init(jax.random.PRNGKey(0), inp["x"], inp["time"], inp["cond"])["params"]
  assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), init, params)


def test_golden_denoiser_without_previous_latents(golden):
  arrays, model, params, inp = _setup(golden)
  x, latents = model.apply({"params": params}, inp["x"], inp["time"], inp["cond"])
  np.testing.assert_allclose(x, arrays["output/fit_denoiser/no_prev/x"], **TOL)
  np.testing.assert_allclose(latents, arrays["output/fit_denoiser/no_prev/latents"], **TOL)


@pytest.mark.parametrize("grouping", ["window", "strided"])
def test_image_model_shapes(grouping):
  model = fit_denoiser.Model("(1)1(1)", 2, 16, 16, 2, 2, patch_size=2, group_size=2, grouping=grouping)
  images = jnp.ones((2, 8, 12, 3))
  variables = model.init(jax.random.PRNGKey(0), images, jnp.full((2,), 0.5), jax.nn.one_hot(jnp.array([1, 2]), 4))
  pred, latents = model.apply(variables, images, jnp.full((2,), 0.5), jax.nn.one_hot(jnp.array([1, 2]), 4))
  assert pred.shape == images.shape
  assert latents.shape == (2, 6, 2, 16)  # (8/2/2)·(12/2/2) groups


def test_image_model_rejects_tokens():
  model = fit_denoiser.Model("(1)1(1)", 2, 16, 16, 2, 2)
  with pytest.raises(ValueError, match=r"images \[B, H, W, C\]"):
    model.init(jax.random.PRNGKey(0), jnp.ones((2, 4, 4, 3, 1)), jnp.zeros((2,)))
