"""EvoNorm-B0 and EvoNorm-S0 (Liu et al., 2020): normalisation and activation in one layer, as timm's
EvoNorm2dB0 / EvoNorm2dS0, on x [B, H, W, C] (channels-last); γ, β, v are per-channel.

  B0:  y = x / max(√(σ²_batch + ε), v·x + √(σ²_inst(x) + ε)) · γ + β
       σ²_batch: per-channel variance over (B, H, W) in training, the running variance in evaluation;
       σ²_inst: per-(example, channel) variance over (H, W). ε = 1e-3. In training the running variance is
       updated as r ← (1 − m)·r + m·σ²_batch·n/(n − 1), n = B·H·W, m = 0.1 (collection "batch_stats").
  S0:  y = x · σ(v·x) / √(σ²_group(x) + ε) · γ + β
       σ²_group: per-(example, group) variance over (H, W, C/groups); ε = 1e-5; groups = C / group_size
       when group_size is given.

With apply_act=False both reduce to the affine y = x·γ + β (no v), as in timm. All variances are biased ones.
Parameter names follow timm (weight, bias, v; running_var), so timm state dicts map one to one.
"""
import flax.linen as nn
import jax.numpy as jnp


def _affine(module, x):
  c = x.shape[-1]
  w = module.param("weight", nn.initializers.ones, (c,))
  b = module.param("bias", nn.initializers.zeros, (c,))
  return x * w.astype(x.dtype) + b.astype(x.dtype)


class EvoNormB0(nn.Module):
  apply_act: bool = True
  momentum: float = 0.1
  eps: float = 1e-3

  @nn.compact
  def __call__(self, x, train=False):
    if x.ndim != 4:
      raise ValueError(f"EvoNormB0 expects x [B, H, W, C], got shape {x.shape}")
    if self.apply_act:
      c = x.shape[-1]
      running = self.variable("batch_stats", "running_var", lambda: jnp.ones((c,), jnp.float32))
      if train:
        var = jnp.var(x.astype(jnp.float32), axis=(0, 1, 2))
        n = x.size / c
        if not self.is_initializing():
          running.value = (1 - self.momentum) * running.value + self.momentum * var * (n / (n - 1))
      else:
        var = running.value
      v = self.param("v", nn.initializers.ones, (c,)).astype(x.dtype)
      inst = jnp.sqrt(jnp.var(x.astype(jnp.float32), axis=(1, 2), keepdims=True) + self.eps).astype(x.dtype)
      x = x / jnp.maximum(jnp.sqrt(var + self.eps).astype(x.dtype), x * v + inst)
    return _affine(self, x)


class EvoNormS0(nn.Module):
  groups: int = 32
  group_size: int | None = None
  apply_act: bool = True
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, train=False):
    if x.ndim != 4:
      raise ValueError(f"EvoNormS0 expects x [B, H, W, C], got shape {x.shape}")
    b, h, w, c = x.shape
    groups = c // self.group_size if self.group_size else self.groups
    if c % groups or (self.group_size and c % self.group_size):
      raise ValueError(f"EvoNormS0: {c} channels do not split into groups of "
                       f"{self.group_size or f'{groups} groups'}")
    if self.apply_act:
      v = self.param("v", nn.initializers.ones, (c,)).astype(x.dtype)
      g = x.astype(jnp.float32).reshape(b, h, w, groups, c // groups)
      std = jnp.sqrt(jnp.var(g, axis=(1, 2, 4), keepdims=True) + self.eps)
      std = jnp.broadcast_to(std, g.shape).reshape(x.shape).astype(x.dtype)
      x = x * nn.sigmoid(x * v) / std
    return _affine(self, x)
