"""Synthetic 3-D segmentation volumes: random overlapping ellipsoids with noise, one class per object.

Offline, deterministic and cheap: volume i of a split is drawn from a generator seeded by (split, i).
Each volume holds `objects` randomly rotated ellipsoids (semi-axes 15–35 % of each side). Object j gets class
perm[j mod classes] + 1 for a random permutation, so with objects ≥ classes every class is in every volume
(as every organ is in every abdominal scan), and later objects overwrite earlier ones where they overlap
(background is 0).
The image is the per-class intensity (class k -> k / classes) blurred by a smooth random bias field plus
Gaussian noise. Argument (all optional):
  "ellipsoids:depth=16,height=32,width=32,classes=3,objects=3,noise=0.1,train=64,test=16"
Examples: {"image": float32 [D, H, W, 1], "label": int32 [D, H, W]}; info num_classes = classes + 1.
"""
import numpy as np

from effjax.config import parse_nested_arg

SPLIT_SEEDS = {"train": 1, "test": 2}


def _rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  return q * np.sign(np.diag(r))


def make_volume(rng, shape, classes, objects, noise):
  """(image float32 [D, H, W, 1], label int32 [D, H, W]) drawn from `rng`."""
  shape = np.asarray(shape)
  coords = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij"), -1)  # [D, H, W, 3]
  label = np.zeros(tuple(shape), np.int32)
  order = rng.permutation(classes) + 1
  for j in range(objects):
    centre = rng.uniform(0.2, 0.8, 3) * shape
    radii = rng.uniform(0.15, 0.35, 3) * shape
    local = (coords - centre) @ _rotation(rng)
    label[np.sum((local / radii) ** 2, -1) <= 1.0] = order[j % classes]
  slope = rng.normal(0, 0.1, 3) / shape
  bias = (coords - shape / 2) @ slope
  image = label / classes + bias + rng.normal(0, noise, label.shape)
  return image[..., None].astype(np.float32), label


class EllipsoidSource:
  """Random access over generated volumes of one split."""

  def __init__(self, split, opts):
    self.split, self.opts = split, opts
    self.shape = (opts.depth, opts.height, opts.width)
    self.info = {"num_classes": opts.classes + 1, "image_shape": self.shape + (1,), "name": "ellipsoids"}

  def __len__(self):
    return self.opts[self.split]

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(f"ellipsoids {self.split} has {len(self)} volumes, asked for {i}")
    rng = np.random.default_rng((SPLIT_SEEDS[self.split], int(i)))
    image, label = make_volume(rng, self.shape, self.opts.classes, self.opts.objects, self.opts.noise)
    return {"image": image, "label": label}

  def __repr__(self):
    return f"EllipsoidSource({self.split}, {len(self)} volumes of {self.shape})"


def make(split: str, arg: str | None = None):
  opts = parse_nested_arg(arg, depth=16, height=32, width=32, classes=3, objects=3,
                   noise=0.1, train=64, test=16)
  if split not in SPLIT_SEEDS:
    raise ValueError(f"data source 'ellipsoids' has no split {split!r}; available: {', '.join(SPLIT_SEEDS)}")
  if opts.classes < 1 or opts.objects < 1 or min(opts.depth, opts.height, opts.width) < 1:
    raise ValueError(f"ellipsoids needs positive sizes, classes and objects, got {dict(opts)}")
  return EllipsoidSource(split, opts)
