"""The TensorFlow Model Garden's RandAugment (official/vision/ops/augment.py `RandAugment`, tf-models-official 2.20.0),
the augmentation of the ResNet-RS recipe (official/vision/configs/experiments/image_classification/
imagenet_resnetrs*.yaml: aug_type randaug, magnitude 10 or 15, other fields at their defaults in
official/vision/configs/common.py: num_layers 2, cutout_const 40, translate_const 10, magnitude_std 0,
prob_to_apply None, no exclude_ops).

Selection (RandAugment._distort_common): each of `num_layers` layers draws an index uniformly from 17 values, the
16 ops below in the official order or, for the 17th, no op (tf.switch_case's default branch); rotate, shear and
translate then negate their argument with probability 1/2. Every op runs at level L = magnitude, not clipped to
the 0-10 scale, so magnitude 15 gives arguments 1.5 times those at 10:

| op | argument at level L (official level_to_arg) | L = 10 | L = 15 |
|---|---|---|---|
| AutoContrast, Equalize, Invert | – | | |
| Rotate ± | (L/10)·30 degrees about the image centre | 30 | 45 |
| Posterize | keep bits = int((L/10)·4): (x >> (8 − bits)) << (8 − bits) | 4 bits | 6 bits |
| Solarize | threshold t = int((L/10)·256) mod 256: x ≥ t inverted | t = 0: inverts all | t = 128 |
| Color, Contrast, Brightness, Sharpness | factor (L/10)·1.8 + 0.1 | 1.9 | 2.8 |
| ShearX ±, ShearY ± | (L/10)·0.3 | 0.3 | 0.45 |
| TranslateX ±, TranslateY ± | (L/10)·translate_const pixels | 10 px | 15 px |
| Cutout | a square of half-size int((L/10)·cutout_const) at a uniform centre, set to 128 | 40 | 60 |
| SolarizeAdd | pixels < 128 get + int((L/10)·110), clipped to 255 | 110 | 165 |

What the official TensorFlow code does, reproduced here (several differ from PIL and from effjax's other RandAugments):
- Solarize's threshold becomes a uint8 tensor, so it wraps modulo 256: at L = 10 (256) every pixel is inverted.
- Posterize shifts a uint8 tensor; TensorFlow's CPU kernel treats shifts outside 0-7 as 7 (bits < 1 keep 1 bit).
- Blends (Color, Contrast, Brightness, Sharpness) compute degenerate + factor·(image − degenerate) in float32 and
  truncate to uint8 (after clipping to [0, 255]), not round.
- Color blends with tf.image.rgb_to_grayscale (weights 0.2989, 0.5870, 0.1140 on x/255, truncated ·255.5).
- Contrast is tf.image.adjust_contrast: per channel, mean + factor·(x/255 − mean), truncated ·255.5 (each channel's
  own mean, not PIL's grey mean; the mean summed by TensorFlow's halving order).
- Sharpness smooths with the 3×3 kernel [1 1 1; 1 5 1; 1 1 1]/13 (float32, accumulated in row-major order with
  fused multiply-adds, as TensorFlow's depthwise convolution does on an FMA-capable CPU), truncates the result to
  uint8, keeps the border pixels, then blends.
- AutoContrast stretches each channel's [min, max] to [0, 255] in float32 and truncates.
- Geometric ops sample with nearest neighbour (round half away from zero) on integer pixel coordinates and fill
  by reflection (ImageProjectiveTransformV3's default fill_mode="reflect": d c b a | a b c d | d c b a); the
  official wrap/unwrap with replace=128 never fires because no sample falls outside the image.
Everything is computed in numpy float32 as TensorFlow does; tests/test_tf_randaugment.py compares each op with
the official one (tests/data/tf_randaugment.npz). Images are uint8 HWC RGB.
"""
import math

import numpy as np

from effjax.data.randaugment import _blend, equalize

MAX_LEVEL = 10.0
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def level_to_arg(name, level, translate_const=10.0, cutout_const=40.0):
  """The official argument magnitude of op `name` at `level` (sign excluded); float arithmetic as the official."""
  ratio = level / MAX_LEVEL
  factors = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": float(translate_const),
             "TranslateY": float(translate_const)}
  integers = {"Posterize": 4, "Solarize": 256, "SolarizeAdd": 110, "Cutout": cutout_const}
  if name in factors:
    return ratio * factors[name]
  if name in integers:
    return int(ratio * integers[name])
  if name in ("Color", "Contrast", "Brightness", "Sharpness"):
    return ratio * 1.8 + 0.1
  return None


def _truncate(x):
  """float32 -> uint8 as TensorFlow's saturating cast: clip to [0, 255], then round toward zero."""
  return np.clip(x, 0.0, 255.0).astype(np.uint8)


