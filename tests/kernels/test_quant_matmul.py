"""Quantized matmul: the Pallas kernel (interpret mode) against the XLA reference, ragged shapes, several K tiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import quant_matmul as qm
from effjax.layers import awq


@pytest.mark.parametrize("m,k,n,bits,group,block_k", [(37, 64, 48, 4, 16, 32), (5, 96, 24, 8, 0, 512)])
def test_pallas_kernel_matches_the_reference(m, k, n, bits, group, block_k):
  kx, kw = jax.random.split(jax.random.PRNGKey(m))
  x, w = jax.random.normal(kx, (m, k)), jax.random.normal(kw, (k, n))
  codes, delta, zero = awq.quantize(w, bits, group)
  want = qm.quant_matmul_reference(x, codes, delta, zero)
  np.testing.assert_allclose(want, x @ awq.dequantize(codes, delta, zero), rtol=1e-5, atol=1e-5)
  got = qm.quant_matmul_pallas(x, codes, delta, zero, block_m=16, block_n=24, block_k=block_k, interpret=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_mismatched_shapes_are_errors():
  codes, delta, zero = awq.quantize(jnp.ones((32, 8)), 4, 16)
  with pytest.raises(ValueError, match="do not fit"):
    qm.quant_matmul_pallas(jnp.ones((4, 32)), codes, delta[:1], zero, interpret=True)
