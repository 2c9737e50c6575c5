"""In-memory random-access source shared by the embedded datasets."""
import numpy as np


class ArraySource:
  """Random access over named arrays with a common first dimension, restricted to one split.

  `splits` maps split name -> boolean mask over all examples; `info` carries num_classes and the
  shape of one image.
  """

  def __init__(self, name, split, splits, *, num_classes, **arrays):
    if split not in splits:
      raise ValueError(f"data source {name!r} has no split {split!r}; available: {', '.join(splits)}")
    index = np.flatnonzero(splits[split])
    self.arrays = {k: v[index] for k, v in arrays.items()}
    first = next(iter(self.arrays.values()))
    self.info = {"num_classes": num_classes, "image_shape": tuple(first.shape[1:]), "name": name}

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}

  def __repr__(self):
    return f"ArraySource({self.info['name']}, {len(self)} examples)"
