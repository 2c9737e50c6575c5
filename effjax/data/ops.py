"""Per-example preprocessing ops named in configs: "random_crop(pad=4)", "flip", "normalize(mean=0.5,std=0.5)".

Each op maps an example dict to an example dict; random ops also take a numpy Generator (seeded per
example by grain, so augmentation is reproducible and resumes exactly). Images are HWC (or DHWC).

Geometry (Pillow, effjax/data/image.py; HWC, same dtype out as in; uint8 results are rounded):
  resize(size=224)                    bilinear to size×size (triangle filter widened when downsampling)
  resize_small(size=256)              bilinear, shorter side to `size`, aspect ratio kept
  center_crop(size=224, resize_small=0)  central size×size crop, after an optional resize_small (fused)
  inception_crop(size=224, area_min=0.08, area_max=1.0, ratio_min=3/4, ratio_max=4/3)
                                      random resized crop (Inception / torchvision RandomResizedCrop)
Every resizing op takes method="bilinear" (default) or "bicubic" (timm's `interpolation`); inception_crop
also takes method="random" (timm: bilinear or bicubic with probability 1/2 each, drawn per example).
  randaugment(num_layers=2, magnitude=9, max_magnitude=10)   see effjax/data/randaugment.py
  timm_randaugment(policy=rand-m9-mstd0.5-inc1, method=bicubic)   timm's RandAugment, effjax/data/randaugment.py
  tf_randaugment(num_layers=2, magnitude=10)   TF Model Garden's RandAugment (ResNet-RS), effjax/data/tf_randaugment.py
  random_erasing(prob=0.25, mode=pixel)   timm's RandomErasing, on the normalized image (after normalize)
Volumes (3-D segmentation, nnU-Net's recipe): patch3d, spatial3d, noise3d, blur3d, brightness3d, contrast3d,
lowres3d, gamma3d, mirror3d, see effjax/data/volume.py.
"""
import functools
import inspect

import numpy as np

from effjax.config import parse_arg
from effjax.data import (
  image as _image,
  randaugment as _randaugment,
  tf_randaugment as _tf_randaugment,
  volume as _volume,
)


def _to_float(image):
  return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def normalize(example, mean=0.5, std=0.5):
  """image -> (image/255 - mean) / std as float32; mean/std scalars or per-channel tuples.

  A uint8 image is mapped through a 256-entry table per channel (the same float32 values, ~4x faster).
  """
  image = example["image"]
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  if np.any(std == 0):
    raise ValueError(f"normalize: std={std.tolist()} is zero in float32 (every value would be inf)")
  if image.dtype != np.uint8:
    return {**example, "image": (_to_float(image) - mean) / std}
  table = (np.arange(256, dtype=np.float32)[:, None] / 255.0 - mean.reshape(-1)) / std.reshape(-1)
  table = np.broadcast_to(table, (256, image.shape[-1])).T  # [C, 256]
  out = np.empty(image.shape, np.float32)
  for c in range(image.shape[-1]):
    np.take(table[c], image[..., c], out=out[..., c])
  return {**example, "image": out}


def to_float(example):
  """uint8 image -> float32 in [0, 1]."""
  return {**example, "image": _to_float(example["image"])}


def random_crop(example, rng, pad=4, mode="constant"):
  """Pads H and W by `pad` and crops back to the original size at a random offset. mode: numpy's pad mode, as
  torchvision's RandomCrop(padding_mode=...): "constant" (zeros), "reflect" (edge not repeated) or "symmetric"
  (edge repeated)."""
  image = example["image"]
  h, w = image.shape[:2]
  padded = np.pad(image, [(pad, pad), (pad, pad)] + [(0, 0)] * (image.ndim - 2), mode=mode)
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return {**example, "image": padded[top:top + h, left:left + w]}


def flip(example, rng, p=0.5):
  """Horizontal flip with probability p (a numpy view: free)."""
  if rng.random() < p:
    return {**example, "image": example["image"][:, ::-1]}
  return example


