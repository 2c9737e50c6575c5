"""RandAugment (Cubuk et al., 2020) on uint8 HWC images with numpy only.

Each of `num_layers` layers picks one of the 14 ops below uniformly at random and applies it at the
fixed strength f = magnitude / max_magnitude (clipped to [0, 1]); ops marked ± flip the sign of their
strength with probability 1/2. The op set and the strength at f = 1 follow torchvision's RandAugment
(the transform the official CRATE fine-tuning uses, with magnitude 14 of 30 bins: magnitude=14,
max_magnitude=30); max_magnitude=10 gives the 0–10 scale of the paper and timm ("m9").

| op | strength at f | f = 0 |
|---|---|---|
| identity | – | identity |
| autocontrast | per channel, [min, max] stretched to [0, 255] | (not magnitude dependent) |
| equalize | per-channel histogram equalisation (PIL's algorithm) | (not magnitude dependent) |
| rotate ± | 30·f degrees about the image centre | identity |
| solarize | pixels ≥ 256·(1 − f) inverted (255 − x) | identity |
| color ± | blend with the greyscale image, factor 1 ± 0.9·f | identity |
| posterize | keep the top 8 − round(4·f) bits | identity |
| contrast ± | blend with the mean grey level, factor 1 ± 0.9·f | identity |
| brightness ± | blend with black, factor 1 ± 0.9·f | identity |
| sharpness ± | blend with the 3×3 smoothed image (PIL kernel [1 1 1; 1 5 1; 1 1 1]/13), factor 1 ± 0.9·f | identity |
| shear_x ± | x_src = x + 0.3·f·y (about the top-left corner) | identity |
| shear_y ± | y_src = y + 0.3·f·x | identity |
| translate_x ± | shift by 0.45·f·W pixels (torchvision's 150/331) | identity |
| translate_y ± | shift by 0.45·f·H pixels | identity |

Geometric ops sample with nearest neighbour and fill with 0, as torchvision does. Difference from
torchvision: solarize's threshold is 256·(1 − f) instead of 255·(1 − f), so that f = 0 is the identity.
Blends compute in float and round to uint8.
"""
import numpy as np

_ENHANCE = 0.9
_SHEAR = 0.3
_TRANSLATE = 150 / 331
_ROTATE = 30.0


def _grey(image):
  """[H, W, 1] luminance (ITU-R 601-2, as PIL's convert("L")); a single channel is its own grey."""
  if image.shape[-1] == 1:
    return image.astype(np.float32)
  return (image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _blend(degenerate, image, factor):
  """degenerate + factor·(image − degenerate), rounded and clipped to uint8."""
  out = degenerate + factor * (image.astype(np.float32) - degenerate)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _affine(image, matrix):
  """Nearest-neighbour warp: output pixel (x, y) reads the input at matrix @ (x, y, 1) (pixel centres);
  samples outside the image are 0."""
  h, w = image.shape[:2]
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  sx = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
  sy = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
  sx, sy = np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64)
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  out = image[np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)]
  return np.where(inside[..., None], out, 0).astype(image.dtype)


def identity(image, f):
  return image


def autocontrast(image, f):
  lo = image.min(axis=(0, 1), keepdims=True).astype(np.float32)
  hi = image.max(axis=(0, 1), keepdims=True).astype(np.float32)
  scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
  offset = np.where(hi > lo, lo, 0.0)
  return np.clip(np.rint((image - offset) * scale), 0, 255).astype(np.uint8)


def equalize(image, f):
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    hist = np.bincount(channel.ravel(), minlength=256)
    last = hist[np.flatnonzero(hist)[-1]]
    step = (hist.sum() - last) // 255
    if step == 0:
      out[..., c] = channel
      continue
    lut = (np.concatenate([[0], np.cumsum(hist)[:-1]]) + step // 2) // step
    out[..., c] = np.clip(lut, 0, 255).astype(np.uint8)[channel]
  return out


def rotate(image, f):
  h, w = image.shape[:2]
  theta = np.deg2rad(_ROTATE * f)
  cos, sin = np.cos(theta), np.sin(theta)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  matrix = np.array([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]])
  return _affine(image, matrix)


def solarize(image, f):
  threshold = 256.0 * (1.0 - f)
  return np.where(image >= threshold, 255 - image, image).astype(np.uint8)


def color(image, f):
  return _blend(_grey(image), image, 1.0 + _ENHANCE * f)


def posterize(image, f):
  bits = 8 - int(round(4 * f))
  return (image & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)


def contrast(image, f):
  mean = np.float32(np.rint(_grey(image).mean()))
  return _blend(mean, image, 1.0 + _ENHANCE * f)


def brightness(image, f):
  return _blend(np.float32(0.0), image, 1.0 + _ENHANCE * f)


def sharpness(image, f):
  x = image.astype(np.float32)
  smooth = x.copy()
  if min(image.shape[:2]) > 2:
    window = sum(x[1 + dy:x.shape[0] - 1 + dy, 1 + dx:x.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    smooth[1:-1, 1:-1] = (window + 4 * x[1:-1, 1:-1]) / 13.0
  return _blend(smooth, image, 1.0 + _ENHANCE * f)


def shear_x(image, f):
  return _affine(image, np.array([[1.0, _SHEAR * f, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(image, f):
  return _affine(image, np.array([[1.0, 0.0, 0.0], [_SHEAR * f, 1.0, 0.0]]))


def translate_x(image, f):
  return _affine(image, np.array([[1.0, 0.0, -_TRANSLATE * f * image.shape[1]], [0.0, 1.0, 0.0]]))


def translate_y(image, f):
  return _affine(image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -_TRANSLATE * f * image.shape[0]]]))


# (op, signed): the 14 ops in torchvision's order.
OPS = ((identity, False), (shear_x, True), (shear_y, True), (translate_x, True), (translate_y, True),
       (rotate, True), (brightness, True), (color, True), (contrast, True), (sharpness, True),
       (posterize, False), (solarize, False), (autocontrast, False), (equalize, False))


def randaugment(image, rng, num_layers=2, magnitude=9, max_magnitude=10):
  """uint8 [H, W, C] -> uint8 [H, W, C]: `num_layers` uniformly drawn ops at strength magnitude/max_magnitude."""
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"randaugment expects a uint8 HWC image, got {image.dtype} {image.shape}; put it before normalize")
  if max_magnitude <= 0 or magnitude < 0:
    raise ValueError(f"randaugment: need magnitude >= 0 and max_magnitude > 0, got {magnitude}, {max_magnitude}")
  strength = min(magnitude / max_magnitude, 1.0)
  for _ in range(num_layers):
    op, signed = OPS[rng.integers(len(OPS))]
    f = -strength if signed and rng.random() < 0.5 else strength
    image = op(image, f)
  return image
