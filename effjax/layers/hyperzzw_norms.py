"""Standardisation without affine parameters (Zhang 2024): instance, batch and group-wise alternating (G-IBS).

All layouts are channels-last, x [B, *spatial, C].

* instance standardisation: per example and channel over the spatial axes, (x − μ)/√(σ² + ε);
* batch standardisation: per channel over batch and spatial axes;
* G-IBS: channels split into `groups` equal groups; even groups (0, 2, ...) are batch-standardised,
  odd groups instance-standardised; no scale or shift.

The official modules use batch statistics at evaluation too (track_running_stats=False), so a test
prediction depends on the rest of its batch. `stats_mode` chooses:
  "batch"        — fidelity: batch statistics at training and evaluation (the official behaviour);
  "accumulated"  — batch statistics while training, plus exponential moving averages (momentum
                   `stats_momentum`, unbiased variance as in PyTorch) kept in the `batch_stats`
                   collection; evaluation standardises with those, so each example is processed
                   independently of its batch.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from effjax.layers.slow_net import STATS_MODES

EPS = 1e-5


def instance_std(x, eps=EPS):
  """Per example and channel over the spatial axes of x [B, *spatial, C]."""
  axes = tuple(range(1, x.ndim - 1))
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class BatchStd(nn.Module):
  """Batch standardisation of x [B, *spatial, C] (statistics per channel over all other axes)."""
  stats_mode: str = "batch"
  stats_momentum: float = 0.9
  eps: float = EPS

  @nn.compact
  def __call__(self, x, train=False):
    if self.stats_mode not in STATS_MODES:
      raise ValueError(f"stats_mode must be one of {STATS_MODES}, got {self.stats_mode!r}")
    axes = tuple(range(x.ndim - 1))
    if self.stats_mode == "accumulated":
      ra_mean = self.variable("batch_stats", "mean", jnp.zeros, x.shape[-1:], jnp.float32)
      ra_var = self.variable("batch_stats", "var", jnp.ones, x.shape[-1:], jnp.float32)
      if not train:
        return (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.eps)
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if self.stats_mode == "accumulated" and not self.is_initializing():
      n = x.size // x.shape[-1]
      m = self.stats_momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
    return (x - mean) * jax.lax.rsqrt(var + self.eps)


class GroupIBS(nn.Module):
  """G-IBS: alternating batch (even groups) / instance (odd groups) standardisation of x [B, *spatial, C]."""
  groups: int = 12
  stats_mode: str = "batch"
  stats_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train=False):
    channels = x.shape[-1]
    if channels % self.groups:
      raise ValueError(f"G-IBS: {channels} channels are not divisible into {self.groups} groups")
    if self.groups % 2:
      raise ValueError(f"G-IBS needs an even number of groups, got {self.groups}")
    size = channels // self.groups
    grouped = x.reshape(*x.shape[:-1], self.groups // 2, 2, size)
    batch_part = grouped[..., 0, :].reshape(*x.shape[:-1], channels // 2)
    instance_part = grouped[..., 1, :].reshape(*x.shape[:-1], channels // 2)
    batch_part = BatchStd(self.stats_mode, self.stats_momentum, name="batch_std")(batch_part, train)
    instance_part = instance_std(instance_part)
    out = jnp.stack([batch_part.reshape(*x.shape[:-1], self.groups // 2, size),
                     instance_part.reshape(*x.shape[:-1], self.groups // 2, size)], axis=-2)
    return out.reshape(x.shape)