def _tf_blend(degenerate, image, factor):
  return _blend(degenerate, image, np.float32(factor), rounding=np.trunc)


_VALUES = np.arange(256, dtype=np.float32)[:, None]  # [256, 1]: every uint8 value, for per-channel tables


def _lookup(image, table):
  """uint8 [H, W, C] through per-channel tables [256, C] (or [256, 1] for all channels): the elementwise ops below
  compute their float32 formula once per value instead of once per pixel (identical results)."""
  if table.shape[1] == 1:
    return np.take(table[:, 0], image)
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    np.take(table[:, c], image[..., c], out=out[..., c])
  return out


def autocontrast(image, arg=None):
  channels = [image[..., c] for c in range(image.shape[-1])]  # per-channel reductions: ~10x faster than axis=(0, 1)
  lo, hi = (np.array([f(ch) for ch in channels], np.float32) for f in (np.min, np.max))
  scale = np.float32(255.0) / np.where(hi > lo, hi - lo, np.float32(1))  # a constant channel is kept as it is
  table = np.where(hi > lo, _truncate(_VALUES * scale + (-lo * scale)), _VALUES.astype(np.uint8))
  return _lookup(image, table)


def _equalize(image, arg=None):  # PIL's algorithm, which the official TF code reimplements (identical outputs)
  return equalize(image, 0.0)


def invert(image, arg=None):
  return 255 - image


def posterize(image, bits):
  shift = 8 - bits
  shift = shift if 0 <= shift <= 7 else 7
  return (image >> shift) << shift


def solarize(image, threshold):
  values = np.arange(256)
  return _lookup(image, np.where(values < threshold % 256, values, 255 - values).astype(np.uint8)[:, None])


def solarize_add(image, addition):
  values = np.arange(256)
  return _lookup(image, np.where(values < 128, np.clip(values + addition, 0, 255), values).astype(np.uint8)[:, None])


def _greyscale(image):
  """tf.image.rgb_to_grayscale of a uint8 image: uint8 [H, W, 1]."""
  x = image.astype(np.float32) * np.float32(1.0 / 255)
  w = np.array([0.2989, 0.5870, 0.1140], np.float32)
  grey = x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]
  return (grey * np.float32(255.5)).astype(np.uint8)[..., None]


def color(image, factor):
  return _tf_blend(_greyscale(image), image, factor)


def _halving_sum(x):
  """Sum over axis 0 of float32 [N, C] in the order of TensorFlow's AdjustContrastv2 CPU kernel (halve, add)."""
  n = len(x)
  right = n // 2
  total = np.concatenate([x[n - right:] + x[:right], x[right:n - right]])
  n = n - right
  while n > 1:
    right = n // 2
    total[:right] += total[n - right:n]
    n -= right
  return total[0]


def contrast(image, factor):
  to_unit = np.float32(1.0 / 255)
  x = (image.astype(np.float32) * to_unit).reshape(-1, image.shape[-1])
  mean = _halving_sum(x) * (np.float32(1.0) / np.float32(len(x)))
  return _lookup(image, _truncate((mean + np.float32(factor) * (_VALUES * to_unit - mean)) * np.float32(255.5)))


def brightness(image, factor):
  return _tf_blend(np.zeros((), np.float32), image, factor)


def sharpness(image, factor):
  x = image.astype(np.float64)
  kernel = (np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13)).astype(np.float64)
  smooth = image.copy()
  if min(image.shape[:2]) > 2:
    h, w = image.shape[:2]
    total = np.zeros((h - 2, w - 2, image.shape[2]), np.float32)
    for dy in range(3):  # fused multiply-adds: the float64 sum of a float32 and an exact product, rounded once
      for dx in range(3):
        total = (total + x[dy:h - 2 + dy, dx:w - 2 + dx] * kernel[dy, dx]).astype(np.float32)
    smooth[1:-1, 1:-1] = _truncate(total)
  return _tf_blend(smooth, image, factor)


def _reflect(coord, size):
  """ImageProjectiveTransformV3's fill_mode="reflect" on float32 input coordinates, then clamped to the image."""
  if size <= 1:
    return np.zeros_like(coord)
  period = 2 * size
  c = coord.copy()
  low, high = c < 0, c > size - 1
  neg = c[low]
  neg = period * np.trunc(-neg / np.float32(period)) + neg
  c[low] = np.where(neg < -size, neg + period, -neg - 1)
  pos = c[high]
  pos = pos - period * np.trunc(pos / np.float32(period))
  c[high] = np.where(pos >= size, period - pos - 1, pos)
  return np.clip(c, 0, size - 1)


