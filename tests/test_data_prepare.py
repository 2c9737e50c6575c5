"""`python -m effjax.data.prepare`: a folder of images per class becomes a tfds ArrayRecord dataset (no TensorFlow)
that trains as tfds:<name>; varying image sizes need a sizing op; JPEGs decode at a reduced scale (draft) when
the recipe's first op resizes to a fixed size."""
import io
import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from effjax import train_config
from effjax.config import ConfigError
from effjax.data import image as image_lib, ops, pipeline, prepare


def _photo(name, width, height, fmt):
  buffer = io.BytesIO()
  Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((width, height)).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """train: 3 + 3 images of 2 classes, test: 1 + 1, varying sizes, JPEG and PNG."""
  root = tmp_path_factory.mktemp("photos")
  for split, count in (("train", 3), ("test", 1)):
    for label, photo in (("cat", "chelsea"), ("coffee", "coffee")):
      os.makedirs(root / split / label)
      for i in range(count):
        fmt = "PNG" if i == 1 else "JPEG"
        (root / split / label / f"{i}.{fmt.lower()}").write_bytes(_photo(photo, 40 + 9 * i, 30 + 5 * i, fmt))
  return root


def _data_config(name, **kw):
  c = train_config.base_config().data
  c.source = f"tfds:{name}"
  c.update(kw)
  return c


def test_folder_becomes_a_tfds_dataset(folder, tmp_path, monkeypatch, capsys):
  assert prepare.main(["--name", "my_photos", "--source", str(folder), "--data_dir", str(tmp_path)]) == 0
  assert "prepared tfds:my_photos" in capsys.readouterr().out
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  train = pipeline.make_source(_data_config("my_photos"), "train")
  test = pipeline.make_source(_data_config("my_photos"), "test")
  assert (len(train), len(test), train.info["num_classes"]) == (6, 2, 2)
  sizes = {train[i]["image"].shape for i in range(6)}
  assert sizes == {(30, 40, 3), (35, 49, 3), (40, 58, 3)}  # stored as they were, JPEG and PNG alike
  labels = sorted(int(train[i]["label"]) for i in range(6))
  assert labels == [0, 0, 0, 1, 1, 1]
  # the stored bytes are the files' own (not re-encoded)
  assert train.source[0]["image"] in {(folder / "train" / c / f).read_bytes() for c in ("cat", "coffee")
                                      for f in ("0.jpeg", "1.png", "2.jpeg")}

  with pytest.raises(ConfigError, match=r"varying sizes .*config.data.pp_train needs an op .*: resize"):
    pipeline.train_data(_data_config("my_photos", pp_train=("flip",)), 2, None, 0)


def test_bad_folder_fails_in_one_line(tmp_path, capsys):
  (tmp_path / "train" / "cat").mkdir(parents=True)
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  assert prepare.main(["--name", "bad", "--source", str(tmp_path), "--data_dir", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("effjax: error: preparing 'bad': ") and "notes.txt is not an image" in err
  assert len(err.strip().splitlines()) == 1
  with pytest.raises(ValueError, match="no split folders"):
    prepare.scan_folder(str(tmp_path / "train" / "cat"))


def test_draft_decoding_keeps_the_requested_size():
  jpeg = _photo("astronaut", 1024, 768, "JPEG")
  assert image_lib.decode(jpeg).shape == (768, 1024, 3)
  assert image_lib.decode(jpeg, 3, (256, 256)).shape == (384, 512, 3)  # 1/2: 1/4 would be 192 < 256
  assert image_lib.decode(jpeg, 3, (96, 96)).shape == (96, 128, 3)  # 1/8
  assert image_lib.decode(jpeg, 1, (256, 256)).shape == (384, 512, 1)
  png = _photo("astronaut", 1024, 768, "PNG")
  assert image_lib.decode(png, 3, (256, 256)).shape == (768, 1024, 3)  # not a JPEG: decoded in full


def test_draft_gives_nearly_the_full_decode_pixels():
  """The eval recipe's output from a draft decode is close to the full decode's (the filter differs only)."""
  op = ops.parse("center_crop(size=224,resize_small=256)")[1]
  jpeg = _photo("astronaut", 1024, 768, "JPEG")
  full = op({"image": image_lib.decode(jpeg)})["image"].astype(np.float32)
  draft = op({"image": image_lib.decode(jpeg, 3, (256, 256))})["image"].astype(np.float32)
  assert full.shape == draft.shape == (224, 224, 3)
  difference = np.abs(full - draft)
  assert 0 < difference.mean() < 2 and np.percentile(difference, 99) < 10


class _Source:
  def __init__(self):
    self.info, self.min_size = {"image_shape": (None, None, 3), "name": "tfds:photos"}, "unset"


@pytest.mark.parametrize("pp, min_size", [
    (("center_crop(size=224,resize_small=256)", "normalize"), (256, 256)),
    (("resize_small(size=160)", "center_crop(size=128)"), (160, 160)),
    (("resize(size=(96,128))",), (96, 128)),
    (("inception_crop(size=224)", "flip"), None),  # a random crop may need every pixel
    (("center_crop(size=224)",), None),  # a crop in pixels: the full image
])
def test_pipeline_asks_for_draft_only_where_the_recipe_allows(pp, min_size):
  source = _Source()
  pipeline._fit_source_to_ops(source, [ops.parse(s) for s in pp], "pp_eval")
  assert source.min_size == min_size
