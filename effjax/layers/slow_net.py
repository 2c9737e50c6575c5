"""Slow networks: multiplicative coordinate MLPs (MAGNet) that generate the hyper-kernels W.

A slow network maps the fixed coordinate grid of a kernel, linspace(−1, 1) along each of `data_dim`
axes, to kernel values (Zhang 2024, Sec. 3; MAGNet of Romero et al. 2022):

  h_0 = sin(F_0 p)                                   p: coordinates [*size, data_dim]
  h_l = sin(F_l p) ⊙ (A_l h_{l−1} + a_l) + b         l = 1..num_layers, b: learned bias per position
  W   = O h_L + o                                    [*size, out_channels]

F_l p = 2π ω0 γ ⊙ U p + c, with U ~ U(±1/√data_dim) and γ ~ Gamma(α/(l+1), β) ("Gamma-scaled frequency
initialisation"); A_l Kaiming-uniform (linear gain) with bias 1; O Kaiming-uniform scaled by
√(1/∏size) (Chang et al. 2020 output scaling) with bias 0. These are the official MAGNet_G / MAGNet_GC
(global, hyper-channel) networks.

`LocalSlowNet` is the context-dependent MAGNet_L that generates local hyper-kernels: the input is
adaptively average-pooled to the kernel size, reduced to `hidden` channels and averaged over the batch
(the batch-mean context c), and every hidden layer is S-renormalised and modulated by a linear map of c:

  h_l ← α·sg(h_l) + β·h_l/‖h_l‖  (per hidden channel over kernel positions; α=1, β=0.1, sg = stop-gradient)
  h_l ← h_l ⊙ (X_l gelu(P c + p) + x_l)

The batch mean makes the kernel depend on the rest of the batch. With `stats_mode="accumulated"` an
exponential moving average of the batch-mean context is kept in the `batch_stats` collection during
training and used at evaluation, so evaluation no longer depends on the batch.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effjax.layers.common import torch_default_bias, torch_default_init

STATS_MODES = ("batch", "accumulated")


def coordinate_grid(sizes):
  """[*sizes, len(sizes)] coordinates, linspace(−1, 1) per axis, "ij" indexing."""
  axes = [jnp.linspace(-1.0, 1.0, s) for s in sizes]
  return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


KAIMING_LINEAR = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")   # kaiming_uniform, gain 1


def _constant(value):
  return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


def sample_gamma(key, alpha, shape, tries=16):
  """Gamma(alpha, 1) samples by Marsaglia–Tsang with a fixed number of vectorised proposals.

  Loop-free (cheap to compile, unlike jax.random.gamma's rejection loop); the first accepted proposal
  is exact, and all `tries` are rejected with probability < 0.05**tries. alpha < 1 uses
  Gamma(alpha) = Gamma(alpha + 1)·U^(1/alpha).
  """
  k_norm, k_unif, k_boost = jax.random.split(key, 3)
  a = alpha + 1.0 if alpha < 1.0 else alpha
  d = a - 1.0 / 3.0
  c = 1.0 / math.sqrt(9.0 * d)
  x = jax.random.normal(k_norm, (tries,) + tuple(shape))
  u = jax.random.uniform(k_unif, (tries,) + tuple(shape), minval=1e-12)
  v = (1.0 + c * x) ** 3
  accept = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * jnp.log(jnp.maximum(v, 1e-12)))
  first = jnp.argmax(accept, axis=0)
  sample = d * jnp.take_along_axis(v, first[None], axis=0)[0]
  sample = jnp.where(accept.any(axis=0), sample, d)
  if alpha < 1.0:
    sample = sample * jax.random.uniform(k_boost, tuple(shape), minval=1e-12) ** (1.0 / alpha)
  return sample


class GaborFilter(nn.Module):
  """sin(F p) with Gamma-scaled frequencies: p [..., data_dim] -> [..., hidden]."""
  hidden: int
  omega_0: float
  alpha: float
  beta: float

  @nn.compact
  def __call__(self, coords):
    data_dim = coords.shape[-1]

    def init(key, shape, dtype=jnp.float32):
      k_u, k_g = jax.random.split(key)
      bound = 1.0 / math.sqrt(data_dim)
      gamma = sample_gamma(k_g, self.alpha, shape).astype(dtype) / self.beta
      return jax.random.uniform(k_u, shape, dtype, -bound, bound) * (2 * math.pi * self.omega_0) * gamma

    return jnp.sin(nn.Dense(self.hidden, kernel_init=init, bias_init=nn.initializers.zeros, name="linear")(coords))


def _output_linear(out_channels, num_positions):
  scale = math.sqrt(1.0 / num_positions)
  init = lambda key, shape, dtype=jnp.float32: KAIMING_LINEAR(key, shape, dtype) * scale
  return nn.Dense(out_channels, kernel_init=init, bias_init=nn.initializers.zeros, name="output_linear")


class SlowNet(nn.Module):
  """Global slow network (official MAGNet_G / MAGNet_GC): returns the hyper-kernel [*size, out_channels].

  Attributes:
    size: kernel extent per axis (e.g. (32, 32) for a CIFAR global kernel, (C,) for channel kernels).
    hidden, num_layers: width and number of multiplicative layers.
    omega_0, alpha, beta: frequency scale and Gamma(α/(l+1), β) parameters of the filters.
  """
  size: tuple
  out_channels: int
  hidden: int = 64
  num_layers: int = 2
  omega_0: float = 1.0
  alpha: float = 6.0
  beta: float = 1.0

  @nn.compact
  def __call__(self):
    if self.num_layers < 1:
      raise ValueError(f"SlowNet needs num_layers >= 1, got {self.num_layers}")
    coords = coordinate_grid(self.size)
    bias = self.param("bias_p", nn.initializers.zeros, tuple(self.size))[..., None]
    out = GaborFilter(self.hidden, self.omega_0, self.alpha, self.beta, name="filters_0")(coords)
    for i in range(1, self.num_layers + 1):
      gabor = GaborFilter(self.hidden, self.omega_0, self.alpha / (i + 1), self.beta, name=f"filters_{i}")(coords)
      linear = nn.Dense(self.hidden, kernel_init=KAIMING_LINEAR, bias_init=_constant(1.0), name=f"linears_{i - 1}")
      out = gabor * linear(out) + bias
    return _output_linear(self.out_channels, math.prod(self.size))(out)


def adaptive_avg_pool(x, sizes):
  """PyTorch adaptive_avg_pool over the spatial axes of x [B, *spatial, C] to [B, *sizes, C]."""
  for axis, out_size in enumerate(sizes, start=1):
    n = x.shape[axis]
    i = np.arange(out_size)[:, None]
    starts, ends = (i * n) // out_size, -((-(i + 1) * n) // out_size)
    j = np.arange(n)[None, :]
    pool = np.where((j >= starts) & (j < ends), 1.0 / (ends - starts), 0.0)
    x = jnp.moveaxis(jnp.tensordot(jnp.asarray(pool, x.dtype), x, axes=[[1], [axis]]), 0, axis)
  return x


def s_renormalize(h, alpha=1.0, beta=0.1, eps=1e-12):
  """α·sg(h) + β·h/‖h‖, the norm over kernel positions per hidden channel; h [*size, hidden]."""
  flat = h.reshape(-1, h.shape[-1])
  unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=0, keepdims=True), eps)
  return alpha * jax.lax.stop_gradient(h) + beta * unit.reshape(h.shape)


class LocalSlowNet(nn.Module):
  """Context-dependent slow network (official MAGNet_L): x [B, *spatial, C] -> kernel [*(k,)·d, out_channels]."""
  kernel_size: int
  out_channels: int
  hidden: int = 32
  num_layers: int = 2
  omega_0: float = 1.0
  alpha: float = 6.0
  beta: float = 1.0
  stats_mode: str = "batch"
  stats_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train=False):
    if self.stats_mode not in STATS_MODES:
      raise ValueError(f"stats_mode must be one of {STATS_MODES}, got {self.stats_mode!r}")
    data_dim = x.ndim - 2
    size = (self.kernel_size,) * data_dim
    channels = x.shape[-1]
    pooled = adaptive_avg_pool(x, size)
    reduced = nn.Dense(self.hidden, kernel_init=torch_default_init, bias_init=torch_default_bias(channels),
                       name="fast_reduce")(pooled)
    context = self._batch_mean(reduced, train)
    context = nn.Dense(self.hidden, kernel_init=torch_default_init, bias_init=torch_default_bias(self.hidden),
                       name="fast_fc1")(context)
    context = nn.gelu(context, approximate=False)

    coords = coordinate_grid(size)
    bias = self.param("bias_pk", nn.initializers.zeros, size)[..., None]
    out = GaborFilter(self.hidden, self.omega_0, self.alpha, self.beta, name="filters_0")(coords)
    for i in range(1, self.num_layers + 1):
      gabor = GaborFilter(self.hidden, self.omega_0, self.alpha / (i + 1), self.beta, name=f"filters_{i}")(coords)
      linear = nn.Dense(self.hidden, kernel_init=KAIMING_LINEAR, bias_init=_constant(1.0), name=f"linears_{i - 1}")
      out = s_renormalize(gabor * linear(out) + bias)
      modulation = nn.Dense(self.hidden, kernel_init=KAIMING_LINEAR, bias_init=_constant(1.0),
                            name=f"fast_linears_x_{i - 1}")
      out = out * modulation(context)
    return _output_linear(self.out_channels, math.prod(size))(out)

  def _batch_mean(self, reduced, train):
    """Mean over the batch of [B, *size, hidden]; the accumulated mode keeps and uses an EMA at eval."""
    batch_mean = jnp.mean(reduced, axis=0)
    if self.stats_mode == "batch":
      return batch_mean
    running = self.variable("batch_stats", "context_mean", jnp.zeros, batch_mean.shape, batch_mean.dtype)
    if not train:
      return running.value
    if not self.is_initializing():
      m = self.stats_momentum
      running.value = m * running.value + (1 - m) * jax.lax.stop_gradient(batch_mean)
    return batch_mean
