"""Training-time ops on 3-D segmentation examples {"image": float [D, H, W, C], "label": int [D, H, W]}, after
nnU-Net v1 (nnUNetTrainerV2, the trainer D-Former and nnFormer run; its transforms are batchgenerators'). Named in
configs like the 2-D ops, in nnU-Net's order:
  patch3d(size=(64,128,128), foreground=0.33)   a random patch; with probability `foreground` centred on a voxel
                                                of a random foreground class present in the volume
  spatial3d(p_rot=0.2, angle=(-30,30), p_scale=0.2, scale_min=0.7, scale_max=1.4)
                                                rotation about the three axes and zoom about the centre, one
                                                resampling (image cubic spline, label per-class linear)
  noise3d(p=0.1, variance=(0,0.1))              additive Gaussian noise
  blur3d(p=0.2, sigma=(0.5,1), p_per_channel=0.5)  Gaussian blur
  brightness3d(p=0.15, multiplier=(0.75,1.25))  multiplicative brightness
  contrast3d(p=0.15, factor=(0.75,1.25))        contrast about the mean, clipped to the channel's range
  lowres3d(p=0.25, zoom=(0.5,1), p_per_channel=0.5)  simulated low resolution: down (nearest) and up (cubic) again
  gamma3d(p=0.3, gamma=(0.7,1.5), invert=False, retain_stats=True)  gamma on the channel's range
  mirror3d(axes=(0,1,2), p=0.5)                 each axis flipped with probability p (image and label)
Every probability p is per example (batchgenerators' p_per_sample).
Factors drawn from a range (lo, hi) with lo < 1 (scale, contrast, gamma) are drawn as batchgenerators does: with
probability 1/2 from U(lo, 1), else from U(max(lo, 1), hi).
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


def _factor(rng, lo, hi):
  """batchgenerators' draw of a multiplicative factor from (lo, hi): below or above 1 with probability 1/2 each."""
  return rng.uniform(lo, 1.0) if rng.random() < 0.5 and lo < 1 else rng.uniform(max(lo, 1.0), hi)


def _rotation(ax, ay, az):
  """batchgenerators rotate_coords_3d's matrix Rx(ax)·Ry(ay)·Rz(az) (axis 0 = x)."""
  cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rx @ ry @ rz


def spatial3d(example, rng, p_rot=0.2, angle=(-30.0, 30.0), p_scale=0.2, scale_min=0.7, scale_max=1.4):
  """batchgenerators augment_spatial as nnU-Net v1 runs it (no elastic deformation, rotation probability 1 per axis,
  patch = the whole example, centre c = (S − 1)/2, constant border).

  With probability p_rot: angles a_x, a_y, a_z ~ U(angle) degrees, R = Rx·Ry·Rz; with probability p_scale: one
  factor s (see the module docstring); then every output voxel x reads the input at c + s·Rᵀ(x − c), once.
  Image: cubic spline (order 3), 0 outside. Label: for each class k in increasing order, its indicator interpolated
  linearly (outside: −1) and the voxel set to k where that is ≥ 0.5; 0 where no class reaches 0.5 (nnU-Net:
  order_seg 1, border −1 then removed to 0)."""
  from scipy import ndimage  # a dependency of jax
  rotate = rng.random() < p_rot
  angles = [np.deg2rad(rng.uniform(*angle)) for _ in range(3)] if rotate else (0.0, 0.0, 0.0)
  scaled = rng.random() < p_scale
  s = _factor(rng, scale_min, scale_max) if scaled else 1.0
  if not (rotate or scaled):
    return example
  label = example["label"]
  matrix = s * _rotation(*angles).T
  centre = (np.asarray(label.shape) - 1) / 2
  offset = centre - matrix @ centre

  def resample(volume, order, cval):
    return ndimage.affine_transform(volume, matrix, offset, order=order, mode="constant", cval=cval)
  image = np.stack([resample(example["image"][..., c].astype(np.float32), 3, 0.0)
                    for c in range(example["image"].shape[-1])], -1)
  out = np.zeros_like(label)
  for k in np.unique(label):
    out[resample((label == k).astype(np.float32), 1, -1.0) >= 0.5] = k
  return {**example, "image": image, "label": out}


