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


def _blend(degenerate, image, factor, rounding=np.rint):
  """degenerate + factor·(image − degenerate) in float32, rounded (np.rint; TensorFlow's ops: np.trunc) and clipped
  to uint8."""
  out = degenerate + factor * (image.astype(np.float32) - degenerate)
  return np.clip(rounding(out), 0, 255).astype(np.uint8)


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


# timm's RandAugment (timm/data/auto_augment.py, `rand_augment_transform`), e.g. "rand-m9-mstd0.5-inc1": the recipe
# of ConvNeXt, InceptionNeXt, FasterNet, DeiT and the ResNet-strikes-back procedures. It differs from the table above:
# each of the `n` drawn ops is applied with probability `p` (0.5), its magnitude is drawn per application from
# N(m, mstd) and clipped to [0, mmax] (level L = magnitude / 10), geometric ops fill with the ImageNet mean and
# resample with `method` (timm's train interpolation), and the op set is timm's 15:
#
# | op | argument at level L | "inc1" (increasing) variant |
# |---|---|---|
# | autocontrast, equalize, invert | – | same |
# | rotate ± | 30·L degrees | same |
# | posterize | keep int(4·L) bits | keep 4 − int(4·L) bits |
# | solarize | threshold min(256, int(256·L)) | threshold 256 − min(256, int(256·L)) |
# | solarize_add | add min(128, int(110·L)) below 128 | same |
# | color, contrast, brightness, sharpness | factor 1.8·L + 0.1 | factor max(0.1, 1 ± 0.9·L) |
# | shear_x ±, shear_y ± | 0.3·L | same |
# | translate_x ±, translate_y ± | 0.45·L of the width / height | same |
#
# Random draws, in timm's order (so that given the same numbers the output is timm's, tests/test_recipes.py): the
# n op indices; then per op: u < p to apply it, the magnitude's normal draw (if mstd > 0), u < 1/2 for a negative
# sign (± ops), and a bilinear/bicubic draw for geometric ops when method="random".
_TIMM_METHODS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _timm_geometric(pil, rng, method, fill, apply):
  resample = _TIMM_METHODS[("bilinear", "bicubic")[rng.integers(2)] if method == "random" else method]
  return apply(pil, resample=resample, fillcolor=fill)


def _timm_affine(coefficients):
  return lambda pil, **kw: pil.transform(pil.size, Image.AFFINE, coefficients(pil.size), **kw)


def _solarize_add(pil, add):
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return pil.point(lut * len(pil.getbands()))


def _timm_op(name, pil, level, increasing, sign, rng, method, fill, translate):
  """One timm op at level L (magnitude / 10) on a PIL image; `sign` is -1 or 1 (drawn by the caller)."""
  enhance = max(0.1, 1.0 + sign * 0.9 * level) if increasing else 1.8 * level + 0.1
  posterize_bits = int(level * 4)
  solarize = min(256, int(level * 256))
  geometric = {
      "rotate": lambda p, **kw: p.rotate(sign * 30.0 * level, **kw),
      "shear_x": _timm_affine(lambda size: (1, sign * 0.3 * level, 0, 0, 1, 0)),
      "shear_y": _timm_affine(lambda size: (1, 0, 0, sign * 0.3 * level, 1, 0)),
      "translate_x": _timm_affine(lambda size: (1, 0, sign * translate * level * size[0], 0, 1, 0)),
      "translate_y": _timm_affine(lambda size: (1, 0, 0, 0, 1, sign * translate * level * size[1])),
  }
  if name in geometric:
    return _timm_geometric(pil, rng, method, fill, geometric[name])
  if name == "posterize":
    bits = 4 - posterize_bits if increasing else posterize_bits
    if bits < 1:  # 0 bits (inc1 at magnitude 10): black, Pillow's mask without the range check Pillow 13 raises on
      return Image.new(pil.mode, pil.size)
    return pil if bits >= 8 else ImageOps.posterize(pil, bits)
  if name == "solarize":
    return ImageOps.solarize(pil, 256 - solarize if increasing else solarize)
  if name == "solarize_add":
    return _solarize_add(pil, min(128, int(level * 110)))
  simple = {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}
  if name in simple:
    return simple[name](pil)
  enhancers = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast, "brightness": ImageEnhance.Brightness,
               "sharpness": ImageEnhance.Sharpness}
  return enhancers[name](pil).enhance(enhance)


# timm's op order (_RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS) and which ops draw a sign.
TIMM_OPS = ("autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
            "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_TIMM_SIGNED = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}
_TIMM_SIGNED_INCREASING = {"color", "contrast", "brightness", "sharpness"}


def parse_timm_policy(policy):
  """timm's "rand-m9-mstd0.5-inc1" -> dict(num_layers, magnitude, magnitude_std, increasing, prob, magnitude_max)."""
  parts = policy.split("-")
  if parts[0] != "rand":
    raise ValueError(f"timm RandAugment policy {policy!r} must start with 'rand-'")
  out = dict(num_layers=2, magnitude=10.0, magnitude_std=0.0, increasing=False, prob=0.5, magnitude_max=10.0)
  keys = {"n": "num_layers", "m": "magnitude", "mstd": "magnitude_std", "inc": "increasing", "p": "prob",
          "mmax": "magnitude_max"}
  for part in parts[1:]:
    key = part.rstrip("0123456789.")
    if key not in keys or key == part:
      raise ValueError(f"timm RandAugment policy {policy!r}: unknown part {part!r}; expected n, m, mstd, inc, p, mmax")
    value = float(part[len(key):])
    if key == "inc" and value != 1:
      raise ValueError(f"timm RandAugment policy {policy!r}: inc must be inc1")
    out[keys[key]] = int(value) if key == "n" else value == 1 if key == "inc" else value
  return out


def timm_randaugment(image, rng, policy="rand-m9-mstd0.5-inc1", method="bicubic", fill=(124, 116, 104),
                     translate=0.45):
  """uint8 [H, W, 3] -> uint8 [H, W, 3]: timm's RandAugment `policy` (see the table above); `fill` is timm's
  img_mean (the ImageNet mean in 0-255), `method` its train interpolation (bilinear, bicubic or random)."""
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"timm_randaugment expects a uint8 HWC image, got {image.dtype} {image.shape}")
  p = parse_timm_policy(policy)
  fill = tuple(int(v) for v in np.broadcast_to(fill, (image.shape[-1],)))
  fill = fill if len(fill) > 1 else fill[0]
  signed = _TIMM_SIGNED | (_TIMM_SIGNED_INCREASING if p["increasing"] else set())
  pil = to_pil(image)
  for index in rng.integers(len(TIMM_OPS), size=p["num_layers"]):
    name = TIMM_OPS[index]
    if p["prob"] < 1.0 and rng.random() > p["prob"]:
      continue
    magnitude = rng.normal(p["magnitude"], p["magnitude_std"]) if p["magnitude_std"] > 0 else p["magnitude"]
    level = max(0.0, min(magnitude, p["magnitude_max"])) / 10.0
    sign = -1.0 if name in signed and rng.random() > 0.5 else 1.0
    pil = _timm_op(name, pil, level, p["increasing"], sign, rng, method, fill, translate)
  return from_pil(pil)
