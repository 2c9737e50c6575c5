"""Fast-network modules of the Terminator (Zhang 2024): RGU, local branch, hyper-interactions, SFNE block.

Channels-last layout, x [B, *spatial, C] with one (sequence) or two (image) spatial axes. Module and
parameter names follow the official PyTorch modules so that `effjax.models.terminator.convert_official`
is a renaming; `Linear{1,2}d` (1×1 convolutions) are `nn.Dense` on the channel axis.
"""
import flax.linen as nn
import jax.numpy as jnp

from effjax.kernels import hyperzzw
from effjax.layers.common import torch_kaiming_normal
from effjax.layers.hyperzzw_norms import BatchStd, GroupIBS, instance_std
from effjax.layers.slow_net import KAIMING_LINEAR, LocalSlowNet, SlowNet


def _dense(features, name, init=torch_kaiming_normal):
  return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros, name=name)


def _spatial_mean(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


class RGU(nn.Module):
  """Recursive gated unit: y = W_Y(gelu(IS(W_K x ⊙ W_Q(W_V x))) + b), b a learned bias per position."""

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    k = _dense(channels, "fast_linear_k", KAIMING_LINEAR)(x)
    v = _dense(channels, "fast_linear_v", KAIMING_LINEAR)(x)
    q = nn.gelu(instance_std(k * _dense(channels, "fast_linear_q", KAIMING_LINEAR)(v)), approximate=False)
    q = q + self.param("fast_bias_p", nn.initializers.zeros, x.shape[1:-1])[..., None]
    return _dense(channels, "fast_linear_y", KAIMING_LINEAR)(q)


class LocalConv(nn.Module):
  """Local HyperZ·Z·W step 2: gelu(BS(mix(depthwise_conv(x, hyper_kernel)))); kernel [*(k,), C]."""
  stats_mode: str = "batch"
  stats_momentum: float = 0.9
  impl: str = "auto"

  @nn.compact
  def __call__(self, hyper_kernel, x, train=False):
    out = hyperzzw.local_conv(x, hyper_kernel, impl=self.impl)
    out = _dense(x.shape[-1], "channel_mixer")(out)
    out = BatchStd(self.stats_mode, self.stats_momentum, name="batch_std")(out, train)
    return nn.gelu(out, approximate=False)


class HyperChannelInteract(nn.Module):
  """x ⊙ σ(ȳ ⊙ w_c ⊙ ȳ): ȳ the spatial mean [B, C], w_c [C] from a 1D slow network over channels."""
  hidden: int = 32
  num_layers: int = 2
  omega_0: float = 2000.0

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    y = _spatial_mean(x)
    w = SlowNet((channels,), 1, self.hidden, self.num_layers, self.omega_0, name="slow_net_gc")()[:, 0]
    score = nn.sigmoid(hyperzzw.hyperzzw_2e(w, y))
    return x * score.reshape(score.shape[0], *(1,) * (x.ndim - 2), channels)


class HyperInteract(nn.Module):
  """x ⊙ σ(s_spatial ⊙ s_channel) with s = z ⊙ w ⊙ z, from channel means and spatial means of y."""
  channel_hidden: int = 16
  spatial_hidden: int = 64
  num_layers: int = 2
  omega_0: float = 2000.0

  @nn.compact
  def __call__(self, y, x):
    channels, spatial = y.shape[-1], y.shape[1:-1]
    y_c = _spatial_mean(y)                                         # [B, C]
    w_c = SlowNet((channels,), 1, self.channel_hidden, self.num_layers, self.omega_0, name="slow_net_gc")()[:, 0]
    score_c = hyperzzw.hyperzzw_2e(w_c, y_c).reshape(y.shape[0], *(1,) * len(spatial), channels)
    y_s = jnp.mean(y, axis=-1, keepdims=True)                      # [B, *spatial, 1]
    w_s = SlowNet(spatial, 1, self.spatial_hidden, self.num_layers, self.omega_0, name="slow_net_gs")()
    score_s = hyperzzw.hyperzzw_2e(w_s, y_s)
    return x * nn.sigmoid(score_s * score_c)


class FastMultiBranch(nn.Module):
  """The ten branches of an SFNE block, concatenated (with earlier block outputs) and bottlenecked.

  With Z the input [B, *S, C], W_g = slow_net_g() [*S, C] the global hyper-kernel, K = Z ⊙ W_g:
    fast  = IS(RGU_slow(K) + RGU_fast(Z));  mix = IS(Linear(Z));  hci = IS(HyperChannelInteract(Z))
    [out, out_x, out_hci] = hyperzzw_global(W_g, Z, [fast, mix, hci])   (K @ each map, one fused kernel)
    glu   = σ(out) ⊙ out;  hyper = HyperInteract(out, Z)
    local_i = LocalConv(LocalSlowNet_i(src_i), dst_i) + b_i   for kernel sizes (3, 9, 5, 7) with
              (src, dst) = (Z, hci), (hci, Z), (mix, Z), (Z, mix)
  concat [out, local_2, pre_1?, fast, out_x, local_1, glu, local_3, out_hci, local_4, pre_2?, hyper]
  -> Linear to C·expansion. Earlier outputs `pre` (fewer channels) are tiled along channels to C.
  Returns (y [B, *S, C·expansion], W_g).
  """
  expansion: int
  global_layers: int = 2
  global_hidden: int = 64
  local_sizes: tuple = (3, 9, 5, 7)
  local_hidden: int = 32
  local_layers: int = 2
  channel_hidden: int = 32
  interact_channel_hidden: int = 16
  interact_spatial_hidden: int = 64
  interact_layers: int = 2
  omega_0: float = 2000.0
  stats_mode: str = "batch"
  stats_momentum: float = 0.9
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, pre=(), train=False):
    channels, spatial = x.shape[-1], x.shape[1:-1]
    if len(self.local_sizes) != 4:
      raise ValueError(f"FastMultiBranch needs 4 local kernel sizes, got {self.local_sizes}")
    if len(pre) > 2:
      raise ValueError(f"FastMultiBranch concatenates at most 2 earlier outputs, got {len(pre)}")
    stats = dict(stats_mode=self.stats_mode, stats_momentum=self.stats_momentum)

    global_hk = SlowNet(spatial, channels, self.global_hidden, self.global_layers, self.omega_0,
                        name="slow_net_g")()
    ctx = x * global_hk                                             # HyperZ·Z·W step 1, for the RGU
    fast = instance_std(RGU(name="Fast_Kernel_rgu_2")(ctx) + RGU(name="Fast_Kernel_rgu")(x))
    mix = instance_std(_dense(channels, "channel_mixer_mlp")(x))
    hci = instance_std(HyperChannelInteract(self.channel_hidden, 2, self.omega_0, name="channel_mixer_hci")(x))

    # HyperZ·Z·W step 2 (global): one fused call filters the three maps with K = Z ⊙ W_g.
    mixed, _ = hyperzzw.hyperzzw_global(global_hk, x, jnp.concatenate([fast, mix, hci], axis=-1), impl=self.impl)
    out, out_x, out_hci = jnp.split(mixed, 3, axis=-1)
    out_glu = nn.sigmoid(out) * out
    hyper = HyperInteract(self.interact_channel_hidden, self.interact_spatial_hidden, self.interact_layers,
                          self.omega_0, name="hyper_interact")(out, x)

    sources, targets = (x, hci, mix, x), (hci, x, x, mix)
    local = []
    for i, (size, src, dst) in enumerate(zip(self.local_sizes, sources, targets), start=1):
      kernel = LocalSlowNet(size, channels, self.local_hidden, self.local_layers, self.omega_0,
                            name=f"slow_net_l{i}", **stats)(src, train)
      feat = LocalConv(impl=self.impl, name=f"local_interact_conv_{i}", **stats)(kernel, dst, train)
      local.append(feat + self.param(f"bias{i}", nn.initializers.zeros, (1,)))

    tiled = [jnp.tile(p, (1,) * (p.ndim - 1) + (channels // p.shape[-1],)) for p in pre]
    for p in pre:
      if channels % p.shape[-1]:
        raise ValueError(f"earlier output with {p.shape[-1]} channels cannot be tiled to {channels}")
    parts = [out, local[1]] + tiled[:1] + [fast, out_x, local[0], out_glu, local[2], out_hci, local[3]]
    parts += tiled[1:] + [hyper]
    y = _dense(channels * self.expansion, "bottleneck_layer")(jnp.concatenate(parts, axis=-1))
    return y, global_hk


class SFNEBlock(nn.Module):
  """Slow-fast neural encoding block: dropout(gelu(G-IBS(FastMultiBranch(x, pre))) + b); no residual."""
  expansion: int
  dropout: float = 0.0
  norm_groups: int = 12
  branch: dict = None
  stats_mode: str = "batch"
  stats_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, pre=(), train=False):
    stats = dict(stats_mode=self.stats_mode, stats_momentum=self.stats_momentum)
    y, global_hk = FastMultiBranch(self.expansion, name="fast_multi_branch", **stats, **(self.branch or {}))(
        x, pre, train)
    y = nn.gelu(GroupIBS(self.norm_groups, name="gibs", **stats)(y, train), approximate=False)
    y = y + self.param("bias", nn.initializers.zeros, (1,))
    y = nn.Dropout(self.dropout, broadcast_dims=tuple(range(1, y.ndim - 1)))(y, deterministic=not train)
    return y, global_hk
