"""Rematerialisation by name, for the `remat` argument every model takes: "none", "full", "dots".

"full" saves nothing and recomputes the wrapped block in the backward pass; "dots" saves the outputs of
matrix multiplications without batch dimensions (the weight matmuls) and recomputes the rest, including
attention scores.
"""
import inspect

import flax.linen as nn
import jax

POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check(policy: str):
  """Raises ValueError for an unknown policy name."""
  if policy not in POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of {list(POLICIES)}")


def remat(cls, policy: str):
  """`cls` wrapped in nn.remat under the named policy ("none" returns it unchanged).

  The `train` argument of `cls.__call__` (found by name) is static, so callers pass it positionally.
  """
  check(policy)
  if policy == "none":
    return cls
  names = list(inspect.signature(cls.__call__).parameters)
  if "train" not in names:
    raise ValueError(f"{cls.__name__}.__call__ has no `train` argument to make static for remat")
  return nn.remat(cls, policy=POLICIES[policy], static_argnums=(names.index("train"),))
