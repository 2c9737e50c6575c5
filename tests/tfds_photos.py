"""Small tfds datasets written offline: JPEG crops of scikit-image's photographs (no download, no TensorFlow).

`prepare(data_dir)` writes `effjax_test_photos` in ArrayRecord format: 48 training and 16 test examples,
each a JPEG of a random crop (36-64 px a side) of one of four photographs, labelled with the photograph.
`prepare_imagenet_like(data_dir)` writes `effjax_test_imagenet`, shaped like tfds:imagenet2012: "train" and
"validation" splits of JPEGs whose heights and widths are drawn independently from 40-300 px (aspect ratios up
to 7.5:1), labels over 1000 classes. `prepare_cifar_like(data_dir)` writes `effjax_test_cifar`, shaped like
tfds:cifar10: "train" and "test" splits of 32×32 PNGs, 10 classes.
"""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "effjax_test_photos"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _jpeg_crops(count, seed, sides=(36, 64), image_format="JPEG"):
  import skimage.data
  photos = [getattr(skimage.data, name)() for name in PHOTOS]
  rng = np.random.default_rng(seed)
  for i in range(count):
    label = i % len(PHOTOS)
    photo = photos[label]
    h, w = rng.integers(sides[0], sides[1] + 1, size=2)
    size = rng.integers(max(h, w), min(photo.shape[:2]) + 1)  # a random square region, resized to h x w
    top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
    crop = Image.fromarray(photo[top:top + size, left:left + size]).resize((int(w), int(h)), Image.BILINEAR)
    buffer = io.BytesIO()
    crop.save(buffer, **dict(format=image_format, **({"quality": 90} if image_format == "JPEG" else {})))
    yield i, {"image": buffer.getvalue(), "label": label}


class EffjaxTestPhotos(tfds.core.GeneratorBasedBuilder):
  """JPEG-encoded crops of four photographs; the label says which."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=PHOTOS)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(48, seed=0), "test": self._generate_examples(16, seed=1)}

  def _generate_examples(self, count, seed):
    for key, example in _jpeg_crops(count, seed):
      example["image"] = io.BytesIO(example["image"])  # already encoded: tfds stores the bytes as they are
      yield key, example


def prepare(data_dir, builder_class=None):
  """Writes one of this module's datasets (default EffjaxTestPhotos) as ArrayRecord under data_dir."""
  builder = (builder_class or EffjaxTestPhotos)(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


IMAGENET_NAME = "effjax_test_imagenet"


class EffjaxTestImagenet(tfds.core.GeneratorBasedBuilder):
  """tfds:imagenet2012's features and split names on a few JPEGs of varied sizes; labels spread over 1000 classes."""
  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": (16, 0), "validation": (8, 1)}  # examples, seed

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000), "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*args) for split, args in self.SPLITS.items()}

  def _generate_examples(self, count, seed):
    for key, example in _jpeg_crops(count, seed, sides=(40, 300)):
      yield key, {"image": io.BytesIO(example["image"]), "label": (key * 389 + seed) % 1000,
                  "file_name": f"n{key:08d}_{seed}.JPEG"}


CIFAR_NAME = "effjax_test_cifar"


class EffjaxTestCifar(tfds.core.GeneratorBasedBuilder):
  """tfds:cifar10's features and split names: 32x32 PNG crops, 10 classes."""
  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": (16, 0), "test": (8, 1)}  # examples, seed

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(*args) for split, args in self.SPLITS.items()}

  def _generate_examples(self, count, seed):
    for key, example in _jpeg_crops(count, seed, sides=(32, 32), image_format="PNG"):
      yield key, {"image": io.BytesIO(example["image"]), "label": key % 10}
