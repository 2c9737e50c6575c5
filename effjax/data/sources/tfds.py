"""TensorFlow Datasets through `tfds.data_source` (ArrayRecord, no TensorFlow), e.g. "tfds:cifar10".

The dataset must already be prepared in the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets):
effjax never downloads at training time, so a missing dataset fails at once with a message saying how
to prepare it. Examples are tfds feature dicts (images uint8 HWC under "image", labels under "label").
"""
import os


def make(split: str, arg: str | None = None):
  if not arg:
    raise ValueError("data source 'tfds' needs a dataset name, e.g. config.data.source = 'tfds:cifar10'")
  import tensorflow_datasets as tfds
  name, _, version = arg.partition(":")
  data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  try:
    builder = tfds.builder(f"{name}:{version}" if version else name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    raise ValueError(f"tfds dataset {name!r} is unknown to tensorflow-datasets: {e}") from None
  if not builder.is_prepared():
    raise ValueError(
        f"tfds dataset {name!r} is not available offline in {data_dir}; prepare it on a machine with "
        f"network access (`tfds build {name} --file_format=array_record`) and copy it there, "
        f"or set TFDS_DATA_DIR")
  source = tfds.data_source(builder.info.full_name, split=split, data_dir=data_dir, download=False)
  features = builder.info.features
  info = {"name": f"tfds:{name}"}
  if "label" in features and hasattr(features["label"], "num_classes"):
    info["num_classes"] = features["label"].num_classes
  if "image" in features:
    info["image_shape"] = tuple(features["image"].shape)
  return _TfdsSource(source, info)


class _TfdsSource:
  def __init__(self, source, info):
    self.source, self.info = source, info

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.source[i]