def resize(example, size=224, method="bilinear"):
  """image -> antialiased bilinear resize to size×size (or `size=(height, width)`)."""
  height, width = (size, size) if np.isscalar(size) else size
  return {**example, "image": _image.resize(example["image"], int(height), int(width), method=method)}


def _shorter_side_shape(h, w, size):
  scale = size / min(h, w)
  return max(int(round(h * scale)), size), max(int(round(w * scale)), size)


def resize_small(example, size=256, method="bilinear"):
  """image -> antialiased bilinear resize so that the shorter side is `size`, keeping the aspect ratio."""
  image = example["image"]
  return {**example, "image": _image.resize(image, *_shorter_side_shape(*image.shape[:2], size), method=method)}


def center_crop(example, size=224, resize_small=0, method="bilinear"):
  """image -> its central size×size crop; with resize_small > 0 the shorter side is first resized to
  `resize_small` (the ImageNet evaluation transform: resize_small=256, size=224). The resize is fused
  with the crop (only the kept pixels are computed), giving the same pixels as resize_small then crop."""
  image = example["image"]
  h, w = image.shape[:2]
  rh, rw = _shorter_side_shape(h, w, resize_small) if resize_small > 0 else (h, w)
  if rh < size or rw < size:
    raise ValueError(f"center_crop(size={size}) of a {rh}x{rw} image; resize first (resize_small=...)")
  top, left = (rh - size) // 2, (rw - size) // 2
  if resize_small > 0:
    sy, sx = h / rh, w / rw
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return {**example, "image": _image.resize(image, size, size, box=box, method=method)}
  return {**example, "image": image[top:top + size, left:left + size]}


def inception_crop(example, rng, size=224, area_min=0.08, area_max=1.0, ratio_min=3 / 4, ratio_max=4 / 3,
                   method="bilinear"):
  """Random resized crop (Szegedy et al. 2015; torchvision RandomResizedCrop), resized to size×size.

  Up to 10 tries draw an area fraction a ~ U(area_min, area_max) of H·W and a log-uniform aspect ratio
  r (= width / height) in [ratio_min, ratio_max]; the crop is w = round(sqrt(a·H·W·r)),
  h = round(sqrt(a·H·W / r)) at a uniform position. If no try fits, the central crop of the whole image
  with its aspect ratio clipped to [ratio_min, ratio_max] is used. method="random" resizes with bilinear or
  bicubic at random (one more draw from `rng`, after the crop's).
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
  if method == "random":
    method = ("bilinear", "bicubic")[rng.integers(2)]
  return {**example, "image": _image.resize(crop, size, size, method=method)}


def randaugment(example, rng, num_layers=2, magnitude=9, max_magnitude=10):
  """RandAugment (Cubuk et al. 2020) on a uint8 HWC image; see effjax/data/randaugment.py."""
  return {**example, "image": _randaugment.randaugment(example["image"], rng, num_layers, magnitude, max_magnitude)}


def timm_randaugment(example, rng, policy="rand-m9-mstd0.5-inc1", method="bicubic", fill=(124, 116, 104),
                     translate=0.45):
  """timm's RandAugment `policy` on a uint8 HWC image; see effjax/data/randaugment.py."""
  return {**example, "image": _randaugment.timm_randaugment(example["image"], rng, policy, method, fill, translate)}


def tf_randaugment(example, rng, num_layers=2, magnitude=10.0, translate_const=10.0, cutout_const=40.0):
  """The TensorFlow Model Garden's RandAugment on a uint8 RGB HWC image; see effjax/data/tf_randaugment.py."""
  image = _tf_randaugment.tf_randaugment(example["image"], rng, num_layers, magnitude, translate_const, cutout_const)
  return {**example, "image": image}


