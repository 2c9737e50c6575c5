"""Pillow helpers shared by the image ops: numpy HWC <-> PIL, JPEG/PNG decoding, antialiased resizing.

Pillow (libjpeg-turbo decoding, SIMD-accelerated resampling) was measured fastest or on par on one core
for everything the ops need except a few elementwise ops that stay in numpy (experiments/data/README.md).
Arrays stay the interchange format between ops; a conversion costs ~0.03 ms for a 224×224×3 image.

Draft decoding. A JPEG stores 8×8 blocks of DCT coefficients, and libjpeg can decode them directly at 1/2, 1/4
or 1/8 of the size (each block's low frequencies; Pillow's `draft`), which costs a fraction of a full decode
plus a downscale. `decode(..., min_size=(h, w))` uses the largest such reduction that keeps the image at least
h×w; the pipeline asks for it when the recipe's first op resizes to a fixed size (resize, resize_small,
center_crop with resize_small), so the ops then resize a smaller image to the same output size. The output
differs from a full decode by the filter only (a DCT-domain reduction, then the triangle filter, instead of the
triangle filter alone): on four scikit-image photographs resized to 1024×768 (JPEG quality 90), through
center_crop(224, resize_small=256), the output pixels differ from the full decode's by 0.45 grey levels on
average, 4 at the 99th percentile, 12 at most (0 on 375×500, which is decoded in full: 1/2 would be < 256). Random crops
(inception_crop) choose their region after decoding and may need every pixel, so a recipe that starts with one
decodes in full.
"""
import io

import numpy as np
from PIL import Image

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def decode(data: bytes, channels: int | None = 3, min_size: tuple[int, int] | None = None) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, ...) -> uint8 [H, W, channels] (1: greyscale, 3: RGB, 4: RGBA;
  None: as stored); other colour modes (CMYK, palette, ...) are converted. `min_size` = (height, width): a JPEG
  is decoded at the smallest 1/2, 1/4 or 1/8 scale that is still at least that large (draft decoding, see the
  module docstring); other formats and None decode in full."""
  image = Image.open(io.BytesIO(data))
  if min_size is not None and image.format == "JPEG":
    image.draft(_MODES.get(channels) if channels in (1, 3) else None, (int(min_size[1]), int(min_size[0])))
  if channels is None:
    channels = 1 if image.mode in ("L", "1") else 4 if image.mode in ("RGBA", "LA", "PA") else 3
  if channels not in _MODES:
    raise ValueError(f"decode: channels must be 1, 3 or 4, got {channels}")
  if image.mode != _MODES[channels]:
    image = image.convert(_MODES[channels])
  return from_pil(image)


def to_pil(image: np.ndarray) -> Image.Image:
  """uint8 [H, W, C] with C in {1, 3, 4} -> a PIL image of mode L / RGB / RGBA."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in _MODES:
    raise ValueError(f"expected a uint8 HWC image with 1, 3 or 4 channels, got {image.dtype} {image.shape}")
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, _MODES[image.shape[-1]])


def from_pil(image: Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C] (C = 1 for mode L)."""
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize(image: np.ndarray, height: int, width: int, box=None, method: str = "bilinear") -> np.ndarray:
  """Antialiased bilinear (or bicubic) resize of an HWC or HW image (any channel count; uint8 or float) to
  [height, width].

  Pillow's BILINEAR filter: half-pixel centres and a triangle kernel widened by in/out when
  downsampling; method="bicubic": Pillow's BICUBIC (cubic kernel a = -0.5, widened likewise), the filter
  torchvision applies to PIL images and so timm's `interpolation="bicubic"`. `box` = (left, top, right,
  bottom) in input pixels resizes only that region (a crop fused with the resize; taps near its edges still
  read the pixels outside it, as a crop of the full resize would). Same dtype out; uint8 is rounded by Pillow.
  """
  if image.ndim not in (2, 3):
    raise ValueError(f"resize expects an HW or HWC image, got shape {image.shape}")
  if height < 1 or width < 1:
    raise ValueError(f"resize target {height}x{width} must be positive")
  if method not in RESAMPLE:
    raise ValueError(f"resize method must be one of {sorted(RESAMPLE)}, got {method!r}")
  if box is None and image.shape[:2] == (height, width):
    return image
  hwc = image if image.ndim == 3 else image[..., None]
  if hwc.dtype == np.uint8 and hwc.shape[-1] in (1, 3):
    out = from_pil(to_pil(hwc).resize((width, height), RESAMPLE[method], box=box))
  else:  # one float32 (mode F) plane per channel
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(hwc[..., c], np.float32), "F").resize(
        (width, height), RESAMPLE[method], box=box)) for c in range(hwc.shape[-1])]
    out = np.stack(planes, -1)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else out.astype(image.dtype)
  return out if image.ndim == 3 else out[..., 0]
