"""Small blocks every model shares: stochastic depth, the PyTorch-default initialisers, LayerNorm epsilons.

A model ported from PyTorch uses `TORCH_LN_EPS` and the `torch_*` initialisers so that its initial
parameter distribution (and hence training from scratch) matches the official code; ports of Keras,
big_vision or Flax code use `LN_EPS`.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-6        # LayerNorm epsilon of Keras, big_vision and Flax
TORCH_LN_EPS = 1e-5  # LayerNorm epsilon of PyTorch's nn.LayerNorm

# PyTorch nn.Linear / nn.ConvNd default weight init: U(±1/√fan_in) (kaiming_uniform with a = √5).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torch.nn.init.kaiming_normal_ (fan_in, ReLU gain √2): N(0, 2/fan_in).
torch_kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_default_bias(fan_in: int):
  """U(±1/√fan_in), PyTorch's default bias initialisation for linear and conv layers."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class DropPath(nn.Module):
  """Stochastic depth on a residual branch x [B, ...]: in training, each example's whole branch is zeroed
  with probability `rate` and kept ones are scaled by 1/(1 − rate); identity in evaluation. Uses the
  "dropout" rng."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)