def random_erasing(example, rng, prob=0.25, area_min=0.02, area_max=1 / 3, ratio_min=0.3, mode="pixel", count=1):
  """timm's RandomErasing (Zhong et al. 2020) on a normalized float HWC image (put it after normalize).

  With probability `prob`, each of `count` rectangles: up to 10 tries draw an area a ~ U(area_min, area_max)·H·W/count
  and a log-uniform aspect ratio r (height / width) in [ratio_min, 1/ratio_min]; h = round(sqrt(a·r)),
  w = round(sqrt(a/r)); the first try with h < H and w < W is placed uniformly and filled with N(0, 1) noise per
  pixel (mode="pixel"), one N(0, 1) colour per channel ("rand") or zeros ("const"). Draws in timm's order.
  """
  image = example["image"]
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"random_erasing expects a normalized float image (put it after normalize), got {image.dtype}")
  if rng.random() > prob:
    return example
  image = np.array(image)
  height, width, channels = image.shape
  log_ratio = (np.log(ratio_min), np.log(1 / ratio_min))
  for _ in range(count):
    for _ in range(10):
      area = rng.uniform(area_min, area_max) * height * width / count
      ratio = np.exp(rng.uniform(*log_ratio))
      h, w = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
      if w < width and h < height:
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        shape = {"pixel": (h, w, channels), "rand": (1, 1, channels)}.get(mode)
        image[top:top + h, left:left + w] = rng.normal(size=shape) if shape else 0.0
        break
  return {**example, "image": image}


RANDOM_OPS = {"random_crop": random_crop, "flip": flip, "inception_crop": inception_crop, "randaugment": randaugment,
              "timm_randaugment": timm_randaugment, "tf_randaugment": tf_randaugment,
              "random_erasing": random_erasing, "patch3d": _volume.patch3d,
              "spatial3d": _volume.spatial3d, "noise3d": _volume.noise3d, "blur3d": _volume.blur3d,
              "brightness3d": _volume.brightness3d, "contrast3d": _volume.contrast3d, "lowres3d": _volume.lowres3d,
              "gamma3d": _volume.gamma3d, "mirror3d": _volume.mirror3d}
DETERMINISTIC_OPS = {"normalize": normalize, "to_float": to_float, "resize": resize, "resize_small": resize_small,
                     "center_crop": center_crop}


def parse(spec: str):
  """"name(k=v,...)" -> (name, fn with the options bound, is_random); unknown names or arguments raise ValueError."""
  name, bracket, rest = spec.partition("(")
  name = name.strip()
  if name in RANDOM_OPS:
    fn, is_random = RANDOM_OPS[name], True
  elif name in DETERMINISTIC_OPS:
    fn, is_random = DETERMINISTIC_OPS[name], False
  else:
    raise ValueError(f"unknown data op {name!r} in {spec!r}; available: "
                     f"{', '.join(sorted({**RANDOM_OPS, **DETERMINISTIC_OPS}))}")
  if bracket and not rest.endswith(")"):  # "resize(" too: an unclosed op must not run with its defaults
    raise ValueError(f"data op {spec!r}: expected name(key=value,...)")
  options = [k for k, v in inspect.signature(fn).parameters.items() if v.default is not inspect.Parameter.empty]
  given = parse_arg(rest[:-1] if rest else "", **{k: None for k in options})
  kwargs = {k: v for k, v in given.items() if v is not None}
  methods = (*_image.RESAMPLE, "random") if name in RANDOM_OPS else tuple(_image.RESAMPLE)
  if kwargs.get("method", "bilinear") not in methods:
    raise ValueError(f"data op {spec!r}: method must be one of {', '.join(methods)}")
  if name == "random_crop" and kwargs.get("mode", "constant") not in ("constant", "reflect", "symmetric"):
    raise ValueError(f"data op {spec!r}: mode must be constant, reflect or symmetric")
  if name == "random_erasing" and kwargs.get("mode", "pixel") not in ("pixel", "rand", "const"):
    raise ValueError(f"data op {spec!r}: mode must be pixel, rand or const")
  if name == "timm_randaugment":
    _randaugment.parse_timm_policy(kwargs.get("policy", "rand"))
  if name == "tf_randaugment":
    _tf_randaugment.check_args(**kwargs)
  std = np.asarray(kwargs.get("std", 1.0), np.float64) if name == "normalize" else 1.0
  if not np.all(np.isfinite(std) & (std != 0)):
    raise ValueError(f"data op {spec!r}: std must be finite and non-zero")
  return name, functools.partial(fn, **kwargs), is_random
