"""TensorFlow Datasets through their ArrayRecord files (`tfds.data_source`, no TensorFlow), e.g. "tfds:cifar10".

The dataset must already be prepared in the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets):
effjax never downloads at training time, so a missing dataset fails at once with a message saying how
to prepare it. A prepared dataset is read from its files alone (dataset_info.json), so datasets whose
builder code is not registered in tensorflow-datasets work too. Examples are tfds feature dicts; image
features are decoded with Pillow (effjax/data/image.py) into uint8 HWC arrays, labels stay under "label";
`min_size` (set by the pipeline from the recipe's first op) lets JPEGs decode at a reduced scale.
"""
import os

from effjax.data import image as image_lib


def make(split: str, arg: str | None = None):
  if not arg:
    raise ValueError("data source 'tfds' needs a dataset name, e.g. config.data.source = 'tfds:cifar10'")
  import tensorflow_datasets as tfds
  name, _, version = arg.partition(":")
  full_name = f"{name}:{version}" if version else name
  data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  try:
    builder = tfds.core.read_only_builder.builder_from_files(full_name, data_dir=data_dir)
  except Exception:  # not prepared there (tfds raises several types)
    try:
      tfds.builder(full_name, data_dir=data_dir)
    except Exception as e:
      raise ValueError(f"tfds dataset {name!r} is unknown to tensorflow-datasets and not prepared in "
                       f"{data_dir} (a folder of images per class: `python -m effjax.data.prepare --name {name} "
                       f"--source DIR`): {str(e).splitlines()[0]}") from None
    raise ValueError(
        f"tfds dataset {name!r} is not prepared in {data_dir}: run `python -m effjax.data.prepare --name {name}` "
        f"(no TensorFlow; downloads, so on a machine with network access, then copy {data_dir}/{name} here) "
        f"or set TFDS_DATA_DIR") from None
  features = builder.info.features
  images = {k: f.shape[-1] for k, f in features.items() if isinstance(f, tfds.features.Image)}
  text = {k for k, f in features.items() if isinstance(f, tfds.features.Text)}  # e.g. imagenet2012's file_name
  source = builder.as_data_source(split=split, decoders={k: tfds.decode.SkipDecoding() for k in images})
  info = {"name": f"tfds:{name}"}
  if "label" in features and hasattr(features["label"], "num_classes"):
    info["num_classes"] = features["label"].num_classes
  if "image" in features:
    info["image_shape"] = tuple(features["image"].shape)
  return _TfdsSource(source, images, info, text)


class _TfdsSource:
  """Random access to one split; image features (encoded bytes in the files) are decoded on access; text
  features (strings, which cannot be batched onto devices) are dropped."""

  def __init__(self, source, images, info, text=()):
    self.source, self.images, self.info, self.text = source, images, info, set(text)
    self.min_size = None  # (height, width) the decoded images must keep (image.decode's draft); None: full size

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = {k: v for k, v in self.source[i].items() if k not in self.text}
    for key, channels in self.images.items():
      example[key] = image_lib.decode(example[key], channels, self.min_size)
    return example
