"""Where D-Former's fidelity="official" and "fixed" differ: the reference decides the global-attention
fallback on H alone, so with H >= group_size[1] a grid with D < group_size[0] or W < group_size[2] is
attended in padded windows/groups instead of globally; and GS-MSA padding along D alone is left unmasked."""
import jax
import numpy as np
import pytest

from effjax.layers.dformer import DilatedBlock

GROUP = (2, 4, 4)


def _both(shape, pattern, interval=1):
  x = jax.random.normal(jax.random.key(0), shape)
  official = DilatedBlock(1, pattern, GROUP, interval, fallback_axes=(1,), official_padding_mask=True)
  fixed = DilatedBlock(1, pattern, GROUP, interval)
  params = official.init(jax.random.key(1), x)  # same parameter tree in both modes
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  return np.asarray(official.apply(params, x)), np.asarray(fixed.apply(params, x))


@pytest.mark.parametrize("shape,pattern,interval", [
    ((1, 2, 8, 3, 4), "local", 1),     # W < group_size[2] <= H: the case
    ((1, 1, 8, 8, 4), "dilated", 4),   # D < group_size[0] while H >= group_size[1]
])
def test_modes_differ_when_h_fits_the_group_but_d_or_w_does_not(shape, pattern, interval):
  official, fixed = _both(shape, pattern, interval)
  assert np.abs(official - fixed).max() > 1e-2


def test_modes_differ_when_gs_msa_pads_d_alone():
  official, fixed = _both((1, 3, 8, 8, 4), "dilated", interval=2)   # D = 3 padded to 4; H, W need no padding
  assert np.abs(official - fixed).max() > 1e-2


@pytest.mark.parametrize("shape,pattern,interval", [
    ((1, 2, 3, 8, 4), "local", 1),     # H < group_size[1]: both attend globally
    ((1, 4, 8, 8, 4), "dilated", 2),   # no padding at all
    ((1, 4, 6, 8, 4), "dilated", 2),   # H padded: both mask
    ((1, 2, 4, 3, 4), "local", 1),     # W < group_size[2] <= H, but the padded grid is one window
    ((2, 1, 4, 4, 4), "local", 1),     # D < group_size[0], H = group_size[1]: likewise one window
])
def test_modes_agree_elsewhere(shape, pattern, interval):
  official, fixed = _both(shape, pattern, interval)
  np.testing.assert_allclose(official, fixed, rtol=1e-6, atol=1e-6)
