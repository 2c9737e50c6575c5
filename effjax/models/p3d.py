"""Pseudo-3D ResNet (P3D ResNet, Qiu et al., ICCV 2017): a bottleneck ResNet whose 3×3 convolutions become P3D
blocks, cycling A -> B -> C over the whole network for structural diversity. Video clips [B, T, H, W, C] or volumes
[B, D, H, W, C] -> logits [B, num_classes]; the first axis (time or depth) keeps its length until the head.

  stem    = MaxPool_{1×3×3, stride (1, 2, 2)}(ReLU(BN(Conv_{1×7×7, stride (1, 2, 2)}(x))))      width `width`
  stage i = layers[i] P3D bottlenecks (effjax.layers.p3d) of width width·2^i (output 4·width·2^i), the first with
            spatial stride 2 for i > 0; block n of the network (counted over all stages) is of kind
            kinds[n mod len(kinds)]
  head    = Linear(Dropout(mean_{T,H,W} x))

Variants: the P3D ResNets of the paper and its ports, built on ResNet-50 / 101 / 152 (p3d63, p3d131, p3d199);
unlike the ports, every stage (res5 included) uses P3D blocks and the time axis is not pooled. BatchNorm ε = 1e-5,
torch momentum 0.1 ("batch_stats"). Intermediates sown: `stem`, `stage{i}`.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from effjax.layers.common import batch_norm, torch_kaiming_fan_out, with_variants
from effjax.layers.p3d import KINDS, P3DBottleneck

HEAD = r"^classifier/"  # params a new task replaces: config.init_from.skip's default

VARIANTS = {
    "p3d63": dict(layers=(3, 4, 6, 3)),
    "p3d131": dict(layers=(3, 4, 23, 3)),
    "p3d199": dict(layers=(3, 8, 36, 3)),
}


class P3DResNet(nn.Module):
  """P3D ResNet classifier; `Model(variant="p3d199", ...)`."""
  num_classes: int
  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  kinds: str = "ABC"
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, clips, train=False):
    if clips.ndim != 5:
      raise ValueError(f"P3DResNet expects clips [B, T, H, W, C] or volumes [B, D, H, W, C], got shape "
                       f"{clips.shape}")
    if not self.kinds or any(k not in KINDS for k in self.kinds):
      raise ValueError(f"kinds must be a non-empty string of P3D block kinds {KINDS}, got {self.kinds!r}")
    x = nn.Conv(self.width, (1, 7, 7), (1, 2, 2), padding=((0, 0), (3, 3), (3, 3)), use_bias=False,
                kernel_init=torch_kaiming_fan_out, name="stem_conv")(clips)
    x = nn.relu(batch_norm(train, "stem_norm")(x))
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding=((0, 0), (1, 1), (1, 1)))
    self.sow("intermediates", "stem", x)
    n = 0
    for i, depth in enumerate(self.layers):
      for j in range(depth):
        x = P3DBottleneck(self.width * 2 ** i, self.kinds[n % len(self.kinds)], 2 if i > 0 and j == 0 else 1,
                          name=f"stage{i}_block{j}")(x, train)
        n += 1
      self.sow("intermediates", f"stage{i}", x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(jnp.mean(x, axis=(1, 2, 3)))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier")(x)


Model = with_variants(P3DResNet, VARIANTS, "P3DResNet")
