"""FIT encoder: golden equivalence with the official pix2seq FIT, layer specs, structural properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import attention_patterns
from effjax.layers import fit_grouping, fit_layers
from effjax.models import fit

TOL = dict(rtol=1e-5, atol=2e-5)  # reference README section 4


def _official(arrays, name):
  prefix = f"param/{name}/"
  return {name + "/" + k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _fit_from_meta(meta, name, **kw):
  c = meta["ctor"][name]
  return fit.FIT(layers=c["layers"], num_groups=c["num_groups"], latents_per_group=c["latents_per_group"],
                 width=c["x_dim"], latent_width=c["latent_dim"], num_heads=c["x_num_heads"],
                 latent_num_heads=c["latent_num_heads"], mlp_ratio=c["mlp_ratio"], mask=c["mask"], **kw)


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
  params = fit.convert_official(official)["encoder"]
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
    mask = np.asarray(attention_patterns.chunk_causal(2).mask(8, 8), np.float32)
    np.testing.assert_array_equal(mask, arrays["output/fit_causal/attention_mask"][0, 0])


def test_golden_encoder_with_y(golden):
  arrays, meta = golden("fit_small")
  params = fit.convert_official(_official(arrays, "fit"))["encoder"]
  x, latents = _fit_from_meta(meta, "fit").apply(
      {"params": params}, jnp.asarray(arrays["input/fit/x"]), jnp.asarray(arrays["input/fit/y"]))
  np.testing.assert_allclose(x, arrays["output/fit/with_y/x"], **TOL)
  np.testing.assert_allclose(latents, arrays["output/fit/with_y/latents"], **TOL)


def test_convert_official_rejects_foreign_prefix():
  with pytest.raises(ValueError, match="does not start with"):
    fit.convert_official({"fit/stem/kernel:0": np.zeros((2, 2)), "other/stem/bias:0": np.zeros(2)})


def test_wrong_group_count_is_a_clear_error():
  model = fit.FIT(layers="(1)1(1)", num_groups=4, latents_per_group=2, width=16, latent_width=16, num_heads=2,
                  latent_num_heads=2)
  with pytest.raises(ValueError, match="num_groups=4"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 4, 5)))


def _subimages_to_tokens(images, sub_image_size, patch_size):
  """The official pix2seq `images2subimages2tokens` layout, written directly: [B, H, W, C] ->
  [B, (H/S)·(W/S), (S/p)², p·p·C], sub-images row-major, patches row-major inside, pixels (p p c)."""
  b, h, w, c = images.shape
  s, p = sub_image_size, patch_size
  x = images.reshape(b, h // s, s // p, p, w // s, s // p, p, c)  # b, si, pi, y, sj, pj, x, c
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)                            # b, si, sj, pi, pj, y, x, c
  return x.reshape(b, (h // s) * (w // s), (s // p) ** 2, p * p * c)


def test_subimages_equal_patch_windows_and_groupings_invert():
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 24, 16, 3))
  subs = _subimages_to_tokens(images, sub_image_size=8, patch_size=4)
  windows = fit_grouping.images_to_groups(images, patch_size=4, group_size=2, grouping="window")
  assert subs.shape == (2, 6, 4, 48)
  np.testing.assert_array_equal(subs, windows)
  # sub-image (1, 0) (row-major over a 3x2 grid -> index 2), patch (0, 1) is pixels [8:12, 4:8]
  np.testing.assert_array_equal(subs[:, 2, 1], images[:, 8:12, 4:8].reshape(2, -1))
  strided = fit_grouping.images_to_groups(images, 4, 2, "strided")
  grid = fit_grouping.patchify(images, 4)  # [2, 6, 4, 48]; group grid 3x2, group (1, 1) = grid[1::3, 1::2]
  np.testing.assert_array_equal(strided[:, 3], grid[:, 1::3, 1::2].reshape(2, 4, 48))
  for grouping, tokens in (("window", windows), ("strided", strided)):
    back = fit_grouping.groups_to_images(tokens, (24, 16), 4, 3, grouping)
    np.testing.assert_array_equal(back, images)
  with pytest.raises(ValueError, match="not divisible by the window"):
    fit_grouping.images_to_groups(images, 4, 4)
  with pytest.raises(ValueError, match="unknown grouping"):
    fit_grouping.images_to_groups(images, 4, 2, "random")


@pytest.mark.slow
def test_classifier_remat_policies_match_and_unknown_policy_fails():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  labels = jnp.array([1, 3])
  outs = {}
  for remat in ("none", "full", "dots"):
    model = fit.Model(num_classes=5, layers="(1)1(1)", patch_size=4, group_size=2, latents_per_group=2, width=16,
                      latent_width=24, num_heads=2, latent_num_heads=2, mlp_ratio=2, grouping="strided", remat=remat)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), images)["params"]
    params = jax.tree.map(lambda p: p + 0.01, params)  # the head starts at zero

    def loss(p):
      logits = model.apply({"params": p}, images, train=True)
      return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean(), logits
    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert logits.shape == (2, 5)
    outs[remat] = (value, grads)
  for remat in ("full", "dots"):
    np.testing.assert_allclose(outs[remat][0], outs["none"][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), outs[remat][1], outs["none"][1])
  with pytest.raises(ValueError, match="unknown remat policy"):
    fit.Model(num_classes=5, remat="everything").init(jax.random.PRNGKey(0), images)
