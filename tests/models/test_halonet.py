"""HaloNet: timm goldens (five variants' structures at reduced width), timm parameter counts, the halo attention
against a direct per-query computation, gradients, bad input, configs and the trainer."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import halonet

import timm_golden

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOKS = {"stem": "stem", "final_conv": "final", **{f"stages.{i}": f"stage{i}" for i in range(4)}}

# The reduced timm models of tests/data/make_timm_goldens.py ("halonet" case) in this model's fields.
GOLDEN = {
    "halonet26t": dict(blocks=("b", "b", "ba", "aa"), widths=(16, 32, 64, 128), stem_width=8, block_size=2,
                       halo_size=2, num_heads=(2,) * 4, num_classes=5),
    "halonet50ts": dict(blocks=("b", "ba", "ba", "ba"), widths=(16, 32, 32, 64), stem_width=8, block_size=2,
                        halo_size=1, num_heads=(2, 4, 2, 2), num_classes=4),
    "sehalonet33ts": dict(blocks=("b", "ba", "ba", "a"), widths=(16, 32, 48, 96), stem_width=8, block_size=2,
                          halo_size=3, num_heads=(2,) * 4, num_features=40, num_classes=3),
    "halonet_h1": dict(blocks=("a", "a", "aa", "a"), widths=(16, 16, 32, 32), block_size=3, halo_size=1,
                       num_heads=(2,) * 4, num_classes=5),
    "eca_halonext26ts": dict(blocks=("b", "b", "ba", "a"), widths=(32, 32, 64, 64), stem_width=8, block_size=2,
                             halo_size=2, dim_head=8, num_heads=(2,) * 4, group_size=4, num_classes=3),
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_logits_and_intermediates(key):
  sd, images, outputs, meta = timm_golden.load("halonet", key)
  assert meta["models"][key]["timm_name"] == key
  model = halonet.Model(variant=key, **GOLDEN[key])
  timm_golden.check_outputs(model, halonet.convert_official_variables(sd), meta, key, images, outputs, HOOKS)


def test_param_counts_equal_timm():
  counts = timm_golden.load("halonet", "halonet26t")[3]["param_counts"]
  assert set(counts) == set(halonet.VARIANTS)
  for name, count in counts.items():
    assert timm_golden.param_count(halonet.Model(num_classes=1000, variant=name), size=256) == count, name


def test_convert_official_rejects_missing_and_unexpected_keys():
  sd = timm_golden.load("halonet", "halonet26t")[0]
  timm_golden.check_converter_is_strict(halonet, sd, "stages.3.0.self_attn.pos_embed.width_rel")
  timm_golden.check_converter_is_strict(halonet, sd, "stages.2.1.post_attn.running_var")


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _direct_halo_attention(p, x, heads, block, halo):
  """numpy loop over queries (stride 1): each query's window and relative embeddings read off the padded map."""
  p, x = jax.tree.map(np.asarray, p), np.asarray(x)
  b, hgt, wid, _ = x.shape
  q = (x @ p["q"]["kernel"]).reshape(b, hgt, wid, heads, -1)
  d = q.shape[-1]
  kv = np.pad(x @ p["kv"]["kernel"], ((0, 0), (halo, halo), (halo, halo), (0, 0)))
  kv = kv.reshape(*kv.shape[:3], heads, -1)
  win = block + 2 * halo
  out = np.zeros((b, hgt, wid, heads, kv.shape[-1] - d), np.float32)
  for y in range(hgt):
    for x_ in range(wid):
      r0, c0 = y // block * block, x_ // block * block   # window origin in the padded map
      window = kv[:, r0:r0 + win, c0:c0 + win]              # [B, w, w, heads, d + dv]
      rel_h = p["height_rel"][win - 1 + np.arange(win) - (y - r0)]
      rel_w = p["width_rel"][win - 1 + np.arange(win) - (x_ - c0)]
      qi = q[:, y, x_]                                      # [B, heads, d]
      logits = (np.einsum("bhd,brchd->bhrc", qi, window[..., :d]) * d ** -0.5
                + np.einsum("bhd,rd->bhr", qi, rel_h)[..., None] + np.einsum("bhd,cd->bhc", qi, rel_w)[:, :, None])
      w = _softmax(logits.reshape(b, heads, -1)).reshape(logits.shape)
      out[:, y, x_] = np.einsum("bhrc,brchd->bhd", w, window[..., d:])
  return out.reshape(b, hgt, wid, -1)


def test_halo_attention_matches_a_direct_per_query_computation():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 9, 8))
  layer = halonet.HaloAttention(8, num_heads=2, block_size=3, halo_size=1)
  params = jax.jit(layer.init)(jax.random.PRNGKey(1), x)["params"]
  np.testing.assert_allclose(jax.jit(layer.apply)({"params": params}, x), _direct_halo_attention(params, x, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)


TINY = dict(blocks=("b", "a"), widths=(16, 32), strides=(1, 2), bottle_ratios=(0.25, 0.5), num_heads=(2, 2),
            stem_width=8, block_size=2, halo_size=1, num_classes=3)


def test_gradients_finite_and_nonzero_for_every_param():
  """SiLU, an SE gate and a final conv, so that every kind of parameter is reached."""
  model = halonet.Model(**TINY, act="silu", gate="se", num_features=24)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, variables["params"])   # conv3 BNs start at scale 0 (zero_init_last)

  def loss(p):
    out, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def _init(model, size):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"image sides divisible by 8 .*got 20x20"):
    _init(halonet.Model(**TINY), 20)
  with pytest.raises(ValueError, match=r"divisible by 256 .*got 224x224"):
    _init(halonet.Model(num_classes=10, variant="halonet50ts"), 224)
  with pytest.raises(ValueError, match="one entry per stage"):
    _init(halonet.Model(**{**TINY, "num_heads": (2,)}), 16)
  with pytest.raises(ValueError, match="may only hold 'b'"):
    _init(halonet.Model(**{**TINY, "blocks": ("b", "c")}), 16)
  with pytest.raises(ValueError, match="unknown act"):
    _init(halonet.Model(**TINY, act="gelu"), 16)
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    _init(halonet.Model(**{**TINY, "num_heads": (2, 3)}), 16)
  with pytest.raises(ValueError, match="group_size 16 does not divide stage 0's bottleneck width 8"):
    _init(halonet.Model(**TINY, group_size=16), 16)
  with pytest.raises(ValueError, match="unknown HaloNet variant"):
    halonet.Model(num_classes=3, variant="halonet101")


@pytest.mark.parametrize("spec", ["runlocal", "variant=halonet26t", "variant=sehalonet33ts,num_classes=10"])
def test_configs_build_their_models(spec):
  from effjax import components, config as cfg
  c = cfg.load_config_file(os.path.join(REPO, "configs", f"halonet.py:{spec}"))
  model = components.load("models", c.model_name).Model(**c.model)
  shape = (1, 32, 32, 1) if "runlocal" in spec else (1, 256, 256, 3)   # runlocal resizes MNIST to 32×32
  jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))
