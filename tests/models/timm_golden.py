"""Reads the timm golden files written by tests/data/make_timm_goldens.py (layout: see that script)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def load(case, key):
  """(state dict, NHWC input, {output name: array (NHWC when 4-D)}, meta) of model `key` in <case>_timm.npz."""
  d = np.load(os.path.join(DATA, f"{case}_timm.npz"))
  meta = json.loads(str(d["meta"]))
  sd = {k[len(f"param/{key}/"):]: d[k] for k in d.files if k.startswith(f"param/{key}/")}
  outputs = {k[len(f"output/{key}/"):]: d[k] for k in d.files if k.startswith(f"output/{key}/")}
  outputs = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in outputs.items()}
  return sd, d[f"input/{key}"].transpose(0, 2, 3, 1), outputs, meta


TOL = dict(rtol=1e-5, atol=1e-5)


def check_outputs(model, variables, meta, key, images, outputs, hooks):
  """Logits and every hooked intermediate of `model` equal timm's; float32 error of the golden run is below TOL.

  hooks maps timm module names to the names the model sows under `intermediates`.
  """
  apply = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))
  logits, state = apply(variables, images)
  np.testing.assert_allclose(logits, outputs["logits"], **TOL)
  np.testing.assert_allclose(outputs["logits"], outputs["logits_f64"], **TOL)
  hooked = meta["models"][key]["hooks"]
  for h in hooked:
    np.testing.assert_allclose(state["intermediates"][hooks[h]][0], outputs[h], **TOL, err_msg=h)
  assert hooked


def param_count(model, size=224):
  """Number of trainable parameters of `model` on a size x size RGB input (shapes only, nothing computed)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def check_converter_is_strict(module, state_dict, dropped_key):
  """convert_official names a missing key and rejects an unexpected one."""
  with pytest.raises(ValueError, match=f"missing '{dropped_key}'"):
    module.convert_official({k: v for k, v in state_dict.items() if k != dropped_key})
  with pytest.raises(ValueError, match="unexpected key"):
    module.convert_official({**state_dict, "extra.weight": np.zeros(3)})
