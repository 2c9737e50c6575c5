"""Moving-digit video clips from the embedded MNIST subset (offline, deterministic): a video classification task.

Clip i of a split shows image i of mnist5k's split (same splits, same labels) on a black size×size canvas, sliding
in a straight line over `frames` frames: its top-left corner goes from a start point a to an end point b, both drawn
uniformly in [0, size − 28]² from numpy's default_rng((split seed, i)); frame f puts it at round(a + (b − a)·f /
(frames − 1)). Argument (all optional): "moving_digits:frames=8;size=32".
Examples: {"image": uint8 [frames, size, size, 1], "label": int32 in [0, 10)}.
"""
import numpy as np

from effjax.config import parse_nested_arg
from effjax.data.sources import mnist5k

SPLIT_SEEDS = {"train": 1, "test": 2}
DIGIT = 28


def make_clip(digit, start, end, frames, size):
  """uint8 [frames, size, size, C]: `digit` [28, 28, C] moving from corner `start` to `end` (row, column)."""
  clip = np.zeros((frames, size, size, digit.shape[-1]), np.uint8)
  for f in range(frames):
    r, c = np.rint(start + (end - start) * f / max(frames - 1, 1)).astype(int)
    clip[f, r:r + DIGIT, c:c + DIGIT] = digit
  return clip


class MovingDigits:
  """Random access over the clips of one split."""

  def __init__(self, split, opts):
    self.base, self.split, self.opts = mnist5k.make(split), split, opts
    self.info = {"num_classes": 10, "image_shape": (opts.frames, opts.size, opts.size, 1), "name": "moving_digits"}

  def __len__(self):
    return len(self.base)

  def __getitem__(self, i):
    example = self.base[i]
    rng = np.random.default_rng((SPLIT_SEEDS[self.split], int(i)))
    start, end = rng.integers(0, self.opts.size - DIGIT + 1, size=(2, 2))
    return {"image": make_clip(example["image"], start, end, self.opts.frames, self.opts.size),
            "label": example["label"]}

  def __repr__(self):
    return f"MovingDigits({self.split}, {len(self)} clips of {self.info['image_shape']})"


def make(split: str, arg: str | None = None):
  opts = parse_nested_arg(arg, frames=8, size=32)
  if split not in SPLIT_SEEDS:
    raise ValueError(f"data source 'moving_digits' has no split {split!r}; available: {', '.join(SPLIT_SEEDS)}")
  if opts.frames < 1 or opts.size < DIGIT:
    raise ValueError(f"moving_digits needs frames >= 1 and size >= {DIGIT}, got frames={opts.frames}, "
                     f"size={opts.size}")
  return MovingDigits(split, opts)
