"""Translation-variant convolution (TVConv, Chen et al., CVPR 2022) on x [B, H, W, C] (channels-last).

A depthwise k×k convolution whose kernel differs at every output position but not between images:

    y[b, i, j, c] = Σ_{u,v} W[i, j, c, u·k + v] · x_pad[b, s·i + u, s·j + v, c]  (+ β[i, j, c])
    W = reshape(G(A), [H', W', C, k²]),  β = G_β(A)

x_pad is x zero-padded by (k − 1) // 2 on each side, s the stride, H' × W' = ceil(H / s) × ceil(W / s) the output
size. A [H', W', C_a] are the learned *affinity maps* (initialised to ones); the weight-generating block G is

    G(A) = Conv3×3(h_L),   h_0 = ReLU(LN(Conv3×3_{C_a -> I}(A))),   h_l = ReLU(LN(Conv3×3_{I -> I}(h_{l-1})))

with bias-free zero-padded convolutions, L = `hidden_layers`, I = `hidden`, the last conv giving C·k² channels
(channel-major: channel c, tap t at c·k² + t), and LN a LayerNorm over the whole [H', W', I] map with a learned
affine per element (ε = 1e-5). G_β (only with `use_bias`) is a second such block ending in C channels, on the
same A. Since W and β do not depend on x, they can be computed once for inference.

Parameters (w/o bias): H'W'C_a + 9·C_a·I + 2H'W'I + L·(9I² + 2H'W'I) + 9·I·C·k²; with bias add
9·C_a·I + 2H'W'I + L·(9I² + 2H'W'I) + 9·I·C.
The layer is tied to one input size: the affinity maps take the output size seen at initialisation, and another
input size is a ValueError.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.layers.common import TORCH_LN_EPS, torch_kaiming_fan_out


class WeightGenerator(nn.Module):
  """G above: affinity maps [1, H', W', C_a] -> [1, H', W', features]."""
  features: int
  hidden: int = 64
  hidden_layers: int = 3

  @nn.compact
  def __call__(self, a):
    for i in range(self.hidden_layers + 1):
      a = nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=torch_kaiming_fan_out,
                  name=f"conv{i}")(a)
      a = nn.relu(nn.LayerNorm(epsilon=TORCH_LN_EPS, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1),
                               name=f"norm{i}")(a))
    return nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=torch_kaiming_fan_out,
                   name="out")(a)


def output_size(size: int, kernel_size: int, stride: int) -> int:
  """Output length of a stride-s, zero-padded ((k − 1) // 2 each side) convolution: ceil(size / s) for odd k."""
  p = (kernel_size - 1) // 2
  return (size + 2 * p - kernel_size) // stride + 1


class TVConv(nn.Module):
  """TVConv over x [B, H, W, C] -> [B, H', W', C]; see the module docstring. The defaults (C_a = 4, I = 64, L = 3)
  are those the official face-recognition training uses."""
  kernel_size: int = 3
  stride: int = 1
  affinity_channels: int = 4
  hidden: int = 64
  hidden_layers: int = 3
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4:
      raise ValueError(f"TVConv expects x [B, H, W, C], got shape {x.shape}")
    k, s = self.kernel_size, self.stride
    if k % 2 == 0:
      raise ValueError(f"TVConv needs an odd kernel_size, got {k}")
    c, ho, wo = x.shape[-1], output_size(x.shape[1], k, s), output_size(x.shape[2], k, s)
    shape = (ho, wo, self.affinity_channels)
    if self.has_variable("params", "affinity") and self.get_variable("params", "affinity").shape != shape:
      have = self.get_variable("params", "affinity").shape
      raise ValueError(f"TVConv: input {x.shape[1]}x{x.shape[2]} gives {ho}x{wo} outputs but the affinity maps are "
                       f"{have[0]}x{have[1]}: the layer is tied to the input size it was initialised with")
    a = self.param("affinity", nn.initializers.ones, shape)[None]
    w = WeightGenerator(c * k * k, self.hidden, self.hidden_layers, name="weight_gen")(a)[0]
    w = w.reshape(ho, wo, c, k * k).astype(x.dtype)
    p = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = jnp.zeros((x.shape[0], ho, wo, c), x.dtype)
    for u in range(k):  # accumulate tap by tap: no [B, H', W', C, k²] patch tensor
      for v in range(k):
        y = y + xp[:, u:u + s * (ho - 1) + 1:s, v:v + s * (wo - 1) + 1:s] * w[..., u * k + v]
    if self.use_bias:
      y = y + WeightGenerator(c, self.hidden, self.hidden_layers, name="bias_gen")(a)[0].astype(x.dtype)
    return y