def _round_half_away(c):
  floor = np.floor(c)
  return (floor + (c - floor >= 0.5)).astype(np.int64)


def _transform(image, t):
  """Output pixel (x, y) <- input (t0·x + t1·y + t2, t3·x + t4·y + t5) (float32), nearest, reflect fill."""
  h, w = image.shape[:2]
  t = np.asarray(t, np.float32)
  y, x = np.mgrid[:h, :w].astype(np.float32)
  src_x = _round_half_away(_reflect(t[0] * x + t[1] * y + t[2], w))
  src_y = _round_half_away(_reflect(t[3] * x + t[4] * y + t[5], h))
  return image[src_y, src_x]


def rotate(image, degrees):
  """Output (x, y) reads the input at the official matrix [cos −sin; sin cos] about ((W−1)/2, (H−1)/2)."""
  angle = np.float32(degrees * (math.pi / 180.0))
  cos, sin = np.cos(angle), np.sin(angle)
  h, w = np.float32(image.shape[0] - 1), np.float32(image.shape[1] - 1)
  x_offset = (w - (cos * w - sin * h)) / np.float32(2)
  y_offset = (h - (sin * w + cos * h)) / np.float32(2)
  return _transform(image, (cos, -sin, x_offset, sin, cos, y_offset))


def shear_x(image, level):
  return _transform(image, (1, level, 0, 0, 1, 0))


def shear_y(image, level):
  return _transform(image, (1, 0, 0, level, 1, 0))


def translate_x(image, pixels):
  return _transform(image, (1, 0, pixels, 0, 1, 0))


def translate_y(image, pixels):
  return _transform(image, (1, 0, 0, 0, 1, pixels))


def cutout(image, half, centre):
  """Sets rows centre[0] ± half and columns centre[1] ± half (half-open, clipped to the image) to 128."""
  row, col = centre
  out = image.copy()
  out[max(0, row - half):row + half, max(0, col - half):col + half] = 128
  return out


# The official RandAugment's available_ops, in its order (the op index drawn selects from this tuple).
OPS = {"AutoContrast": autocontrast, "Equalize": _equalize, "Invert": invert,
       "Rotate": rotate, "Posterize": posterize, "Solarize": solarize, "Color": color, "Contrast": contrast,
       "Brightness": brightness, "Sharpness": sharpness, "ShearX": shear_x, "ShearY": shear_y,
       "TranslateX": translate_x, "TranslateY": translate_y, "Cutout": cutout, "SolarizeAdd": solarize_add}
NAMES = tuple(OPS)


def check_args(num_layers=2, magnitude=10.0, translate_const=10.0, cutout_const=40.0):
  """ValueError unless num_layers is an integer >= 0 and the others are numbers >= 0 (NaN rejected)."""
  values = (num_layers, magnitude, translate_const, cutout_const)
  if not (all(isinstance(v, (int, float)) and v >= 0 for v in values) and int(num_layers) == num_layers):
    raise ValueError(f"tf_randaugment: need an integer num_layers >= 0 and magnitude, translate_const, cutout_const "
                     f">= 0, got {num_layers}, {magnitude}, {translate_const}, {cutout_const}")


def draw_layer(rng, shape):
  """One layer's random choices: (op name, or None for the no-op 17th index; sign ±1; cutout centre or None)."""
  index = rng.integers(len(NAMES) + 1)
  if index == len(NAMES):
    return None, 1.0, None
  name = NAMES[index]
  sign = -1.0 if name in SIGNED and rng.random() < 0.5 else 1.0
  centre = (int(rng.integers(shape[0])), int(rng.integers(shape[1]))) if name == "Cutout" else None
  return name, sign, centre


def tf_randaugment(image, rng, num_layers=2, magnitude=10.0, translate_const=10.0, cutout_const=40.0):
  """uint8 [H, W, 3] -> uint8 [H, W, 3]: `num_layers` ops drawn as the official RandAugment draws them (see above).

  Draws, per layer: the op index in [0, 17); then a sign (u < 1/2: negative) for rotate/shear/translate, or the
  cutout centre (row, then column, uniform over the image)."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"tf_randaugment expects a uint8 RGB HWC image, got {image.dtype} {image.shape}; "
                     f"put it before normalize")
  check_args(num_layers, magnitude, translate_const, cutout_const)
  for _ in range(num_layers):
    name, sign, centre = draw_layer(rng, image.shape)
    if name is None:
      continue
    arg = level_to_arg(name, magnitude, translate_const, cutout_const)
    if name == "Cutout":
      image = cutout(image, arg, centre)
    else:
      image = OPS[name](image, sign * arg if name in SIGNED else arg)
  return image
