"""scikit-learn's 8×8 handwritten digits (1,797 real images, shipped with the package; offline).

Split (fixed, seeded): "test" = 20% of every class, "train" = the rest.
Examples: {"image": uint8 [8, 8, 1] (0..16 scaled to 0..255), "label": int32 in [0, 10)}.
"""
import numpy as np

from effjax.data.sources import _arrays


def make(split: str, arg: str | None = None):
  if arg:
    raise ValueError(f"data source 'digits' takes no argument, got {arg!r}")
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for c in range(10):
    members = np.flatnonzero(labels == c)
    test[rng.choice(members, len(members) // 5, replace=False)] = True
  return _arrays.ArraySource("digits", split, {"train": ~test, "test": test},
                             image=images, label=labels, num_classes=10)
