"""RandAugment (Cubuk et al., 2020) on uint8 HWC images (Pillow, as torchvision; sharpness in numpy).

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
Ops run on Pillow (as torchvision's do) except sharpness, which is faster in numpy; images are uint8 HWC
with 1 or 3 channels.
"""
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from effjax.data.image import from_pil, to_pil

_ENHANCE = 0.9
_SHEAR = 0.3
_TRANSLATE = 150 / 331
_ROTATE = 30.0


def _blend(degenerate, image, factor):
  """degenerate + factor·(image − degenerate), rounded and clipped to uint8."""
  out = degenerate + factor * (image.astype(np.float32) - degenerate)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _affine(image, coefficients):
  """Nearest-neighbour warp: output pixel (x, y) reads the input at (a·x + b·y + c, d·x + e·y + f)
  (Pillow's AFFINE, pixel centres at +0.5); samples outside the image are 0."""
  pil = to_pil(image)
  return from_pil(pil.transform(pil.size, Image.AFFINE, coefficients, Image.NEAREST, fillcolor=0))


def _enhance(enhancer, image, f):
  return from_pil(enhancer(to_pil(image)).enhance(1.0 + _ENHANCE * f))


def identity(image, f):
  return image


def autocontrast(image, f):
  return from_pil(ImageOps.autocontrast(to_pil(image)))


def equalize(image, f):
  return from_pil(ImageOps.equalize(to_pil(image)))


def rotate(image, f):
  return from_pil(to_pil(image).rotate(_ROTATE * f, Image.NEAREST, fillcolor=0))


def solarize(image, f):
  return from_pil(ImageOps.solarize(to_pil(image), 256.0 * (1.0 - f)))


def color(image, f):
  return _enhance(ImageEnhance.Color, image, f)


def posterize(image, f):
  return from_pil(ImageOps.posterize(to_pil(image), 8 - int(round(4 * f))))


def contrast(image, f):
  return _enhance(ImageEnhance.Contrast, image, f)


def brightness(image, f):
  return _enhance(ImageEnhance.Brightness, image, f)


def sharpness(image, f):
  x = image.astype(np.float32)
  smooth = x.copy()
  if min(image.shape[:2]) > 2:
    window = sum(x[1 + dy:x.shape[0] - 1 + dy, 1 + dx:x.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    smooth[1:-1, 1:-1] = (window + 4 * x[1:-1, 1:-1]) / 13.0
  return _blend(smooth, image, 1.0 + _ENHANCE * f)


def shear_x(image, f):  # the offset moves the shear's origin from the pixel edge to the centre of pixel (0, 0)
  return _affine(image, (1.0, _SHEAR * f, -0.5 * _SHEAR * f, 0.0, 1.0, 0.0))


def shear_y(image, f):
  return _affine(image, (1.0, 0.0, 0.0, _SHEAR * f, 1.0, -0.5 * _SHEAR * f))


def translate_x(image, f):
  return _affine(image, (1.0, 0.0, -_TRANSLATE * f * image.shape[1], 0.0, 1.0, 0.0))


def translate_y(image, f):
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, -_TRANSLATE * f * image.shape[0]))


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
