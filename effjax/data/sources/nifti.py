"""NIfTI segmentation volumes (Synapse, ACDC, any nnU-Net / Medical Segmentation Decathlon raw folder).

Layout: <root>/imagesTr/<case>[_0000].nii[.gz] with labels in <root>/labelsTr/<case>.nii[.gz] (or, as in the
Synapse release, imagesTr/img0001 with labelsTr/label0001). Cases are sorted by name; with split=fraction the last
`test_fraction` of them (at least one) form the "test" split, the rest "train"; split=synapse is the standard
Synapse multi-organ split (TransUNet, nnFormer's dataset_json/Synapse.json, D-Former): cases 1, 2, 3, 4, 8, 22, 25,
29, 32, 35, 36, 38 (the number in the case name) test, the other 18 train. Volumes are read with nibabel (pip install
'effjax[nifti]'), transposed from NIfTI (x, y, z) to [D, H, W] = (z, y, x), normalised, and centre-cropped /
zero-padded to `crop` (D x H x W; "full": kept whole, for random patches drawn by the patch3d op) in the train split
and to `eval_crop` (default: crop) in the test split. There is no resampling: resample to a common spacing
beforehand (as nnU-Net does).
Argument: "nifti:root=/data/Synapse;crop=64x128x128;norm=ct;classes=14;test_fraction=0.2"
  norm: "ct" clips to [-125, 275] HU and scales to [0, 1]; "zscore" per volume; "none".
Examples: {"image": float32 [D, H, W, 1], "label": int32 [D, H, W]}.
"""
import glob
import os
import re

import numpy as np

from effjax.config import parse_nested_arg

NORMS = ("ct", "zscore", "none")
SUFFIXES = (".nii.gz", ".nii")
SYNAPSE_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
SPLITS = ("fraction", "synapse")


def _case_name(path):
  name = os.path.basename(path)
  for suffix in SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _find_label(label_dir, case):
  """labelsTr/<case> or, for nnU-Net channel-suffixed images (<case>_0000), labelsTr/<case without it>."""
  names = [case] + ([case[:-len("_0000")]] if case.endswith("_0000") else [])
  names += ["label" + n[len("img"):] for n in names if n.startswith("img")]
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

  def __init__(self, pairs, opts, crop):
    self.pairs, self.opts = pairs, opts
    self.crop = None if str(crop) == "full" else tuple(int(s) for s in str(crop).split("x"))
    if self.crop is not None and len(self.crop) != 3:
      raise ValueError(f"nifti crop must be DxHxW or full, got {crop!r}")
    shape = (None, None, None) if self.crop is None else self.crop
    self.info = {"num_classes": opts.classes or None, "image_shape": shape + (1,), "name": "nifti"}

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    import nibabel  # optional dependency: effjax[nifti]
    image_path, label_path = self.pairs[i]
    image = np.asarray(nibabel.load(image_path).dataobj).transpose(2, 1, 0)
    label = np.asarray(nibabel.load(label_path).dataobj).transpose(2, 1, 0)
    if image.shape != label.shape:
      raise ValueError(f"{image_path} has shape {image.shape} but its label has {label.shape}")
    image, label = normalize(image, self.opts.norm), np.rint(label).astype(np.int32)
    if self.crop is not None:
      image, label = fit_to(image, self.crop), fit_to(label, self.crop)
    return {"image": image[..., None], "label": label}

  def __repr__(self):
    return f"NiftiSource({len(self)} cases, crop {self.crop})"


def options(arg):
  """The source's options from its argument string (also read by effjax/aot.py for shapes)."""
  return parse_nested_arg(arg, root="", crop="64x128x128", eval_crop="", norm="ct", classes=0, split="fraction",
                          test_fraction=0.2)


def _case_number(path):
  digits = re.findall(r"\d+", _case_name(path).removesuffix("_0000"))
  if not digits:
    raise ValueError(f"split=synapse needs a case number in the file name, got {os.path.basename(path)!r}")
  return int(digits[-1])


def make(split: str, arg: str | None = None):
  opts = options(arg)
  if split not in ("train", "test"):
    raise ValueError(f"data source 'nifti' has no split {split!r}; available: train, test")
  if opts.norm not in NORMS:
    raise ValueError(f"nifti norm {opts.norm!r} is not one of {NORMS}")
  if opts.split not in SPLITS:
    raise ValueError(f"nifti split {opts.split!r} is not one of {SPLITS}")
  crop = opts.crop if split == "train" else opts.eval_crop or opts.crop
  image_dir, label_dir = os.path.join(opts.root, "imagesTr"), os.path.join(opts.root, "labelsTr")
  images = sorted(p for s in SUFFIXES for p in glob.glob(os.path.join(image_dir, f"*{s}")))
  if not images:
    raise ValueError(f"no NIfTI images in {image_dir!r}; set root= to a folder with imagesTr/ and labelsTr/")
  pairs = [(p, _find_label(label_dir, _case_name(p))) for p in images]
  if opts.split == "synapse":
    test = [pair for pair in pairs if _case_number(pair[0]) in SYNAPSE_TEST_CASES]
    if len(test) != len(SYNAPSE_TEST_CASES) or len(pairs) - len(test) != 18:
      raise ValueError(f"split=synapse expects the 30 labelled Synapse cases (12 test, 18 train) in {image_dir!r}, "
                       f"found {len(test)} test and {len(pairs) - len(test)} other cases")
    return NiftiSource(test if split == "test" else [p for p in pairs if p not in test], opts, crop)
  num_test = max(1, round(opts.test_fraction * len(pairs)))
  if num_test >= len(pairs):
    raise ValueError(f"nifti: {len(pairs)} cases leave none for training with test_fraction={opts.test_fraction}")
  return NiftiSource(pairs[-num_test:] if split == "test" else pairs[:-num_test], opts, crop)
