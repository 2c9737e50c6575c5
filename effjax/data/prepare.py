"""Prepares a tfds dataset in ArrayRecord format, without TensorFlow, for `config.data.source = "tfds:<name>"`.

  python -m effjax.data.prepare --name flowers --source DIR [--data_dir DIR]   # a folder of images per class
  python -m effjax.data.prepare --name cifar10 [--data_dir DIR]                # a dataset tfds knows (downloads)

A folder is laid out as torchvision's and tfds's ImageFolder: DIR/<split>/<class>/<image file>, e.g.
DIR/train/cat/001.jpg and DIR/test/dog/042.png. The class names are the sorted class folders of all splits
together, and a label is its class's index. Image files are stored as they are (JPEG bytes stay JPEG bytes, so
training decodes them with draft decoding, effjax/data/image.py); their sizes may differ, in which case the
config's pp_train and pp_eval must give them one size (resize, center_crop or inception_crop). Without --source
the tfds builder of that name downloads and prepares its data (`download_and_prepare` with
file_format="array_record", which needs no TensorFlow for most image datasets). The dataset is written to
--data_dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets), where the trainer reads it offline.
"""
import argparse
import os
import sys

from PIL import Image

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")


def default_data_dir():
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def scan_folder(root):
  """{split: [(path, class name), ...]} and the sorted class names of the ImageFolder layout under `root`;
  ValueError naming the problem when the layout or a file does not fit."""
  if not os.path.isdir(root):
    raise ValueError(f"--source {root} is not a directory")
  splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not splits:
    raise ValueError(f"--source {root} has no split folders; expected {root}/<split>/<class>/<image file>")
  files, classes = {}, set()
  for split in splits:
    split_dir = os.path.join(root, split)
    class_dirs = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not class_dirs:
      raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image file>")
    files[split] = []
    for name in class_dirs:
      class_dir = os.path.join(split_dir, name)
      for file in sorted(os.listdir(class_dir)):
        path = os.path.join(class_dir, file)
        try:
          with Image.open(path) as image:  # reads the header only
            ok = image.format in IMAGE_FORMATS
        except OSError:
          ok = False
        if not ok:
          raise ValueError(f"{path} is not an image Pillow reads as one of {', '.join(IMAGE_FORMATS)}")
        files[split].append((path, name))
      classes.add(name)
  return files, sorted(classes)


def folder_builder(name, root, data_dir):
  """A tfds builder (ArrayRecord files, version 1.0.0) of the ImageFolder layout under `root`."""
  import tensorflow_datasets as tfds
  files, classes = scan_folder(root)
  dataset_name = name

  class Folder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=classes)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(examples) for split, examples in files.items()}

    def _generate_examples(self, examples):
      for i, (path, label) in enumerate(examples):
        yield i, {"image": path, "label": label}  # a path: tfds stores the file's bytes as they are

  return Folder(data_dir=data_dir, file_format="array_record")


def prepare(name, source=None, data_dir=None):
  """Writes dataset `name` (from the folder `source`, or tfds's own builder) to `data_dir`; returns its builder."""
  import tensorflow_datasets as tfds
  data_dir = data_dir or default_data_dir()
  if source is not None:
    builder = folder_builder(name, source, data_dir)
  else:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m effjax.data.prepare", description=__doc__.splitlines()[0])
  parser.add_argument("--name", required=True, help="dataset name: config.data.source = 'tfds:<name>'")
  parser.add_argument("--source", help="folder DIR/<split>/<class>/<image file>; without it: tfds's builder")
  parser.add_argument("--data_dir", help="where to write (default: TFDS_DATA_DIR or ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  try:
    builder = prepare(args.name, args.source, args.data_dir)
  except Exception as e:  # tfds and the folder scan raise many types; one line, as the trainer's errors
    print(f"effjax: error: preparing {args.name!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
          file=sys.stderr)
    return 1
  splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
  print(f"prepared tfds:{args.name} in {builder.data_dir} ({splits} examples); train with "
        f"TFDS_DATA_DIR={args.data_dir or default_data_dir()} --config.data.source=tfds:{args.name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
