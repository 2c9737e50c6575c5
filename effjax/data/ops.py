"""Per-example preprocessing ops named in configs: "random_crop(pad=4)", "flip", "normalize(mean=0.5,std=0.5)".

Each op maps an example dict to an example dict; random ops also take a numpy Generator (seeded per
example by grain, so augmentation is reproducible and resumes exactly). Images are HWC (or DHWC).

Geometry (numpy only, HWC, same dtype out as in; uint8 results are rounded):
  resize(size=224)                    bilinear to size×size (triangle filter widened when downsampling)
  resize_small(size=256)              bilinear, shorter side to `size`, aspect ratio kept
  center_crop(size=224, resize_small=0)  central size×size crop, after an optional resize_small
  inception_crop(size=224, area_min=0.08, area_max=1.0, ratio_min=3/4, ratio_max=4/3)
                                      random resized crop (Inception / torchvision RandomResizedCrop)
  randaugment(num_layers=2, magnitude=9, max_magnitude=10)   see effjax/data/randaugment.py
"""
import functools
import inspect

import numpy as np

from effjax.config import parse_arg
from effjax.data import randaugment as _randaugment


def _to_float(image):
  return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def normalize(example, mean=0.5, std=0.5):
  """image -> (image/255 - mean) / std as float32; mean/std scalars or per-channel tuples."""
  image = _to_float(example["image"])
  return {**example, "image": (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)}


def to_float(example):
  """uint8 image -> float32 in [0, 1]."""
  return {**example, "image": _to_float(example["image"])}


def random_crop(example, rng, pad=4):
  """Zero-pads H and W by `pad` and crops back to the original size at a random offset."""
  image = example["image"]
  h, w = image.shape[:2]
  padded = np.pad(image, [(pad, pad), (pad, pad)] + [(0, 0)] * (image.ndim - 2))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return {**example, "image": padded[top:top + h, left:left + w]}


def flip(example, rng, p=0.5):
  """Horizontal flip with probability p."""
  if rng.random() < p:
    return {**example, "image": example["image"][:, ::-1]}
  return example


def _resize_taps(in_size, out_size, antialias):
  """Bilinear taps with half-pixel centres: (indices, weights), both [out_size, K].

  Output pixel i samples the input at c_i = (i + 0.5)·in/out − 0.5 with the triangle filter
  max(0, 1 − |j − c_i| / s), s = max(in/out, 1) when antialiasing (wider when downsampling, as PIL)
  and s = 1 otherwise (plain bilinear). Taps outside the image get weight 0 and each row is
  renormalised, which equals clamping at the border for plain bilinear.
  """
  scale = in_size / out_size
  support = max(scale, 1.0) if antialias else 1.0
  centres = (np.arange(out_size) + 0.5) * scale - 0.5
  first = np.floor(centres - support).astype(np.int64) + 1
  indices = first[:, None] + np.arange(int(np.ceil(2 * support)) + 1)[None, :]
  weights = np.maximum(0.0, 1.0 - np.abs(indices - centres[:, None]) / support)
  weights = np.where((indices >= 0) & (indices < in_size), weights, 0.0)
  weights /= weights.sum(axis=1, keepdims=True)
  return np.clip(indices, 0, in_size - 1), weights.astype(np.float32)


def _resize_axis(x, out_size, axis, antialias):
  indices, weights = _resize_taps(x.shape[axis], out_size, antialias)
  taps = np.take(x, indices, axis=axis)  # the axis becomes [out_size, K]
  shape = [1] * taps.ndim
  shape[axis], shape[axis + 1] = weights.shape
  return (taps * weights.reshape(shape)).sum(axis=axis + 1)


def resize_image(image, height, width, antialias=True):
  """Bilinear resize of an HWC (or HW) image to [height, width, ...], same dtype (uint8 rounded and clipped)."""
  if image.ndim not in (2, 3):
    raise ValueError(f"resize expects an HW or HWC image, got shape {image.shape}")
  if height < 1 or width < 1:
    raise ValueError(f"resize target {height}x{width} must be positive")
  if image.shape[:2] == (height, width):
    return image
  out = _resize_axis(_resize_axis(image.astype(np.float32), height, 0, antialias), width, 1, antialias)
  if image.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out.astype(image.dtype)


def resize(example, size=224, antialias=True):
  """image -> bilinear resize to size×size (or `size=(height, width)`)."""
  height, width = (size, size) if np.isscalar(size) else size
  return {**example, "image": resize_image(example["image"], int(height), int(width), antialias)}


