"""Writes tests/data/nnunet_aug.npz: batchgenerators' augmentation functions, as nnU-Net v1 (nnUNetTrainerV2,
get_moreDA_augmentation) calls them, on one fixed 2-channel volume and label map. Never run by the test suite.

Every random factor is pinned by giving a degenerate range (lo == hi, with lo >= 1 where batchgenerators would
otherwise pick a side of 1 at random) and probability 1, so the outputs are deterministic and
tests/test_data_volume_nnunet.py can compare effjax's ops (effjax/data/volume.py) with them by value. Needs
batchgenerators importable, e.g. its wheel unpacked (it is not an effjax dependency):
  pip download --no-deps batchgenerators==0.25.1 -d /tmp/bg && python -m zipfile -e /tmp/bg/*.whl /tmp/bg/src
  PYTHONPATH=/tmp/bg/src python tests/data/make_nnunet_aug_goldens.py

Layout: image [C, D, H, W] float32, label [D, H, W] int32; spatial<i>/{image,label} with meta["spatial"][i] =
(angle in degrees about every axis or None, scale or None); <op><i>/image with meta[<op>][i] = its arguments.
"""
import json
import os
from importlib import metadata

import numpy as np
import scipy
from batchgenerators.augmentations import (
  color_augmentations as color,
  noise_augmentations as noise,
  resample_augmentations as resample,
  spatial_transformations as spatial,
)
from scipy import ndimage

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_aug.npz")
SHAPE = (7, 10, 9)
SPATIAL = [(17.0, 1.25), (-23.0, None), (None, 1.3)]
GAMMA = [dict(gamma=1.4, invert=True, retain_stats=True), dict(gamma=1.4, invert=False, retain_stats=True),
         dict(gamma=1.2, invert=False, retain_stats=False)]
CONTRAST = [dict(factor=1.2)]
BRIGHTNESS = [dict(multiplier=1.1)]
BLUR = [dict(sigma=0.7)]
LOWRES = [dict(zoom=0.6)]


def main():
  rng = np.random.default_rng(0)
  image = ndimage.gaussian_filter(rng.normal(size=(2,) + SHAPE), (0, 1, 1, 1)).astype(np.float32) * 10 + 3
  label = np.zeros(SHAPE, np.int32)
  label[1:5, 2:8, 2:6] = 1
  label[3:6, 5:9, 4:8] = 2
  label[0:2, 0:3, 6:9] = 3
  out = {"image": image, "label": label}
  np.random.seed(0)
  for i, (angle, scale) in enumerate(SPATIAL):
    a = (0.0, 0.0) if angle is None else (np.deg2rad(angle),) * 2
    data, seg = spatial.augment_spatial(
        image[None].copy(), label[None, None].astype(np.float32), SHAPE, patch_center_dist_from_border=None,
        do_elastic_deform=False, do_rotation=angle is not None, angle_x=a, angle_y=a, angle_z=a,
        do_scale=scale is not None, scale=(scale, scale) if scale else (1.0, 1.0), border_mode_data="constant",
        border_cval_data=0, order_data=3, border_mode_seg="constant", border_cval_seg=-1, order_seg=1,
        random_crop=False, p_scale_per_sample=1, p_rot_per_sample=1, p_rot_per_axis=1)
    out[f"spatial{i}/image"], out[f"spatial{i}/label"] = data[0], seg[0, 0].astype(np.int32)
  for i, kw in enumerate(GAMMA):
    g = kw["gamma"]
    out[f"gamma{i}/image"] = color.augment_gamma(image.copy(), (g, g), kw["invert"], per_channel=True,
                                                 retain_stats=kw["retain_stats"])
  for i, kw in enumerate(CONTRAST):
    f = kw["factor"]
    out[f"contrast{i}/image"] = color.augment_contrast(image.copy(), (f, f), preserve_range=True, per_channel=True)
  for i, kw in enumerate(BRIGHTNESS):
    m = kw["multiplier"]
    out[f"brightness{i}/image"] = color.augment_brightness_multiplicative(image.copy(), (m, m), per_channel=True)
  for i, kw in enumerate(BLUR):
    s = kw["sigma"]
    out[f"blur{i}/image"] = noise.augment_gaussian_blur(image.copy(), (s, s), per_channel=True, p_per_channel=1)
  for i, kw in enumerate(LOWRES):
    z = kw["zoom"]
    out[f"lowres{i}/image"] = resample.augment_linear_downsampling_scipy(
        image.copy(), zoom_range=(z, z), per_channel=True, p_per_channel=1, order_downsample=0, order_upsample=3)
  meta = {"spatial": SPATIAL, "gamma": GAMMA, "contrast": CONTRAST, "brightness": BRIGHTNESS, "blur": BLUR,
          "lowres": LOWRES,
          "versions": {"batchgenerators": metadata.version("batchgenerators") if _installed() else "0.25.1 (wheel)",
                       "numpy": np.__version__, "scipy": scipy.__version__}}
  out["meta"] = np.array(json.dumps(meta))
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}")


def _installed():
  try:
    metadata.version("batchgenerators")
    return True
  except metadata.PackageNotFoundError:
    return False


if __name__ == "__main__":
  main()
