"""Synthetic classification images: each class is a fixed random template plus per-example noise.

Learnable, deterministic and free: for smoke tests, throughput runs and shape experiments.
Argument (all optional): "synthetic:size=32,channels=3,num_classes=10,examples=2048,noise=0.5".
The "train" and "test" splits draw different examples from the same class templates.
Examples: {"image": uint8 [size, size, channels], "label": int32}.
"""
import numpy as np

from effjax.config import parse_nested_arg
from effjax.data.sources import _arrays


def make(split: str, arg: str | None = None):
  opts = parse_nested_arg(arg, size=32, channels=3, num_classes=10, examples=2048, noise=0.5)
  if split not in ("train", "test"):
    raise ValueError(f"data source 'synthetic' has no split {split!r}; available: train, test")
  templates = np.random.default_rng(0).uniform(0, 1, (opts.num_classes, opts.size, opts.size, opts.channels))
  rng = np.random.default_rng({"train": 1, "test": 2}[split])
  labels = rng.integers(0, opts.num_classes, opts.examples).astype(np.int32)
  noise = rng.normal(0, opts.noise, (opts.examples,) + templates.shape[1:])
  images = (np.clip(templates[labels] + noise, 0, 1) * 255).astype(np.uint8)
  return _arrays.ArraySource("synthetic", split, {split: np.ones(opts.examples, bool)},
                             image=images, label=labels, num_classes=opts.num_classes)
