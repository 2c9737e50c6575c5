"""Cutting images into FIT token groups and putting them back (works on numpy and jax arrays).

Layouts: images [B, H, W, C]; tokens [B, T, N, p·p·C] with T groups of N patches, each patch flattened
in (p p c) order (as tf.image.extract_patches, which pix2seq uses).

* Patch windows: patchify the whole image, then take windows of w×w patches, row-major. With
  S = w·p this is the token order of the official `images2subimages2tokens` (sub-images of S×S pixels,
  row-major, each cut into p×p patches, row-major; tested against it), but works on any per-patch features.
* Strided: group (i, j) holds the patches (i + a·g_h, j + b·g_w) for the g_h×g_w group grid, so every
  group is a coarse view of the whole image (a "far-reaching" alternative to local windows).
"""

GROUPINGS = ("window", "strided")


def _check(h, w, size, what):
  if h % size or w % size:
    raise ValueError(f"image/grid {h}x{w} is not divisible by the {what} {size}")


def patchify(images, patch_size):
  """[B, H, W, C] -> [B, H/p, W/p, p·p·C] with patch pixels in (p p c) order."""
  b, h, w, c = images.shape
  p = patch_size
  _check(h, w, p, "patch size")
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def unpatchify(patches, patch_size, channels):
  """Inverse of `patchify`: [B, h, w, p·p·C] -> [B, h·p, w·p, C]."""
  b, gh, gw, _ = patches.shape
  p = patch_size
  x = patches.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, channels)


def windows_to_groups(grid, window):
  """Patch grid [B, h, w, D] -> [B, (h/w)·(w/w), window², D], windows row-major, patches row-major inside."""
  b, gh, gw, d = grid.shape
  _check(gh, gw, window, "window")
  x = grid.reshape(b, gh // window, window, gw // window, window, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (gh // window) * (gw // window), window * window, d)


def groups_to_windows(groups, grid_hw):
  """Inverse of `windows_to_groups` for a patch grid of size grid_hw = (h, w)."""
  b, _, n, d = groups.shape
  window = int(round(n ** 0.5))
  gh, gw = grid_hw
  x = groups.reshape(b, gh // window, gw // window, window, window, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh, gw, d)


def strided_to_groups(grid, window):
  """Patch grid [B, h, w, D] -> [B, (h/window)·(w/window), window², D]: group (i, j) = grid[i::gh, j::gw]."""
  b, gh, gw, d = grid.shape
  _check(gh, gw, window, "window")
  ng_h, ng_w = gh // window, gw // window
  x = grid.reshape(b, window, ng_h, window, ng_w, d).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, ng_h * ng_w, window * window, d)


def groups_to_strided(groups, grid_hw):
  """Inverse of `strided_to_groups`."""
  b, _, n, d = groups.shape
  window = int(round(n ** 0.5))
  gh, gw = grid_hw
  x = groups.reshape(b, gh // window, gw // window, window, window, d).transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(b, gh, gw, d)


def images_to_groups(images, patch_size, group_size, grouping="window"):
  """[B, H, W, C] -> tokens [B, T, group_size², p·p·C] by `grouping` ("window" or "strided")."""
  if images.ndim != 4:
    raise ValueError(f"expected images [B, H, W, C], got shape {images.shape}")
  if grouping not in GROUPINGS:
    raise ValueError(f"unknown grouping {grouping!r}; expected one of {GROUPINGS}")
  grid = patchify(images, patch_size)
  return (windows_to_groups if grouping == "window" else strided_to_groups)(grid, group_size)


def groups_to_images(tokens, image_hw, patch_size, channels, grouping="window"):
  """Inverse of `images_to_groups` for images of size image_hw = (H, W)."""
  if grouping not in GROUPINGS:
    raise ValueError(f"unknown grouping {grouping!r}; expected one of {GROUPINGS}")
  grid_hw = (image_hw[0] // patch_size, image_hw[1] // patch_size)
  grid = (groups_to_windows if grouping == "window" else groups_to_strided)(tokens, grid_hw)
  return unpatchify(grid, patch_size, channels)