def _resize_shorter_side(image, size, antialias=True):
  h, w = image.shape[:2]
  scale = size / min(h, w)
  return resize_image(image, max(int(round(h * scale)), size), max(int(round(w * scale)), size), antialias)


def resize_small(example, size=256, antialias=True):
  """image -> bilinear resize so that the shorter side is `size`, keeping the aspect ratio."""
  return {**example, "image": _resize_shorter_side(example["image"], size, antialias)}


def center_crop(example, size=224, resize_small=0):
  """image -> its central size×size crop; with resize_small > 0 the shorter side is first resized to
  `resize_small` (the ImageNet evaluation transform: resize_small=256, size=224). An image that is
  already size×size is returned unchanged, so the op can follow a training-only inception_crop in
  `data.preprocess`."""
  image = example["image"]
  if image.shape[:2] == (size, size):
    return example
  if resize_small > 0:
    image = _resize_shorter_side(image, resize_small)
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"center_crop(size={size}) of a {h}x{w} image; resize first (resize_small=...)")
  top, left = (h - size) // 2, (w - size) // 2
  return {**example, "image": image[top:top + size, left:left + size]}


def inception_crop(example, rng, size=224, area_min=0.08, area_max=1.0, ratio_min=3 / 4, ratio_max=4 / 3):
  """Random resized crop (Szegedy et al. 2015; torchvision RandomResizedCrop), resized to size×size.

  Up to 10 tries draw an area fraction a ~ U(area_min, area_max) of H·W and a log-uniform aspect ratio
  r (= width / height) in [ratio_min, ratio_max]; the crop is w = round(sqrt(a·H·W·r)),
  h = round(sqrt(a·H·W / r)) at a uniform position. If no try fits, the central crop of the whole image
  with its aspect ratio clipped to [ratio_min, ratio_max] is used.
  """
  if not 0 < area_min <= area_max <= 1 or not 0 < ratio_min <= ratio_max:
    raise ValueError("inception_crop: need 0 < area_min <= area_max <= 1 and 0 < ratio_min <= ratio_max")
  image = example["image"]
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(area_min, area_max)
    ratio = np.exp(rng.uniform(np.log(ratio_min), np.log(ratio_max)))
    cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    ratio = w / h
    if ratio < ratio_min:
      cw, ch = w, int(round(w / ratio_min))
    elif ratio > ratio_max:
      cw, ch = int(round(h * ratio_max)), h
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  crop = image[top:top + ch, left:left + cw]
  return {**example, "image": resize_image(crop, size, size)}


def randaugment(example, rng, num_layers=2, magnitude=9, max_magnitude=10):
  """RandAugment (Cubuk et al. 2020) on a uint8 HWC image; see effjax/data/randaugment.py."""
  return {**example, "image": _randaugment.randaugment(example["image"], rng, num_layers, magnitude, max_magnitude)}


RANDOM_OPS = {"random_crop": random_crop, "flip": flip, "inception_crop": inception_crop, "randaugment": randaugment}
DETERMINISTIC_OPS = {"normalize": normalize, "to_float": to_float, "resize": resize, "resize_small": resize_small,
                     "center_crop": center_crop}


def parse(spec: str):
  """"name(k=v,...)" -> (name, fn with the options bound, is_random); unknown names or arguments raise ValueError."""
  name, _, rest = spec.partition("(")
  name = name.strip()
  if name in RANDOM_OPS:
    fn, is_random = RANDOM_OPS[name], True
  elif name in DETERMINISTIC_OPS:
    fn, is_random = DETERMINISTIC_OPS[name], False
  else:
    raise ValueError(f"unknown data op {name!r} in {spec!r}; available: "
                     f"{', '.join(sorted({**RANDOM_OPS, **DETERMINISTIC_OPS}))}")
  if rest and not rest.endswith(")"):
    raise ValueError(f"data op {spec!r}: expected name(key=value,...)")
  options = [k for k, v in inspect.signature(fn).parameters.items() if v.default is not inspect.Parameter.empty]
  given = parse_arg(rest[:-1] if rest else "", **{k: None for k in options})
  kwargs = {k: v for k, v in given.items() if v is not None}
  std = np.asarray(kwargs.get("std", 1.0), np.float64) if name == "normalize" else 1.0
  if not np.all(np.isfinite(std) & (std != 0)):
    raise ValueError(f"data op {spec!r}: std must be finite and non-zero")
  return name, functools.partial(fn, **kwargs), is_random
