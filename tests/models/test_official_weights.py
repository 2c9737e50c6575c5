"""Official weights: ViT from big_vision-named params (both layouts, through the .npz loader); the models without
official weights say so in one line."""
import jax
import numpy as np
import pytest

from effjax import weights
from effjax.models import vit

# effjax ViT block part -> big_vision name, and -> the older google-research/vision_transformer name
BIG_VISION = {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_0", "ln2": "LayerNorm_1",
              "mlp/fc1": "MlpBlock_0/Dense_0", "mlp/fc2": "MlpBlock_0/Dense_1"}
OLD = {"ln1": "LayerNorm_0", "attn": "MultiHeadDotProductAttention_1", "ln2": "LayerNorm_2",
       "mlp/fc1": "MlpBlock_3/Dense_0", "mlp/fc2": "MlpBlock_3/Dense_1"}


def _model_and_params():
  model = vit.Model(num_classes=3, patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  # move every parameter off its init (zeros / ones would hide a mis-mapped bias or scale)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, params, images


def _official(params, names):
  """The big_vision-style flat dict of `params`, written from the name tables above (not from the converter)."""
  flat = {"embedding/kernel": params["embedding"]["kernel"], "embedding/bias": params["embedding"]["bias"],
          "cls": params["cls"], "pos_embedding": params["pos_embedding"],
          "Transformer/encoder_norm/scale": params["encoder_norm"]["scale"],
          "Transformer/encoder_norm/bias": params["encoder_norm"]["bias"],
          "head/kernel": params["head"]["kernel"], "head/bias": params["head"]["bias"]}
  for i in range(2):
    block = params[f"block{i}"]
    for ours, theirs in names.items():
      node = block
      for part in ours.split("/"):
        node = node[part]
      for leaf_path, value in jax.tree_util.tree_leaves_with_path(node):
        leaf = "/".join(k.key for k in leaf_path)
        flat[f"Transformer/encoderblock_{i}/{theirs}/{leaf}"] = value
  return {k: np.asarray(v) for k, v in flat.items()}


def test_big_vision_npz_loads_exactly(tmp_path):
  model, params, images = _model_and_params()
  path = tmp_path / "vit.npz"
  np.savez(path, **{f"params/{k}": v for k, v in _official(params, BIG_VISION).items()})
  loaded = weights.load_official(str(path), "vit")
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  np.testing.assert_array_equal(model.apply({"params": loaded}, images), model.apply({"params": params}, images))


def test_old_vision_transformer_layout_folds_the_class_token_position_into_cls():
  model, params, images = _model_and_params()
  official = _official(params, OLD)
  row = np.full((1, 1, 16), 0.5, np.float32)   # the old layout's position embedding of the class token
  official["cls"] = official["cls"] - row
  official["Transformer/posembed_input/pos_embedding"] = np.concatenate([row, official.pop("pos_embedding")], 1)
  converted = vit.convert_official(official)
  np.testing.assert_allclose(model.apply({"params": converted}, images), model.apply({"params": params}, images),
                             rtol=1e-5, atol=1e-5)


def test_convert_official_rejects_missing_and_unexpected_keys():
  _, params, _ = _model_and_params()
  official = _official(params, BIG_VISION)
  with pytest.raises(ValueError, match="missing 'head/bias'"):
    vit.convert_official({k: v for k, v in official.items() if k != "head/bias"})
  with pytest.raises(ValueError, match="unexpected key.*pre_logits"):
    vit.convert_official({**official, "pre_logits/kernel": np.zeros((16, 16))})
  with pytest.raises(ValueError, match="unexpected key.*Dense_7"):
    vit.convert_official({**official, "Transformer/encoderblock_0/MlpBlock_0/Dense_7/kernel": np.zeros(2)})


@pytest.mark.parametrize("model_name", ["p3d", "tvconv", "dilated_vit", "fit_ar"])
def test_models_without_official_weights_say_so_in_one_line(model_name):
  with pytest.raises(ValueError) as error:
    weights.converter(model_name)
  message = str(error.value)
  assert message == f"effjax.models.{model_name} has no convert_official: no official weights to load"
  assert "\n" not in message


def test_every_other_model_has_convert_official():
  for name in ("vit", "crate", "crate_alpha", "crate_mae", "fit", "fit_denoiser", "terminator", "dformer",
               "convnext", "resnet", "inception_next", "fasternet", "halonet"):
    assert callable(weights.converter(name)), name
