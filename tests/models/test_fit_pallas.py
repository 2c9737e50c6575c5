"""FIT reaches the Pallas attention kernels: impl="pallas" (interpret mode on CPU) gives the values and
gradients of impl="xla" for the encoder, the causal encoder, the AR decoder and the denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.kernels import attention as attention_lib
from effjax.models import fit, fit_ar, fit_denoiser

TINY = dict(layers="(1)1(1)", latents_per_group=2, width=16, latent_width=16, num_heads=2, latent_num_heads=2,
            mlp_ratio=1)
KEY = jax.random.PRNGKey(0)
TOKENS = jax.random.normal(KEY, (2, 3, 4, 5))  # [B, T groups, N tokens, C]


def _models():
  return {
      "encoder": (lambda impl: fit.FIT(**TINY, num_groups=3, impl=impl), (TOKENS,)),
      "causal_encoder": (lambda impl: fit.FIT(**TINY, num_groups=3, mask="causal", impl=impl), (TOKENS,)),
      "ar_decoder": (lambda impl: fit_ar.Model(**TINY, vocab_size=7, seq_len=12, group_size=4, impl=impl),
                     (jax.random.randint(KEY, (2, 12), 0, 7),)),
      "denoiser": (lambda impl: fit_denoiser.FITDenoiser(**TINY, mask="causal", impl=impl),
                   (TOKENS, jnp.array([0.3, 0.7]), jax.random.normal(KEY, (2, 6)))),
  }


@pytest.mark.slow  # interpret-mode kernels: ~15-20 s of CPU each on an idle core, more under load
@pytest.mark.parametrize("name", list(_models()))
def test_pallas_matches_xla(name, monkeypatch):
  kernel_calls = []
  flash = attention_lib.flash_attention
  monkeypatch.setattr(attention_lib, "flash_attention", lambda *a, **k: kernel_calls.append(1) or flash(*a, **k))
  build, inputs = _models()[name]
  params = build("xla").init(jax.random.PRNGKey(1), *inputs)["params"]

  def value_and_grads(impl):
    def loss(p):
      out = jax.tree.leaves(build(impl).apply({"params": p}, *inputs))
      return sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape))) for o in out), out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (value_x, out_x), grads_x = value_and_grads("xla")
  assert not kernel_calls
  (value_p, out_p), grads_p = value_and_grads("pallas")
  assert kernel_calls  # every attention layer ran the kernel: a dense mask would have raised instead
  for a, b in zip(out_p, out_x):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(value_p, value_x, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), grads_p, grads_x)
