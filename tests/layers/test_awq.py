"""AWQ: the scale search and quantizer against the official llm-awq code (tests/data/awq_official.npz, written by
tests/data/make_awq_golden.py), quantized ViT / CRATE against their float outputs, bad inputs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from effjax.layers import awq
from effjax.models import crate, vit

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "awq_official.npz")


@pytest.fixture(scope="module")
def golden():
  with np.load(DATA) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.parametrize("case", ["int4_g16", "int4_g32", "int8"])
def test_scale_search_and_quantizer_match_the_official_code(golden, case):
  cfg = json.loads(str(golden["meta"]))["cases"][case]
  kernel, x = golden[f"param/{case}/weight"].T, golden[f"input/{case}"]
  group = max(cfg["q_group_size"], 0)
  s, errors = awq.search_scale(kernel, x, cfg["bits"], group)
  np.testing.assert_allclose(s, golden[f"output/{case}/scales"], rtol=1e-5)
  assert int(jnp.argmin(errors)) > 0  # the outlier channels make some α > 0 beat round-to-nearest
  layer = awq.quantize_layer(kernel, x, cfg["bits"], group)
  assert layer["codes"].dtype == (jnp.uint4 if cfg["bits"] == 4 else jnp.uint8)
  np.testing.assert_allclose(layer["delta"].T, golden[f"output/{case}/q_scales"], rtol=1e-6)
  np.testing.assert_array_equal(layer["zero"].T, golden[f"output/{case}/q_zeros"])
  w = np.asarray(awq.dequantize(layer["codes"], layer["delta"], layer["zero"]) * layer["inv_s"][:, None])
  # s agrees to ~1e-7, so a weight within that of a rounding midpoint may land one code apart (1 of 1536 in int8)
  step = np.repeat(np.asarray(layer["delta"]), w.shape[0] // layer["delta"].shape[0], 0) * layer["inv_s"][:, None]
  off = np.abs(w - golden[f"output/{case}/wq"].T) / step
  assert np.all((off < 1e-3) | (np.abs(off - 1) < 1e-3)) and np.mean(off > 0.5) < 2e-3, off.max()
  # the layer computes (x/s) Q(sW) = x · (Q(sW)/s): the weight checked above
  np.testing.assert_allclose(awq.qdot(jnp.asarray(x), layer), x @ w, rtol=1e-4, atol=1e-4)


MODELS = {
    "vit": vit.Model(num_classes=10, patch_size=7, width=32, depth=2, num_heads=2, mlp_dim=64, pool="gap"),
    "crate": crate.Model(num_classes=10, patch_size=7, width=32, depth=2, num_heads=2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantized_models_track_the_float_model(name):
  model = MODELS[name]
  images = jax.random.normal(jax.random.PRNGKey(0), (16, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  ref = model.apply(variables, images)
  run = jax.jit(lambda v, q: awq.quantized_apply(model, v, q, images))
  errors = {}
  for bits, group, search in ((8, 0, True), (4, 16, False), (4, 16, True)):
    qvars, quantized = awq.awq_quantize(model, variables, images[:8], bits=bits, group_size=group, search=search)
    kernels = [k for k in traverse_util.flatten_dict(qvars["params"], sep="/") if k.endswith("/kernel")]
    assert kernels and not any(k[:-len("/kernel")] in quantized for k in kernels)  # float kernels are dropped
    errors[(bits, search)] = float(jnp.abs(run(qvars, quantized) - ref).max() / jnp.abs(ref).max())
  if name == "vit":  # the dequantize-in-kernel path (Pallas, interpret mode here) computes the same model
    pallas = jax.jit(lambda v, q: awq.quantized_apply(model, v, q, images, impl="pallas"))(qvars, quantized)
    np.testing.assert_allclose(pallas, run(qvars, quantized), rtol=1e-4, atol=1e-4)
  want = {"vit": 12, "crate": 4}[name]  # dense layers per model: q, k, v, out, fc1, fc2 / qkv, out per block
  assert len(quantized) == want and not any("head" in p or "patch_proj" in p for p in quantized)
  assert errors[(8, True)] < 0.02 < errors[(4, False)], errors
  assert errors[(4, True)] < errors[(4, False)], errors


def test_bad_quantization_settings_are_errors():
  model = MODELS["vit"]
  images = jnp.zeros((2, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  for bits in (1, 9, 4.0):
    with pytest.raises(ValueError, match="takes bits from 2 to 8"):
      awq.awq_quantize(model, variables, images, bits=bits)
  with pytest.raises(ValueError, match="group_size 24 does not divide the 32 input channels of block0/attn/"):
    awq.awq_quantize(model, variables, images, bits=4, group_size=24)
  with pytest.raises(ValueError, match="no dense layer left"):
    awq.awq_quantize(model, variables, images, bits=4, skip=".")