def _channels(example, fn):
  """The example with fn(channel [D, H, W] float32) applied to every channel of its image, in order."""
  image = example["image"].astype(np.float32)
  return {**example, "image": np.stack([fn(image[..., c]) for c in range(image.shape[-1])], -1)}


def noise3d(example, rng, p=0.1, variance=(0.0, 0.1)):
  """With probability p, adds N(0, v²) noise to every channel, v ~ U(variance) once per example (batchgenerators
  GaussianNoiseTransform: the value drawn from `noise_variance` is used as the standard deviation)."""
  if rng.random() >= p:
    return example
  v = rng.uniform(*variance)
  return _channels(example, lambda x: x + rng.normal(0.0, v, x.shape).astype(np.float32))


def blur3d(example, rng, p=0.2, sigma=(0.5, 1.0), p_per_channel=0.5):
  """With probability p, blurs each channel with probability p_per_channel by a Gaussian of σ ~ U(sigma) drawn per
  channel (batchgenerators GaussianBlurTransform, different_sigma_per_channel: scipy gaussian_filter, reflect)."""
  from scipy import ndimage
  if rng.random() >= p:
    return example
  return _channels(example, lambda x: ndimage.gaussian_filter(x, rng.uniform(*sigma))
                   if rng.random() <= p_per_channel else x)


def brightness3d(example, rng, p=0.15, multiplier=(0.75, 1.25)):
  """With probability p, multiplies each channel by m ~ U(multiplier) drawn per channel
  (batchgenerators BrightnessMultiplicativeTransform)."""
  if rng.random() >= p:
    return example
  return _channels(example, lambda x: x * np.float32(rng.uniform(*multiplier)))


def contrast3d(example, rng, p=0.15, factor=(0.75, 1.25)):
  """With probability p, each channel x becomes (x − mean)·f + mean clipped to [min x, max x], f drawn per channel
  (batchgenerators ContrastAugmentationTransform, preserve_range)."""
  if rng.random() >= p:
    return example

  def contrast(x):
    f, mean = _factor(rng, *factor), x.mean()
    return np.clip((x - mean) * np.float32(f) + mean, x.min(), x.max())
  return _channels(example, contrast)


def lowres3d(example, rng, p=0.25, zoom=(0.5, 1.0), p_per_channel=0.5):
  """With probability p, each channel with probability p_per_channel is resized to round(shape·z) voxels,
  z ~ U(zoom) per channel, by nearest neighbour and back to its shape by cubic spline (skimage resize, edge mode,
  no anti-aliasing: batchgenerators SimulateLowResolutionTransform as nnU-Net v1 runs it, per_channel,
  order_downsample 0, order_upsample 3)."""
  from skimage.transform import resize  # an effjax dependency
  if rng.random() >= p:
    return example

  def lowres(x):
    if rng.random() >= p_per_channel:
      return x
    target = np.round(np.asarray(x.shape) * rng.uniform(*zoom)).astype(int)
    small = resize(x.astype(np.float64), target, order=0, mode="edge", anti_aliasing=False)
    return resize(small, x.shape, order=3, mode="edge", anti_aliasing=False).astype(np.float32)
  return _channels(example, lowres)


def gamma3d(example, rng, p=0.3, gamma=(0.7, 1.5), invert=False, retain_stats=True):
  """With probability p, per channel (batchgenerators GammaTransform, per_channel as nnU-Net): with `invert` on −x,
  y = ((x − min)/(r + ε))^g·(r + ε) + min with r = max − min, ε = 1e-7 and g drawn per channel; with retain_stats
  y is then standardised and given x's mean and standard deviation (std + 1e-8 in the division)."""
  if rng.random() >= p:
    return example
  sign = np.float32(-1.0 if invert else 1.0)

  def adjust(x):
    x = sign * x
    mean, std = x.mean(), x.std()
    g = _factor(rng, *gamma)
    low, r = x.min(), x.max() - x.min() + np.float32(1e-7)
    y = np.power((x - low) / r, g) * r + low
    if retain_stats:
      y = (y - y.mean()) / (y.std() + np.float32(1e-8)) * std + mean
    return sign * y.astype(np.float32)
  return _channels(example, adjust)
