"""CRATE classifier: golden equivalence with the official PyTorch model, parameter counts, ISTA algebra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers.crate import ISTA
from effjax.models import crate, crate_mae

TOL = dict(rtol=1e-5, atol=1e-5)  # reference README section 1


def _golden_model(meta, **kw):
  c = meta["ctor"]
  return crate.Model(num_classes=c["num_classes"], patch_size=c["patch_size"], width=c["dim"], depth=c["depth"],
                     num_heads=c["heads"], head_dim=c["dim_head"], pool=c["pool"], **kw)


def _official_params(arrays):
  return {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}


def _run_golden(golden, **kw):
  arrays, meta = golden("crate_small")
  model = _golden_model(meta, **kw)
  params = crate.convert_official(_official_params(arrays))
  images = jnp.asarray(arrays["input/img"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  logits, state = model.apply({"params": params}, images, mutable=["intermediates"])
  return arrays, logits, state["intermediates"]


def test_golden_logits_and_intermediates(golden):
  arrays, logits, inter = _run_golden(golden)
  np.testing.assert_allclose(logits, arrays["output/logits"], **TOL)
  checked = 1
  for key, want in arrays.items():
    if not key.startswith("output/") or key == "output/logits":
      continue
    name = key[len("output/"):]
    if name.startswith("layer"):
      layer, leaf = name.split("/")
      np.testing.assert_allclose(inter[layer][leaf][0], want, **TOL, err_msg=name)
      checked += 1
    elif name in inter:
      np.testing.assert_allclose(inter[name][0], want, **TOL, err_msg=name)
      checked += 1
  assert checked == 1 + 4 + 2 * 4  # logits, 4 stem/pool intermediates, 4 per layer


def test_golden_remat_same_values(golden):
  arrays, logits, _ = _run_golden(golden, remat="full")
  np.testing.assert_allclose(logits, arrays["output/logits"], **TOL)


def test_convert_official_rejects_missing_and_unexpected_keys(golden):
  arrays, _ = golden("crate_small")
  sd = _official_params(arrays)
  with pytest.raises(ValueError, match="missing 'mlp_head.1.bias'"):
    crate.convert_official({k: v for k, v in sd.items() if k != "mlp_head.1.bias"})
  with pytest.raises(ValueError, match="unexpected key"):
    crate.convert_official({**sd, "extra.weight": np.zeros(3)})
  prefixed = crate.convert_official({"module." + k: v for k, v in sd.items()})
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), prefixed, crate.convert_official(sd)))


def _count(model, image_size, channels=3):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, channels)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("variant,count", [
    ("T", 6_090_856), ("S", 13_116_328), ("B", 22_796_008), ("L", 77_641_192)])
def test_param_counts_official_variants(variant, count):
  model = crate.Model(num_classes=1000, patch_size=16, variant=variant)
  assert _count(model, 224) == count


def test_variant_fields_and_overrides():
  """A variant fills the family's table fields ("/8" the patch size); explicit fields override them."""
  model = crate.Model(num_classes=10, variant="B/8", depth=2)
  assert (model.width, model.num_heads, model.patch_size, model.depth) == (768, 12, 8, 2)
  mae = crate_mae.Model(variant="S")
  assert (mae.width, mae.depth, mae.num_heads, mae.decoder_depth) == (576, 12, 12, 12)


def test_ista_step_equals_official_three_matmul_form():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
  ista = ISTA(eta=0.1, lmbda=0.1)
  params = ista.init(jax.random.PRNGKey(2), x)
  d = params["params"]["D"]
  official = jax.nn.relu(x + 0.1 * (x @ d - (x @ d.T) @ d) - 0.01)
  np.testing.assert_allclose(ista.apply(params, x), official, rtol=1e-5, atol=1e-6)
  # its hand-written backward (layers/crate.relu_affine) equals autodiff of the official form
  c = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  official_fn = lambda d, x: jnp.sum(c * jax.nn.relu(x + 0.1 * (x @ d - (x @ d.T) @ d) - 0.01))
  ours = jax.grad(lambda p, x: jnp.sum(c * ista.apply(p, x)), argnums=(0, 1))(params, x)
  want = jax.grad(official_fn, argnums=(0, 1))(d, x)
  np.testing.assert_allclose(ours[0]["params"]["D"], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1], want[1], rtol=1e-5, atol=1e-6)


def test_gradients_finite_and_nonzero_for_every_param():
  model = crate.Model(num_classes=10, patch_size=4, width=32, depth=2, num_heads=2, pool="gap")
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(1), images)["params"]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images) ** 2)))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_bad_input_errors():
  model = crate.Model(num_classes=10, patch_size=5, width=16, depth=1, num_heads=2)
  with pytest.raises(ValueError, match="not divisible by patch size"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="unknown CRATE variant"):
    crate.Model(num_classes=10, variant="XL")


@pytest.mark.parametrize("spec", ["crate.py:variant=T", "crate.py:variant=L,dataset=tfds:cifar10,num_classes=10",
                                  "crate_alpha.py:variant=L/14,stage=finetune", "crate_alpha.py:runlocal",
                                  "crate_finetune.py:variant=S",
                                  "crate_mae.py:variant=S", "crate_mae.py:runlocal"])
def test_configs_build_their_models(spec):
  import os

  from effjax import components, config as cfg
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = cfg.load_config_file(os.path.join(repo, "configs", spec))
  components.load("models", c.model_name).Model(**c.model)
  components.load("tasks", c.task_name).Task(c)
  if spec == "crate.py:variant=T":
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay, c.batch_size, c.total_epochs,
            c.task.label_smoothing) == ("lion", 2e-4, 0.05, 512, 200.0, 0.1)
