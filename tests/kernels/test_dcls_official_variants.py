"""DCLS options of the official code beyond the golden file: version "v0", padding modes, and the 1-D spacing
modules (Dcls2_1d, Dcls3_1d, Dcls2dK1d). References are written here from the official formulas (see the
module docstrings of effjax/kernels/dcls.py and effjax/layers/dcls.py); torch checks the padding semantics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import dcls
from effjax.layers.dcls import Dcls2dK1d, DclsConv, DclsConvDense1d


def v0_official(weight, P, dks):
  """forward_v0: taps at ⌊p⌋ and ⌊p⌋ + 1 with weights 1 - r and r (r = p - ⌊p⌋), dropped off the grid, no
  normaliser. P[k] (+ dks[k] // 2) indexes axis (0,), (0, 1) or (0, 2, 1) for 1-, 2- and 3-D kernels."""
  n = len(dks)
  axes = {1: (0,), 2: (0, 1), 3: (0, 2, 1)}[n]
  pos = [P[k] + dks[k] // 2 for k in range(n)]
  floor = [jnp.floor(p) for p in pos]
  frac = [p - f for p, f in zip(pos, floor)]
  kernel = jnp.zeros(weight.shape[:2] + tuple(dks))
  grids = jnp.meshgrid(*[jnp.arange(d) for d in dks], indexing="ij")
  for corner in itertools.product((0, 1), repeat=n):
    coef = weight
    hit = True
    for k, c in enumerate(corner):
      coef = coef * (frac[k] if c else 1 - frac[k])
    # [O, I, KC, *dks] indicator of the corner tap position
    for k, c in enumerate(corner):
      at = (floor[k] + c)[..., None].reshape(floor[k].shape + (1,) * n)
      hit = hit & (grids[axes[k]] == at)
    kernel = kernel + jnp.einsum("oit,oit...->oi...", coef, hit.astype(coef.dtype))
  return kernel


@pytest.mark.parametrize("dks", [(9,), (7, 5), (5, 7), (3, 5, 4)])
def test_v0_matches_official_formula_values_and_grads(dks):
  r = np.random.default_rng(len(dks))
  w = jnp.asarray(r.normal(size=(3, 2, 4)), jnp.float32)
  lim = np.asarray([d // 2 for d in dks]).reshape(-1, 1, 1, 1)
  P = jnp.asarray(r.uniform(-lim - 0.9, lim + 0.9, size=(len(dks), 3, 2, 4)), jnp.float32)  # some taps fall off
  R = jnp.asarray(r.normal(size=(3, 2) + dks), jnp.float32)
  ours = lambda w, P: (dcls.construct_kernel_reference(w, P, None, dks, "v0") * R).sum()
  ref = lambda w, P: (v0_official(w, P, dks) * R).sum()
  np.testing.assert_allclose(dcls.construct_kernel_reference(w, P, None, dks, "v0"), v0_official(w, P, dks),
                             rtol=1e-5, atol=1e-6)
  for g, h in zip(jax.grad(ours, (0, 1))(w, P), jax.grad(ref, (0, 1))(w, P)):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5)


def test_v0_keeps_tap_mass_only_inside_the_grid():
  w = jnp.ones((1, 1, 1))
  inside = dcls.construct_kernel_reference(w, jnp.asarray([0.3, -0.6]).reshape(2, 1, 1, 1), None, (5, 5), "v0")
  edge = dcls.construct_kernel_reference(w, jnp.asarray([2.25, 0.0]).reshape(2, 1, 1, 1), None, (5, 5), "v0")
  assert float(inside.sum()) == pytest.approx(1.0) and float(edge.sum()) == pytest.approx(0.75)
  assert float(edge[0, 0, 4, 2]) == pytest.approx(0.75)  # v0: P[0] moves along the rows


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch(mode):
  import torch
  x = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
  conv = DclsConv(4, kernel_count=3, dilated_kernel_size=(5, 5), version="gauss", padding=(2, 1), padding_mode=mode)
  params = conv.init(jax.random.key(0), jnp.asarray(x))["params"]
  y = conv.apply({"params": params}, jnp.asarray(x))
  kernel = dcls.construct_kernel_reference(params["weight"], params["P"], params["SIG"], (5, 5), "gauss")
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  bias = torch.from_numpy(np.array(params["bias"]))
  expected = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (1, 1, 2, 2), mode=mode),
                                        torch.from_numpy(np.array(kernel)), bias)
  np.testing.assert_allclose(np.asarray(y), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="unknown padding_mode 'mirror'"):
    DclsConv(4, 3, (5, 5), padding_mode="mirror").init(jax.random.key(0), jnp.asarray(x))


def _dense1d_official(weight, P, sig, dks, version, gauss_offset):
  """Official ConstructKernel2_1d / 3_1d: per dense position, a normalised 1-D profile along the last axis."""
  d = jnp.arange(dks) - (P[0] + dks // 2)[..., None]                      # [O, I, *dense, KC, dks]
  if version == "v1":
    x = jax.nn.relu(1 - jnp.abs(d))
  elif version == "max":
    x = jax.nn.relu(jnp.abs(sig[0])[..., None] + 1.0 - jnp.abs(d))
  else:
    x = jnp.exp(-0.5 * (d / (jnp.abs(sig[0])[..., None] + gauss_offset)) ** 2)
  x = x / (x.sum(-1, keepdims=True) + 1e-7)
  return (x * weight[..., None]).sum(-2)                                  # [O, I, *dense, dks]


@pytest.mark.parametrize("dense,version", [((3,), "gauss"), ((3,), "max"), ((2, 3), "gauss"), ((2, 3), "v1")])
def test_dense1d_kernels_match_official_formula(dense, version):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2,) + (8,) * (len(dense) + 1) + (4,)), jnp.float32)
  conv = DclsConvDense1d(6, kernel_count=3, dense_kernel_size=dense, dilated_kernel_size=7, groups=2,
                         version=version, padding=0)
  variables = conv.init(jax.random.key(1), x)
  params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), variables["params"])
  assert params["weight"].shape == (6, 2) + dense + (3,) and params["P"].shape == (1, 6, 2) + dense + (3,)
  kernel = _dense1d_official(params["weight"], params["P"], params.get("SIG"), 7, version,
                             1.0 if len(dense) == 1 else 0.27)      # Dcls2_1d's gauss uses |σ| + 1.0
  y = conv.apply({"params": params}, x)
  spec = ("NHWC", "OIHW", "NHWC") if len(dense) == 1 else ("NDHWC", "OIDHW", "NDHWC")
  expected = jax.lax.conv_general_dilated(x, kernel, (1,) * x[0, ..., 0].ndim, "VALID", feature_group_count=2,
                                          dimension_numbers=spec) + params["bias"]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="versions v1, gauss, max"):
    DclsConvDense1d(6, 3, dense, 7, version="v0").init(jax.random.key(0), x)


@pytest.mark.parametrize("flat_dim", [0, 1])
def test_dcls2dk1d_is_a_1d_kernel_along_one_axis(flat_dim):
  import torch
  x = np.random.default_rng(2).normal(size=(2, 10, 12, 3)).astype(np.float32)
  conv = Dcls2dK1d(5, kernel_count=2, dilated_kernel_size=5, flat_dim=flat_dim, version="v1",
                   padding=(2, 1), padding_mode="circular")
  params = conv.init(jax.random.key(3), jnp.asarray(x))["params"]
  assert params["weight"].shape == (5, 3, 2) and params["P"].shape == (1, 5, 3, 2) and "SIG" not in params
  kernel = np.asarray(dcls.construct_kernel_reference(params["weight"], params["P"], None, (5,), "v1"))
  kernel = np.expand_dims(kernel, -1 - flat_dim)                          # the official unsqueeze(-1 - flat_dim)
  xt = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), (1, 1, 2, 2), mode="circular")
  expected = torch.nn.functional.conv2d(xt, torch.from_numpy(kernel), torch.from_numpy(np.asarray(params["bias"])))
  y = conv.apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
