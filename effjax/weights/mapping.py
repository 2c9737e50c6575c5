"""Name and layout mappings shared by the models' `convert_official` (official PyTorch state dict -> Flax params).

  nn.Linear weight [out, in], 1×1 conv weight [out, in, 1, …]  -> Dense kernel [in, out]        (`dense_kernel`)
  ConvNd weight [out, in / groups, *k] (OIHW, OIDHW)           -> Conv kernel [*k, in / groups, out] (`conv_kernel`)
  depthwise Conv2d weight [C, 1, kh, kw]                       -> kernel [kh, kw, C] (kernels/depthwise_conv)
  LayerNorm weight, bias                                       -> {scale, bias}
  BatchNorm weight, bias | running_mean, running_var           -> params {scale, bias} | batch_stats {mean, var}

`OfficialStateDict` reads a state dict by these rules, records the names it read, and reports the ones it did not.
"""
import re

import numpy as np

BATCH_NORM_BUFFERS = (r".*num_batches_tracked",)  # BatchNorm's step counter: no Flax counterpart


def dense_kernel(weight):
  """[out, in] or [out, in, 1, …] (a 1×1 convolution) -> [in, out]."""
  return weight.reshape(weight.shape[:2]).T


def conv_kernel(weight):
  """[out, in, *k] -> [*k, in, out] for convolutions of any rank."""
  return weight.transpose(*range(2, weight.ndim), 1, 0)


class OfficialStateDict(dict):
  """An official state dict (names -> numpy arrays; torch tensors accepted, a "module." prefix stripped) that
  records which keys were read, so that a conversion can report the keys it did not use."""

  def __init__(self, state_dict):
    super().__init__({(k[len("module."):] if k.startswith("module.") else k): np.asarray(v)
                      for k, v in state_dict.items()})
    self.used = set()

  def __getitem__(self, key):
    if key not in self:
      raise ValueError(f"official state dict is missing {key!r}")
    self.used.add(key)
    return super().__getitem__(key)

  def _with_bias(self, prefix, out, bias):
    if bias:
      out["bias"] = self[f"{prefix}.bias"]
    return out

  def layer_norm(self, prefix):
    return {"scale": self[f"{prefix}.weight"], "bias": self[f"{prefix}.bias"]}

  def linear(self, prefix, bias=True):
    """nn.Linear (or 1×1 convolution) `prefix` -> Dense {kernel [in, out], bias}."""
    return self._with_bias(prefix, {"kernel": dense_kernel(self[f"{prefix}.weight"])}, bias)

  def conv(self, prefix, bias=True):
    """ConvNd `prefix` -> Conv {kernel [*k, in, out], bias}."""
    return self._with_bias(prefix, {"kernel": conv_kernel(self[f"{prefix}.weight"])}, bias)

  def depthwise(self, prefix):
    """Depthwise Conv2d [C, 1, kh, kw] -> (kernel [kh, kw, C], bias [C])."""
    return self[f"{prefix}.weight"][:, 0].transpose(1, 2, 0), self[f"{prefix}.bias"]

  def batch_norm(self, prefix):
    """BatchNorm `prefix` -> (params {scale, bias}, batch_stats {mean, var})."""
    return (self.layer_norm(prefix), {"mean": self[f"{prefix}.running_mean"], "var": self[f"{prefix}.running_var"]})

  def conv_bn(self, conv, bn):
    """A bias-free conv + BatchNorm pair -> ({"conv": {kernel}, "bn": {scale, bias}}, {"bn": {mean, var}}), the
    variables of `effjax.layers.resnet_blocks.ConvBN`."""
    bn_params, bn_stats = self.batch_norm(bn)
    return {"conv": self.conv(conv, bias=False), "bn": bn_params}, {"bn": bn_stats}

  def gate(self, prefix):
    """timm SEModule (fc1, fc2: 1×1 convs) or EcaModule (conv: Conv1d [1, 1, k]) -> params of the
    `effjax.layers.squeeze_excite` gate."""
    if f"{prefix}.conv.weight" in self:
      return {"conv": self[f"{prefix}.conv.weight"].reshape(-1)}
    return {"fc1": self.linear(f"{prefix}.fc1"), "fc2": self.linear(f"{prefix}.fc2")}

  def check_all_used(self, ignored=()):
    """Raises ValueError naming keys that were not read (and do not fully match a regex in `ignored`)."""
    left = sorted(k for k in self if k not in self.used and not any(re.fullmatch(p, k) for p in ignored))
    if left:
      raise ValueError(f"official state dict has {len(left)} unexpected key(s): {', '.join(left[:5])}")


def params_only(convert_official_variables):
  """`convert_official` of a model with BatchNorm: the "params" of its `convert_official_variables`."""

  def convert_official(state_dict) -> dict:
    """Params of `Model` from an official state dict (the contract of effjax.weights / config.init_from); the
    BatchNorm running statistics come with `convert_official_variables`."""
    return convert_official_variables(state_dict)["params"]

  return convert_official
