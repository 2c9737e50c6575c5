"""Per-example preprocessing ops named in configs: "random_crop(pad=4)", "flip", "normalize(mean=0.5,std=0.5)".

Each op maps an example dict to an example dict; random ops also take a numpy Generator (seeded per
example by grain, so augmentation is reproducible and resumes exactly). Images are HWC (or DHWC).
"""
import functools
import inspect

import numpy as np

from effjax.config import parse_arg


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


RANDOM_OPS = {"random_crop": random_crop, "flip": flip}
DETERMINISTIC_OPS = {"normalize": normalize, "to_float": to_float}


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
  return name, functools.partial(fn, **kwargs), is_random
