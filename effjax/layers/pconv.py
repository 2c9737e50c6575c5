"""Partial convolution (PConv, Chen et al. 2023, FasterNet) on x [B, H, W, C] (channels-last):

    y = concat(Conv_{k×k}(x[..., :C_p]), x[..., C_p:]),   C_p = C // n_div

a regular (not depthwise) bias-free k×k convolution, stride 1, zero padding k // 2, on the first C_p channels only;
the other channels pass through untouched. FLOPs are (C_p / C)² of a full k×k convolution.
"""
import flax.linen as nn
import jax.numpy as jnp


class PartialConv(nn.Module):
  n_div: int = 4
  kernel_size: int = 3
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    cp = c // self.n_div
    if cp < 1:
      raise ValueError(f"PartialConv: {c} channels with n_div={self.n_div} leave no channel to convolve")
    k, p = self.kernel_size, self.kernel_size // 2
    y = nn.Conv(cp, (k, k), padding=((p, p), (p, p)), use_bias=False, kernel_init=self.kernel_init,
                name="partial_conv3")(x[..., :cp])
    return jnp.concatenate([y, x[..., cp:]], axis=-1)
