"""Writes tests/data/tf_randaugment.npz: the TensorFlow Model Garden's RandAugment ops (official/vision/ops/augment.py
of tf-models-official 2.20.0, the recipe of the ResNet-RS configs) on three fixed images. Never run by the test suite.

Every random choice is pinned: each op is called directly with the argument its level maps to (augment.level_to_arg,
translate_const=10 and cutout_const=40 as in official/vision/configs/common.py RandAugment), the random sign of
rotate/shear/translate is fixed per image (SIGNS), and cutout is called through the official _fill_rectangle with a
fixed centre per image (CUTOUT_CENTRES), as augment.cutout would with that centre drawn. tests/test_tf_randaugment.py
compares effjax/data/tf_randaugment.py with these outputs. Needs TensorFlow (a separate venv; not an effjax
dependency) and the augment.py of the tf-models-official wheel, imported by path with its unused imports stubbed:
  python3 -m venv /tmp/venv-tf && /tmp/venv-tf/bin/pip install tensorflow-cpu==2.21.0
  /tmp/venv-tf/bin/pip download --no-deps tf-models-official==2.20.0 -d /tmp/tfm
  python3 -m zipfile -e /tmp/tfm/tf_models_official-2.20.0-py2.py3-none-any.whl /tmp/tfm/src
  /tmp/venv-tf/bin/python tests/data/make_tf_randaugment_goldens.py /tmp/tfm/src/official/vision/ops/augment.py

Layout: images [3, H, W, 3] uint8; ops: the official RandAugment's op names in its order (available_ops);
out/<op>/<level> [3, H, W, 3] uint8 at LEVELS and EXTRA (out/<op> for the level-free ops); arg/<op>/<level>:
|argument| of the op at that level (level_to_arg); signs [3], cutout_centres [3, 2] (row, column); versions:
TensorFlow's and the wheel's.
"""
import importlib.util
import os
import sys
import types

import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_randaugment.npz")
SHAPE = (16, 20, 3)
LEVELS = (3.0, 10.0, 15.0)  # 10: ResNet-RS-50, 15: the larger ResNet-RS; 3 takes the interpolating blend branch
# Posterize below level 2.5 (0 bits: a shift of 8) and from 22.5 (9 bits: a shift of -1) hits TensorFlow's clamping;
# TranslateX by 50 px reads beyond one image width each side (the reflection's periodic folds).
EXTRA = (("Posterize", 2.0), ("Posterize", 25.0), ("TranslateX", 50.0))
SIGNS = (1.0, -1.0, 1.0)
CUTOUT_CENTRES = ((5, 7), (14, 18), (0, 19))
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
REPLACE = [128] * 3  # the official RandAugment's replace_value


def load_augment(path):
  """Imports augment.py by path; its imports used only by other ops (tf_keras, configs, box_ops) are stubbed."""
  stubs = ["tf_keras", "official", "official.vision", "official.vision.configs", "official.vision.configs.common",
           "official.vision.ops", "official.vision.ops.box_ops"]
  for name in stubs:
    sys.modules[name] = types.ModuleType(name)
  sys.modules["official.vision.configs"].common = sys.modules["official.vision.configs.common"]
  sys.modules["official.vision.configs.common"].SSDRandomCropParam = object
  sys.modules["official.vision.ops"].box_ops = sys.modules["official.vision.ops.box_ops"]
  spec = importlib.util.spec_from_file_location("augment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_images():
  """Noise, a smooth colour gradient, and flat blocks with a narrow value range and a constant channel (autocontrast
  leaves it alone; sharpness edges).

  Seed 87 picks a noise image whose Contrast at level 10 needs TensorFlow's summation order for the channel means
  (numpy's mean moves a pixel across a truncation boundary)."""
  noise = np.random.default_rng(87).integers(0, 256, SHAPE, dtype=np.uint8)
  y, x = np.mgrid[:SHAPE[0], :SHAPE[1]]
  gradient = np.stack([x * 255 / (SHAPE[1] - 1), y * 255 / (SHAPE[0] - 1), (x + y) * 4 % 256], -1)
  blocks = np.stack([40 + 20 * ((y // 6 + x // 8) % 4), np.full_like(x, 100), 180 - 30 * (y // 4 % 3)], -1)
  return np.stack([noise, gradient, blocks]).astype(np.uint8)


def main():
  aug = load_augment(sys.argv[1])
  ra = aug.RandAugment()
  images = make_images()
  level_args = aug.level_to_arg(cutout_const=40.0, translate_const=10.0)
  out = {"images": images, "ops": np.array(ra.available_ops), "signs": np.array(SIGNS, np.float32),
         "cutout_centres": np.array(CUTOUT_CENTRES, np.int32),
         "versions": np.array([tf.__version__, "tf-models-official 2.20.0"])}
  for name in ("AutoContrast", "Equalize", "Invert"):
    out[f"out/{name}"] = np.stack([aug.NAME_TO_FUNC[name](tf.constant(im)).numpy() for im in images])
  cases = [(name, level) for name in ra.available_ops if name not in ("AutoContrast", "Equalize", "Invert")
           for level in LEVELS]
  for name, level in cases + list(EXTRA):
    (arg,) = level_args[name](level)
    arg = abs(float(arg))  # rotate/shear/translate negate their argument at random: the sign is pinned below
    results = []
    for im, sign, (row, col) in zip(images, SIGNS, CUTOUT_CENTRES):
      x = tf.constant(im)
      if name == "Cutout":
        results.append(aug._fill_rectangle(x, col, row, int(arg), int(arg), REPLACE).numpy())
      elif name in SIGNED:
        results.append(aug.NAME_TO_FUNC[name](x, sign * arg, REPLACE).numpy())
      else:
        results.append(aug.NAME_TO_FUNC[name](x, level_args[name](level)[0]).numpy())
    out[f"out/{name}/{level:g}"] = np.stack(results)
    out[f"arg/{name}/{level:g}"] = np.float64(arg)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(out)} arrays)")


if __name__ == "__main__":
  main()
