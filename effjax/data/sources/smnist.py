"""Sequential and permuted MNIST: each 28×28 digit read pixel by pixel as a sequence [784, 1].

Argument (all optional): "smnist:permuted,seed=0,base=mnist5k".
  permuted — apply one fixed permutation of the 784 positions (pMNIST), drawn from numpy's
             default_rng(seed); the same permutation for every split and every run.
  base     — "mnist5k" (the embedded 5,000-image subset, offline) or "tfds:<name>" (e.g. tfds:mnist,
             or tfds:cifar10 for sCIFAR-10 as [1024, 3]; the dataset must be prepared beforehand).
Examples: {"image": uint8 [H·W, C] in row-major pixel order (permuted if asked), "label": int32}.
"""
import numpy as np

from effjax.config import parse_nested_arg


def permutation(seed: int, length: int = 784) -> np.ndarray:
  """The fixed pMNIST permutation for `seed`."""
  return np.random.default_rng(seed).permutation(length)


class SequenceSource:
  """Wraps an image source: image [H, W, C] -> [H·W, C], optionally permuted along the sequence."""

  def __init__(self, base, order, name):
    self.base = base
    self.order = order
    h, w, c = base.info["image_shape"]
    self.info = {**base.info, "image_shape": (h * w, c), "name": name}

  def __len__(self):
    return len(self.base)

  def __getitem__(self, i):
    example = dict(self.base[i])
    image = np.asarray(example["image"])
    sequence = image.reshape(-1, image.shape[-1])
    example["image"] = sequence if self.order is None else sequence[self.order]
    return example


def make(split: str, arg: str | None = None):
  opts = parse_nested_arg(arg, permuted=False, seed=0, base="mnist5k")
  if opts.base == "mnist5k":
    from effjax.data.sources import mnist5k
    base = mnist5k.make(split)
  elif opts.base.startswith("tfds:"):
    from effjax.data.sources import tfds
    base = tfds.make(split, opts.base[len("tfds:"):])
  else:
    raise ValueError(f"smnist base must be 'mnist5k' or 'tfds:<name>', got {opts.base!r}")
  h, w, _ = base.info["image_shape"]
  order = permutation(opts.seed, h * w) if opts.permuted else None
  return SequenceSource(base, order, "pmnist" if opts.permuted else "smnist")
