"""DCLS kernel construction (XLA and Pallas) and the DclsConv layer against the official golden vectors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effjax.kernels import dcls, dispatch
from effjax.layers.dcls import DclsConv, clamp_dcls_positions


def case_arrays(arrays, case):
  get = lambda key: jnp.asarray(arrays[key]) if key in arrays else None
  return (get(f"param/{case}/weight"), get(f"param/{case}/P"), get(f"param/{case}/SIG"),
          get(f"input/{case}/R"))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_kernels_and_grads_match_official(golden, impl):
  arrays, meta = golden("dcls_kernels")
  cases = list(meta["cases"])
  assert len(cases) == 15 and sum(c.endswith("k7x5") for c in cases) == 3
  if impl == "pallas":  # interpret mode is slow: every version, square and non-square, grouped and not
    cases = [c for c in cases if c.endswith("k7x5") or "_o3_i3_g3_" in c]
  for case in cases:
    w, P, sig, R = case_arrays(arrays, case)
    dks, version = tuple(meta["cases"][case]["dilated_kernel_size"]), meta["cases"][case]["version"]

    @jax.jit
    def kernel_and_grads(w, P, sig, R):  # gradients of sum(K * R) = the VJP with cotangent R
      kernel, vjp = jax.vjp(lambda *a: dcls.construct_kernel(*a, dks, version, impl=impl), w, P, sig)
      return kernel, vjp(R)
    kernel, grads = kernel_and_grads(w, P, sig, R)
    np.testing.assert_allclose(kernel, arrays[f"output/{case}/kernel"], rtol=1e-5, atol=5e-6, err_msg=case)
    for g, name in zip(grads, ["grad_weight", "grad_P", "grad_SIG"][:2 if sig is None else 3]):
      np.testing.assert_allclose(g, arrays[f"output/{case}/{name}"], rtol=1e-4, atol=2e-5, err_msg=f"{case} {name}")


def test_axis_convention_probe():
  # P = (+2, 0) on a 7x7 v1 kernel peaks at (row 3, col 5): P[0] moves along the width.
  k = dcls.construct_kernel_reference(jnp.ones((1, 1, 1)), jnp.asarray([2.0, 0.0]).reshape(2, 1, 1, 1), None,
                                      (7, 7), "v1")
  assert np.unravel_index(int(jnp.argmax(k[0, 0])), (7, 7)) == (3, 5)


def test_reference_any_rank_and_pallas_random_shapes():
  r = np.random.default_rng(0)
  for dks in [(9,), (5, 7), (3, 5, 5)]:
    w = jnp.asarray(r.normal(size=(3, 2, 5)), jnp.float32)
    P = jnp.asarray(r.uniform(-1.5, 1.5, size=(len(dks), 3, 2, 5)), jnp.float32)
    sig = jnp.asarray(r.normal(size=P.shape), jnp.float32)
    k = jax.jit(dcls.construct_kernel_reference, static_argnums=(3, 4))(w, P, sig, dks, "gauss")
    assert k.shape == (3, 2) + dks
    np.testing.assert_allclose(k.sum(axis=tuple(range(2, k.ndim))), w.sum(-1), rtol=1e-4, atol=1e-4)  # in-grid taps
  w = jnp.asarray(r.normal(size=(13, 1, 6)), jnp.float32)  # 13 channel pairs: not a multiple of the block
  P = jnp.asarray(r.uniform(-4, 4, size=(2, 13, 1, 6)), jnp.float32)
  sig = jnp.asarray(r.normal(size=P.shape), jnp.float32)
  loss = lambda f: lambda w, P, sig: jnp.sum(f(w, P, sig, (11, 9), "max") ** 2)
  ref = jax.jit(jax.grad(loss(dcls.construct_kernel_reference), (0, 1, 2)))(w, P, sig)
  got = jax.jit(jax.grad(loss(dcls.construct_kernel_pallas), (0, 1, 2)))(w, P, sig)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_pallas_construction_lowers(platform):
  w = jax.ShapeDtypeStruct((64, 1, 26), jnp.float32)
  P = jax.ShapeDtypeStruct((2, 64, 1, 26), jnp.float32)
  backend = "tpu" if platform == "tpu" else "gpu"
  build = lambda w, P, sig: dcls.construct_kernel_pallas(w, P, sig, (17, 17), "gauss", backend=backend,
                                                         interpret=False)
  f = lambda w, P, sig: jax.value_and_grad(lambda *a: jnp.sum(build(*a) ** 2), (0, 1, 2))(w, P, sig)
  text = dispatch.export(f, platform, w, P, P).mlir_module()
  assert text.count(dispatch.KERNEL_CALLS[platform]) == 3


def test_bad_arguments_raise():
  w, P = jnp.ones((2, 3, 4)), jnp.zeros((2, 2, 3, 4))
  with pytest.raises(ValueError, match="version"):
    dcls.construct_kernel(w, P, None, (7, 7), "cubic")
  with pytest.raises(ValueError, match="SIG"):
    dcls.construct_kernel(w, P, None, (7, 7), "gauss")
  with pytest.raises(ValueError, match="P must be"):
    dcls.construct_kernel(w, P[:1], None, (7, 7), "v1")


def test_dcls_conv_matches_official_dcls2d(golden):
  arrays, _ = golden("dcls_kernels")
  params = {name: jnp.asarray(arrays[f"param/dcls2d_gauss/{name}"]) for name in ("weight", "P", "SIG", "bias")}
  x = jnp.asarray(arrays["input/dcls2d_gauss/x"]).transpose(0, 2, 3, 1)         # NCHW -> NHWC
  layer = DclsConv(features=2, kernel_count=4, dilated_kernel_size=(7, 7), padding=3, version="gauss")
  shapes = jax.tree.map(jnp.shape, layer.init(jax.random.key(0), x)["params"])
  assert shapes == jax.tree.map(jnp.shape, params)
  y = jax.jit(layer.apply)({"params": params}, x)
  np.testing.assert_allclose(y.transpose(0, 3, 1, 2), arrays["output/dcls2d_gauss/y"], rtol=1e-5, atol=1e-5)


def test_positions_are_clamped_after_updates():
  layer = DclsConv(features=4, kernel_count=3, dilated_kernel_size=(5, 9), groups=4, version="v1")
  x = jnp.ones((1, 8, 8, 4))
  params = layer.init(jax.random.key(1), x)["params"]
  assert params["P"].shape == (2, 4, 1, 3)
  lim = np.array([2, 4]).reshape(2, 1, 1, 1)   # official limits: P[k] within ±dks[k] // 2
  tx = optax.sgd(100.0)

  @jax.jit
  def step(params):
    grads = jax.grad(lambda p: -jnp.sum(layer.apply({"params": p}, x) ** 2) - jnp.sum(p["P"]))(params)
    return optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  moved = step(params)
  assert np.any(np.abs(moved["P"]) > lim)  # the large step leaves the kernel ...
  new = clamp_dcls_positions(moved, (5, 9))
  assert np.all(np.abs(new["P"]) <= lim) and np.any(np.abs(new["P"]) == lim)  # ... and the clamp brings it back
  np.testing.assert_array_equal(new["weight"], moved["weight"])
  assert layer.apply({"params": new}, x).shape == (1, 8, 8, 4)


def test_pallas_construction_passes_race_detector():
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
  from jax.experimental.pallas import tpu as pltpu
  r = np.random.default_rng(4)
  w = jnp.asarray(r.normal(size=(9, 1, 4)), jnp.float32)
  P = jnp.asarray(r.uniform(-2, 2, size=(2, 9, 1, 4)), jnp.float32)
  params = pltpu.InterpretParams(detect_races=True)
  build = lambda w, P: dcls.construct_kernel_pallas(w, P, None, (5, 5), "v1", backend="tpu", interpret=params)
  got = jax.jit(jax.grad(lambda w, P: jnp.sum(build(w, P) ** 2), (0, 1)))(w, P)
  want = jax.grad(lambda w, P: jnp.sum(dcls.construct_kernel_reference(w, P, None, (5, 5), "v1") ** 2), (0, 1))(w, P)
  assert not tpu_interpreter.races.races_found
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
