"""Official configurations beyond the golden ones convert and run, or fail with a one-line message: CRATE with
one head of width d (no output projection), non-square patches, CRATE-α without embedding/head biases, with
input normalisation, without a head (pre-logits) and with final dropout, another resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import weights
from effjax.weights import posemb
from effjax.layers.patches import patchify
from effjax.models import crate, crate_alpha

from conftest import golden_path
from test_weights import _golden




def test_crate_one_head_of_width_d_has_no_output_projection():
  official = {k: v for k, v in _golden("crate_small").items() if ".fn.to_out." not in k}  # qkv [64, 64]: 1 x 64
  params = crate.convert_official(official)
  model = crate.Model(num_classes=10, patch_size=8, width=64, depth=2, num_heads=1, head_dim=64)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  assert jax.tree.structure(model.init(jax.random.key(1), x)["params"]) == jax.tree.structure(params)
  _, state = model.apply({"params": params}, x, mutable=["intermediates"])
  w = state["intermediates"]["layer0"]["qkv"][0]                     # [B, N, 64], one head
  expected = jax.nn.softmax(w @ jnp.swapaxes(w, 1, 2) / 8.0, axis=-1) @ w   # no U_out, no bias
  np.testing.assert_allclose(state["intermediates"]["layer0"]["attn_out"][0], expected, rtol=1e-5, atol=1e-5)


def test_non_square_patches():
  x = np.random.default_rng(0).normal(size=(2, 16, 32, 3)).astype(np.float32)
  # the official einops 'b (h p1) (w p2) c -> b (h w) (p1 p2 c)' with p1=4, p2=8, written out
  expected = np.stack([x[:, i * 4:(i + 1) * 4, j * 8:(j + 1) * 8].reshape(2, -1)
                       for i in range(4) for j in range(4)], axis=1)
  np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(x), (4, 8))), expected)
  for model in (crate.Model(num_classes=3, patch_size=(4, 8), width=32, depth=1, num_heads=2),
                crate_alpha.Model(num_classes=3, patch_size=(4, 8), width=32, depth=1, num_heads=2)):
    params = model.init(jax.random.key(0), x)["params"]
    assert params["pos_embedding"].shape == (1, 1 + 4 * 4, 32)
    assert model.apply({"params": params}, x).shape == (2, 3)
  assert params["embedding"]["kernel"].shape == (4, 8, 3, 32)       # CRATE-α: a (4, 8) convolution


def _alpha(**kw):
  return crate_alpha.Model(num_classes=kw.pop("num_classes", 10), patch_size=8, width=64, depth=2, num_heads=4, **kw)


def test_crate_alpha_without_embedding_and_head_biases():
  official = _golden("crate_alpha_small")
  no_bias = {k: v for k, v in official.items() if k not in ("embedding/bias", "head/bias")}
  zero_bias = dict(official, **{k: 0 * official[k] for k in ("embedding/bias", "head/bias")})
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  ours = _alpha(emb_head_bias=False).apply({"params": crate_alpha.convert_official(no_bias)}, x)
  reference = _alpha().apply({"params": crate_alpha.convert_official(zero_bias)}, x)
  np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_crate_alpha_pre_logits_post_norm_and_final_drop():
  official = _golden("crate_alpha_small")
  arrays = np.load(golden_path("crate_alpha_small"))
  image = jnp.asarray(arrays["input/image"])
  headless = crate_alpha.convert_official({k: v for k, v in official.items() if not k.startswith("head/")})
  pre = _alpha(num_classes=None).apply({"params": headless}, image)
  np.testing.assert_allclose(pre, arrays["output/out/pre_logits"], rtol=1e-5, atol=1e-5)
  params = crate_alpha.convert_official(official)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
  normalised = _alpha(post_norm=True, mean=mean, std=std).apply({"params": params}, image)
  by_hand = _alpha().apply({"params": params}, (image - jnp.asarray(mean)) / jnp.asarray(std))
  np.testing.assert_allclose(normalised, by_hand, rtol=1e-6, atol=1e-6)
  dropped = _alpha(final_drop=1.0)
  np.testing.assert_allclose(dropped.apply({"params": params}, image), arrays["output/logits"], rtol=1e-5, atol=1e-5)
  train = dropped.apply({"params": params}, image, train=True, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_allclose(train, np.broadcast_to(official["head/bias"], train.shape), rtol=1e-6)  # all dropped


@pytest.mark.parametrize("name,model", [
    ("crate", crate.Model(num_classes=10, patch_size=8, width=64, depth=2, num_heads=4, head_dim=16)),
    ("crate_alpha", _alpha())])
def test_another_resolution_fails_in_one_line_and_runs_after_resampling(name, model):
  golden = "crate_small" if name == "crate" else "crate_alpha_small"
  params = weights.load_official(golden_path(golden), name)
  x = jax.random.normal(jax.random.key(0), (1, 48, 48, 3))
  with pytest.raises(ValueError, match=r"pos_embedding has 17 tokens but this input gives 37: resample") as e:
    model.apply({"params": params}, x)
  assert "\n" not in str(e.value)
  params = dict(params, pos_embedding=posemb.resample(params["pos_embedding"], 37))
  assert np.isfinite(np.asarray(model.apply({"params": params}, x))).all()
