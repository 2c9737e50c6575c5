"""Training-time ops on 3-D segmentation examples {"image": float [D, H, W, C], "label": int [D, H, W]}, after
nnU-Net v1 (nnUNetTrainerV2, the trainer D-Former and nnFormer run): patch sampling with foreground oversampling,
mirroring and scaling (batchgenerators' SpatialTransform / MirrorTransform). Named in configs like the 2-D ops:
  patch3d(size=(64,128,128), foreground=0.33)   a random patch; with probability `foreground` centred on a voxel
                                                of a random foreground class present in the volume
  mirror3d(axes=(0,1,2), p=0.5)                 each axis flipped with probability p (image and label)
  scale3d(p=0.2, scale_min=0.7, scale_max=1.4)  zoom about the centre (image cubic spline, label nearest)
"""
import numpy as np


def patch3d(example, rng, size=(64, 128, 128), foreground=0.33):
  """A `size` patch of a volume (nnU-Net v1 DataLoader3D, pad_mode "constant").

  Per axis (volume S, patch P, n = max(P − S, 0)) the start is uniform in [−n//2, S + n//2 + n%2 − P]; a
  foreground patch (drawn with probability `foreground`) starts at max(−n//2, v − P//2) for a uniformly chosen
  voxel v of a uniformly chosen foreground class (label > 0) present in the volume, so the patch may reach past
  the far border. Voxels outside the volume are 0 in the image and in the label (nnU-Net: −1, an ignored label;
  effjax has no ignore label, so they count as background). nnU-Net forces the last round(B·(1 − p)) .. B−1
  examples of every batch B to be foreground patches (p = oversample_foreground_percent = 0.33): a fraction
  1 − round(B·0.67)/B, 0.5 at batch 2; effjax draws per example with probability `foreground`.
  """
  image, label = example["image"], example["label"]
  size = tuple(int(p) for p in size)
  if len(size) != label.ndim or image.shape[:label.ndim] != label.shape:
    raise ValueError(f"patch3d(size={size}) needs image [D, H, W, C] and label [D, H, W], got {image.shape} and "
                     f"{label.shape}")
  need = [max(p - s, 0) for p, s in zip(size, label.shape)]
  low = [-(n // 2) for n in need]
  high = [s + n // 2 + n % 2 - p for s, n, p in zip(label.shape, need, size)]
  classes = np.unique(label)
  classes = classes[classes > 0]
  if rng.random() < foreground and len(classes):
    voxels = np.argwhere(label == rng.choice(classes))
    voxel = voxels[rng.integers(len(voxels))]
    start = [max(lo, int(v) - p // 2) for lo, v, p in zip(low, voxel, size)]
  else:
    start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]
  return {**example, "image": _window(image, start, size), "label": _window(label, start, size)}


def _window(array, start, size):
  """array[start : start + size] along the leading axes, zero where the window leaves the array."""
  inside = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, size, array.shape))
  out = np.zeros(size + array.shape[len(size):], array.dtype)
  out[tuple(slice(i.start - s, i.stop - s) for i, s in zip(inside, start))] = array[inside]
  return out


def mirror3d(example, rng, axes=(0, 1, 2), p=0.5):
  """Flips image and label along each of `axes` (spatial) with probability p (batchgenerators MirrorTransform)."""
  flip = tuple(a for a in axes if rng.random() < p)
  if not flip:
    return example
  return {**example, "image": np.flip(example["image"], flip), "label": np.flip(example["label"], flip)}


def scale3d(example, rng, p=0.2, scale_min=0.7, scale_max=1.4):
  """With probability p, resamples image and label at coordinates c + s·(x − c) about the centre c = (S − 1)/2:
  s < 1 zooms in, s > 1 out. s is drawn as batchgenerators does (nnU-Net v1 scale range (0.7, 1.4)): with
  probability 1/2 from U(scale_min, 1), else from U(1, scale_max), one s for all axes. Image: cubic spline
  (order 3), label: nearest (order 0); outside the volume both are 0."""
  from scipy import ndimage  # a dependency of jax
  if rng.random() >= p:
    return example
  s = rng.uniform(scale_min, 1.0) if rng.random() < 0.5 and scale_min < 1 else rng.uniform(max(scale_min, 1.0),
                                                                                             scale_max)
  label = example["label"]
  centre = (np.asarray(label.shape) - 1) / 2
  offset = centre - s * centre

  def resample(volume, order):
    return ndimage.affine_transform(volume, np.full(volume.ndim, s), offset, order=order, mode="constant", cval=0)
  image = np.stack([resample(example["image"][..., c].astype(np.float32), 3)
                    for c in range(example["image"].shape[-1])], -1)
  return {**example, "image": image, "label": resample(label, 0)}
