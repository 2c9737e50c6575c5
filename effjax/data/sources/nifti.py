"""NIfTI segmentation volumes (Synapse, ACDC, any nnU-Net / Medical Segmentation Decathlon raw folder).

Layout: <root>/imagesTr/<case>[_0000].nii[.gz] with labels in <root>/labelsTr/<case>.nii[.gz]. Cases are
sorted by name; the last `test_fraction` of them (at least one) form the "test" split, the rest "train".
Volumes are read with nibabel (pip install 'effjax[nifti]'), transposed from NIfTI (x, y, z) to
[D, H, W] = (z, y, x), normalised, and centre-cropped / zero-padded to `crop` (D x H x W). There is no
resampling or random cropping: resample to a common spacing beforehand (as nnU-Net does).
Argument: "nifti:root=/data/Synapse;crop=64x128x128;norm=ct;classes=14;test_fraction=0.2"
  norm: "ct" clips to [-125, 275] HU and scales to [0, 1]; "zscore" per volume; "none".
Examples: {"image": float32 [D, H, W, 1], "label": int32 [D, H, W]}.
"""
import glob
import os

import numpy as np

from effjax.config import parse_nested_arg

NORMS = ("ct", "zscore", "none")
SUFFIXES = (".nii.gz", ".nii")


def _case_name(path):
  name = os.path.basename(path)
  for suffix in SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _find_label(label_dir, case):
  """labelsTr/<case> or, for nnU-Net channel-suffixed images (<case>_0000), labelsTr/<case without it>."""
  names = [case] + ([case[:-len("_0000")]] if case.endswith("_0000") else [])
  for path in (os.path.join(label_dir, n + s) for n in names for s in SUFFIXES):
    if os.path.exists(path):
      return path
  raise ValueError(f"no label for image case {case!r} in {label_dir}")


def fit_to(volume, shape):
  """Centre-crops or zero-pads the leading len(shape) axes of `volume` to `shape`."""
  for axis, target in enumerate(shape):
    size = volume.shape[axis]
    if size > target:
      start = (size - target) // 2
      volume = np.take(volume, np.arange(start, start + target), axis=axis)
    elif size < target:
      before = (target - size) // 2
      widths = [(0, 0)] * volume.ndim
      widths[axis] = (before, target - size - before)
      volume = np.pad(volume, widths)
  return volume


def normalize(image, norm):
  image = image.astype(np.float32)
  if norm == "ct":
    return (np.clip(image, -125.0, 275.0) + 125.0) / 400.0
  if norm == "zscore":
    return (image - image.mean()) / max(float(image.std()), 1e-6)
  return image


class NiftiSource:
  """Random access over (image, label) NIfTI pairs of one split."""

  def __init__(self, pairs, opts):
    self.pairs, self.opts = pairs, opts
    self.crop = tuple(int(s) for s in str(opts.crop).split("x"))
    if len(self.crop) != 3:
      raise ValueError(f"nifti crop must be DxHxW, got {opts.crop!r}")
    self.info = {"num_classes": opts.classes or None, "image_shape": self.crop + (1,), "name": "nifti"}

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    import nibabel  # optional dependency: effjax[nifti]
    image_path, label_path = self.pairs[i]
    image = np.asarray(nibabel.load(image_path).dataobj).transpose(2, 1, 0)
    label = np.asarray(nibabel.load(label_path).dataobj).transpose(2, 1, 0)
    if image.shape != label.shape:
      raise ValueError(f"{image_path} has shape {image.shape} but its label has {label.shape}")
    image = fit_to(normalize(image, self.opts.norm), self.crop)
    label = fit_to(np.rint(label).astype(np.int32), self.crop)
    return {"image": image[..., None], "label": label}

  def __repr__(self):
    return f"NiftiSource({len(self)} cases, crop {self.crop})"


def make(split: str, arg: str | None = None):
  opts = parse_nested_arg(arg, root="", crop="64x128x128", norm="ct", classes=0,
                   test_fraction=0.2)
  if split not in ("train", "test"):
    raise ValueError(f"data source 'nifti' has no split {split!r}; available: train, test")
  if opts.norm not in NORMS:
    raise ValueError(f"nifti norm {opts.norm!r} is not one of {NORMS}")
  image_dir, label_dir = os.path.join(opts.root, "imagesTr"), os.path.join(opts.root, "labelsTr")
  images = sorted(p for s in SUFFIXES for p in glob.glob(os.path.join(image_dir, f"*{s}")))
  if not images:
    raise ValueError(f"no NIfTI images in {image_dir!r}; set root= to a folder with imagesTr/ and labelsTr/")
  pairs = [(p, _find_label(label_dir, _case_name(p))) for p in images]
  num_test = max(1, round(opts.test_fraction * len(pairs)))
  if num_test >= len(pairs):
    raise ValueError(f"nifti: {len(pairs)} cases leave none for training with test_fraction={opts.test_fraction}")
  return NiftiSource(pairs[-num_test:] if split == "test" else pairs[:-num_test], opts)
