"""Pseudo-3D residual bottleneck blocks P3D-A / B / C (Qiu et al., ICCV 2017) on x [B, T, H, W, C].

A 3×3×3 convolution is replaced by a spatial 1×3×3 convolution S (each frame alone, 2-D) and a temporal 3×1×1
convolution T (each pixel across adjacent frames), combined in three ways (the residual unit x_{t+1} = x_t + F(x_t)):

    P3D-A (cascade):   x + T(S(x))
    P3D-B (parallel):  x + S(x) + T(x)
    P3D-C (both):      x + S(x) + T(S(x))

As in the paper's bottlenecks, S and T act on the reduced width between two 1×1×1 convolutions, every convolution
is bias-free and followed by BatchNorm (ε = 1e-5, torch momentum 0.1) and ReLU, written here with s = ReLU∘BN∘S and
t = ReLU∘BN∘T:

    h = ReLU(BN(Conv1×1×1_{C -> p, stride (1, σ, σ)}(x)))
    A: g = t(s(h))      B: g = s(h) + t(h)      C: g = s(h) + t(s(h))
    y = ReLU(shortcut(x) + BN(Conv1×1×1_{p -> 4p}(g)))

shortcut = x, or BN(Conv1×1×1_{C -> 4p, stride (1, σ, σ)}(x)) when the stride or width changes. S pads H and W by 1,
T pads the first axis by 1, so only the 1×1×1 convolutions change the size. The first axis is time for video clips
and depth for volumes: the maths is the same. Parameters: C·p + 9p² + 3p² + 4p² + 2·(3p + 4p) BN
(+ 4Cp + 8p with a projection shortcut).
"""
import flax.linen as nn

from effjax.layers.common import batch_norm, torch_kaiming_fan_out

KINDS = ("A", "B", "C")


def _conv(features, kernel, name, stride=1):
  pad = tuple((k // 2, k // 2) for k in kernel)
  return nn.Conv(features, kernel, (1, stride, stride), padding=pad, use_bias=False,
                 kernel_init=torch_kaiming_fan_out, name=name)


class P3DBottleneck(nn.Module):
  """P3D-`kind` bottleneck of width `planes` (output 4·planes) on x [B, T, H, W, C]; see the module docstring."""
  planes: int
  kind: str = "A"
  stride: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    if x.ndim != 5:
      raise ValueError(f"P3D blocks expect x [B, T, H, W, C] (T = time or depth), got shape {x.shape}")
    if self.kind not in KINDS:
      raise ValueError(f"unknown P3D block kind {self.kind!r}; expected one of {KINDS}")
    p = self.planes

    def s(v):
      return nn.relu(batch_norm(train, "spatial_norm")(_conv(p, (1, 3, 3), "spatial")(v)))

    def t(v):
      return nn.relu(batch_norm(train, "temporal_norm")(_conv(p, (3, 1, 1), "temporal")(v)))

    h = nn.relu(batch_norm(train, "reduce_norm")(_conv(p, (1, 1, 1), "reduce", self.stride)(x)))
    if self.kind == "A":
      g = t(s(h))
    elif self.kind == "B":
      g = s(h) + t(h)
    else:
      sh = s(h)
      g = sh + t(sh)
    y = batch_norm(train, "expand_norm")(_conv(4 * p, (1, 1, 1), "expand")(g))
    if self.stride != 1 or x.shape[-1] != 4 * p:
      x = batch_norm(train, "shortcut_norm")(_conv(4 * p, (1, 1, 1), "shortcut", self.stride)(x))
    return nn.relu(x + y)
