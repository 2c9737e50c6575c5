"""Image ops: resize, crops, inception crop and RandAugment (effjax/data/ops.py, effjax/data/randaugment.py)."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from effjax.data import image as image_lib, ops, randaugment

# Outputs of the numpy implementations these Pillow ops replaced (effjax/data/ops.py and randaugment.py at
# commit 60b8b4b) on a 120×160 photograph (skimage coffee) and a 64×64 crop of it.
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "image_ops_numpy_reference.npz")


def _op(spec):
  return ops.parse(spec)[1]


def _photo(h=48, w=64, seed=0):
  """A smooth uint8 RGB test image with structure in every channel."""
  y, x = np.mgrid[0:h, 0:w]
  rng = np.random.default_rng(seed)
  image = np.stack([x * 255 / w, y * 255 / h, 128 + 100 * np.sin(x / 5 + y / 7)], -1) + rng.normal(0, 8, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def test_resize_matches_half_pixel_bilinear_exactly():
  image = np.array([[0.0, 2.0], [4.0, 6.0]], np.float32)[..., None]
  out = image_lib.resize(image, 4, 4)
  expected = np.array([[0, 0.5, 1.5, 2], [1, 1.5, 2.5, 3], [3, 3.5, 4.5, 5], [4, 4.5, 5.5, 6]], np.float32)
  np.testing.assert_allclose(out[..., 0], expected, atol=1e-6)
  # Halving with antialias: a triangle of half-width 2 on the half-pixel grid weighs 1/8, 3/8, 3/8, 1/8;
  # at the border the tap outside the image is dropped and the rest renormalised: (0·3 + 1·3 + 2·1) / 7.
  ramp = np.arange(8, dtype=np.float32)[None, :, None].repeat(2, 0)
  np.testing.assert_allclose(image_lib.resize(ramp, 2, 4)[0, :, 0], [5 / 7, 2.5, 4.5, 7 - 5 / 7], atol=1e-5)


def _reference_cases():
  ref = dict(np.load(REFERENCE))
  image, small = ref["input"], ref["ra_input"]
  cases = {"resize_small_96": lambda: ops.resize_small({"image": image}, size=96)["image"],
           "resize_64": lambda: ops.resize({"image": image}, size=64)["image"],
           "resize_200x180": lambda: ops.resize({"image": image}, size=(200, 180))["image"],
           "center_crop_80_resize_small_96":
               lambda: ops.center_crop({"image": image}, size=80, resize_small=96)["image"]}
  for s in range(3):
    cases[f"inception_crop_64_seed{s}"] = (
        lambda s=s: ops.inception_crop({"image": image}, np.random.default_rng(s), size=64)["image"])
  for op, signed in randaugment.OPS:
    for f in (0.7, -0.7) if signed else (0.7,):
      cases[f"ra_{op.__name__}_{f:+.1f}"] = lambda op=op, f=f: op(small, f)
  return ref, cases


def test_pillow_ops_match_the_numpy_reference():
  """Every op within 0.6 grey levels (of 255) in mean absolute difference of the numpy reference.

  Differences come from rounding (Pillow's fixed-point resampling and blends round or truncate where numpy
  rounded floats: |diff| <= 1 per pixel) and, for shear, from ties of the nearest-neighbour sampling.
  """
  ref, cases = _reference_cases()
  assert len(cases) == len(ref) - 2
  for name, fn in cases.items():
    out, want = fn().astype(np.float32), ref[name].astype(np.float32)
    assert out.shape == want.shape, name
    mad = np.abs(out - want).mean()
    assert mad <= 0.6, f"{name}: mean |diff| {mad:.3f}"
    if not name.startswith(("ra_shear", "ra_rotate")):
      assert np.abs(out - want).max() <= 1, name


def test_decode_and_fused_center_crop():
  photo = np.load(REFERENCE)["input"]
  buffer = io.BytesIO()
  Image.fromarray(photo).save(buffer, format="PNG")
  np.testing.assert_array_equal(image_lib.decode(buffer.getvalue()), photo)
  Image.fromarray(photo[..., 0]).save(buffer := io.BytesIO(), format="JPEG", quality=95)
  grey = image_lib.decode(buffer.getvalue())
  assert grey.shape == (120, 160, 3) and np.abs(grey[..., 0].astype(int) - photo[..., 0]).mean() < 3
  # The fused resize + crop gives exactly the pixels of resize_small followed by a crop.
  fused = ops.center_crop({"image": photo}, size=80, resize_small=96)["image"]
  resized = ops.resize_small({"image": photo}, size=96)["image"]
  np.testing.assert_array_equal(fused, ops.center_crop({"image": resized}, size=80)["image"])


def test_resize_keeps_dtype_and_constant_images():
  for dtype in (np.uint8, np.float32):
    image = np.full((30, 50, 3), 77, dtype)
    out = _op("resize(size=224)")({"image": image, "label": 3})
    assert out["image"].shape == (224, 224, 3) and out["image"].dtype == dtype and out["label"] == 3
    np.testing.assert_array_equal(out["image"], 77)
  out = _op("resize(size=(10,20))")({"image": _photo()})["image"]
  assert out.shape == (10, 20, 3)
  image = _photo()
  assert _op("resize(size=(48,64))")({"image": image})["image"] is image


def test_resize_small_and_center_crop():
  image = _photo(48, 64)
  assert _op("resize_small(size=24)")({"image": image})["image"].shape == (24, 32, 3)
  crop = _op("center_crop(size=32)")({"image": image})["image"]
  np.testing.assert_array_equal(crop, image[8:40, 16:48])
  assert _op("center_crop(size=16,resize_small=24)")({"image": image})["image"].shape == (16, 16, 3)
  with pytest.raises(ValueError, match="center_crop"):
    _op("center_crop(size=64)")({"image": image})


def test_inception_crop_respects_area_and_aspect_bounds(monkeypatch):
  crops = []
  original = image_lib.resize
  monkeypatch.setattr(image_lib, "resize",
                      lambda crop, h, w, **kw: crops.append(crop.shape) or original(crop, h, w, **kw))
  image = _photo(120, 160)
  fn = _op("inception_crop(size=32,area_min=0.2,area_max=0.5)")
  for seed in range(200):
    out = fn({"image": image}, np.random.default_rng(seed))["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  areas = np.array([h * w for h, w, _ in crops]) / (120 * 160)
  ratios = np.array([w / h for h, w, _ in crops])
  # Rounding h and w to integers moves area and ratio by a few percent at these sizes.
  assert areas.min() >= 0.2 * 0.95 and areas.max() <= 0.5 * 1.05
  assert ratios.min() >= 0.75 * 0.95 and ratios.max() <= 4 / 3 * 1.05
  assert areas.max() - areas.min() > 0.2 and ratios.max() - ratios.min() > 0.4  # the whole range is drawn
  full = _op("inception_crop(size=120,area_min=1.0,area_max=1.0,"
             "ratio_min=1.3333333333333333,ratio_max=1.3333333333333333)")
  np.testing.assert_array_equal(full({"image": image}, np.random.default_rng(0))["image"], original(image, 120, 120))


def test_inception_crop_is_deterministic_per_seed():
  fn = _op("inception_crop(size=24)")
  a, b, c = (fn({"image": _photo()}, np.random.default_rng(s))["image"] for s in (5, 5, 6))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_randaugment_is_deterministic_and_changes_images():
  image = _photo()
  fn = _op("randaugment(num_layers=2,magnitude=9)")
  a = fn({"image": image}, np.random.default_rng(3))["image"]
  b = fn({"image": image}, np.random.default_rng(3))["image"]
  np.testing.assert_array_equal(a, b)
  assert a.shape == image.shape and a.dtype == np.uint8
  changed = sum(not np.array_equal(fn({"image": image}, np.random.default_rng(s))["image"], image) for s in range(20))
  assert changed >= 15


@pytest.mark.parametrize("op", [op for op, _ in randaugment.OPS if op.__name__ not in ("autocontrast", "equalize")],
                         ids=lambda op: op.__name__)
def test_randaugment_ops_are_identity_at_magnitude_zero_and_change_at_full(op):
  image = _photo()
  np.testing.assert_array_equal(op(image, 0.0), image)
  out = op(image, 1.0)
  assert out.shape == image.shape and out.dtype == np.uint8
  if op is not randaugment.identity:
    assert not np.array_equal(out, image)


def test_randaugment_magnitude_zero_only_changes_image_through_autocontrast_and_equalize():
  image = _photo()
  fn = _op("randaugment(num_layers=1,magnitude=0)")
  for seed in range(30):
    rng = np.random.default_rng(seed)
    op, _ = randaugment.OPS[np.random.default_rng(seed).integers(len(randaugment.OPS))]
    out = fn({"image": image}, rng)["image"]
    if op.__name__ not in ("autocontrast", "equalize"):
      np.testing.assert_array_equal(out, image)


def test_randaugment_op_semantics():
  image = _photo()
  np.testing.assert_array_equal(randaugment.posterize(image, 1.0), image & 0xF0)
  np.testing.assert_array_equal(randaugment.solarize(image, 1.0), 255 - image)
  np.testing.assert_array_equal(randaugment.brightness(image, -1 / 0.9), 0)
  half = randaugment.translate_x(image, 0.5)  # (150/331)·0.5·64 = 14.50 px, sampled at round(x − 14.50) = x − 15
  np.testing.assert_array_equal(half[:, 15:], image[:, :64 - 15])
  grey = np.repeat(image[..., :1], 3, -1)
  np.testing.assert_array_equal(randaugment.color(grey, 1.0), grey)
  eq = randaugment.equalize(image, 0.0)
  assert eq.min() < 10 and eq.max() > 245  # spread over the full range
  low = (image // 2 + 40).astype(np.uint8)
  stretched = randaugment.autocontrast(low, 0.0)
  assert stretched.min(axis=(0, 1)).tolist() == [0, 0, 0] and stretched.max(axis=(0, 1)).tolist() == [255, 255, 255]
  square = np.pad(np.full((8, 8, 1), 9, np.uint8), ((8, 8), (8, 8), (0, 0)))
  np.testing.assert_array_equal(randaugment.rotate(square, 3.0), square)  # 90 degrees about the centre


def test_randaugment_rejects_float_images():
  with pytest.raises(ValueError, match="uint8"):
    _op("randaugment")({"image": np.zeros((8, 8, 3), np.float32)}, np.random.default_rng(0))


@pytest.mark.parametrize("spec, train_shape, eval_shape", [
    ("crate_finetune.py:variant=S", (32, 32), (32, 32)),          # CIFAR images
    ("crate.py:variant=T", (375, 500), (500, 333)),               # ImageNet-like images
    ("crate_alpha.py:variant=B/16", (375, 500), (500, 333)),
    ("vit.py:variant=S", (375, 500), (500, 333)),
])
def test_imagenet_scale_configs_produce_224px_images(spec, train_shape, eval_shape):
  from effjax import config as cfg
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = cfg.load_config_file(os.path.join(repo, "configs", spec))
  rng = np.random.default_rng(0)
  example = {"image": _photo(*train_shape), "label": 1}
  for _, fn, is_random in (ops.parse(s) for s in c.data.pp_train):
    example = fn(example, rng) if is_random else fn(example)
  assert example["image"].shape == (224, 224, 3) and example["image"].dtype == np.float32
  example = {"image": _photo(*eval_shape), "label": 1}
  for _, fn, is_random in (ops.parse(s) for s in c.data.pp_eval):
    assert not is_random
    example = fn(example)
  assert example["image"].shape == (224, 224, 3) and example["image"].dtype == np.float32


def test_normalize_table_equals_the_arithmetic():
  image = _photo()
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  want = (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  np.testing.assert_array_equal(ops.normalize({"image": image}, mean=mean, std=std)["image"], want)
  flipped = image[:, ::-1]  # a view, as flip returns
  np.testing.assert_array_equal(ops.normalize({"image": flipped}, mean=0.5, std=0.5)["image"],
                                (flipped.astype(np.float32) / 255.0 - 0.5) / 0.5)
