"""Small blocks every model shares: stochastic depth, the PyTorch-default initialisers, LayerNorm epsilons,
PyTorch-style BatchNorm.

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
# kaiming_normal_(mode="fan_out"), the conv init of timm's and torchvision's CNNs: N(0, 2/fan_out).
torch_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias(fan_in: int):
  """U(±1/√fan_in), PyTorch's default bias initialisation for linear and conv layers."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def batch_norm(train: bool, name: str, **kw):
  """nn.BatchNorm with PyTorch's defaults (ε = 1e-5, momentum 0.1, i.e. Flax momentum 0.9): batch statistics
  in training, the running ones ("batch_stats") in evaluation."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name, **kw)


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


def decode_variant(variant: str | None, table: dict, family: str) -> dict:
  """big_vision-style variant names: "B" -> table["B"] (a dict of model fields), "B/16" -> that plus
  patch_size=16; None -> {}."""
  if variant is None:
    return {}
  name, _, patch = str(variant).partition("/")
  if name not in table or (patch and not patch.isdigit()):
    raise ValueError(f"unknown {family} variant {variant!r}; expected one of {list(table)}, optionally with "
                     f"/patch_size, e.g. '{next(iter(table))}/16'")
  return {**table[name], **({"patch_size": int(patch)} if patch else {})}


def with_variants(cls, table: dict, family: str):
  """The model entry point `Model(*, variant=None, **kw)` of a family (big_vision's `Model(variant="B/16")`):
  builds `cls` from the named variant's fields of `table`, with `kw` overriding them."""
  def model(*, variant: str | None = None, **kw):
    return cls(**{**decode_variant(variant, table, family), **kw})
  model.__doc__ = (f"{cls.__name__} from a variant ({', '.join(table)}, optionally '/patch_size') and field "
                   f"overrides; see `{cls.__name__}`.")
  return model
