"""Keras 2 weight files (`model.save_weights("x.h5")`) read and written by variable name (needs h5py).

Layout (tf_keras `save_weights_to_hdf5_group`): the root attribute `layer_names` lists one group per layer;
each group's attribute `weight_names` (split into `weight_names0`, `weight_names1`, ... when long) lists the
variable names, e.g. "fit/x_network/transformer_encoder/mha/query/kernel:0", and the value of each is the
dataset at `<layer>/<variable name>`. These are the names pix2seq's FIT weights carry.
"""
import numpy as np


def _h5py():
  try:
    import h5py
  except ImportError:
    raise ImportError("reading Keras .h5 weights needs h5py: pip install 'effjax[keras]'") from None
  return h5py


def _names(attrs, key):
  if key in attrs:
    values = list(attrs[key])
  else:
    values, i = [], 0
    while f"{key}{i}" in attrs:
      values += list(attrs[f"{key}{i}"])
      i += 1
  return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read(path) -> dict:
  """{variable name: array} of a Keras 2 .h5 weights file."""
  with _h5py().File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f  # a full-model save nests the weights
    layers = _names(root.attrs, "layer_names")
    if not layers:
      raise ValueError(f"{path} is not a Keras 2 weights file (no layer_names attribute; Keras 3 "
                       f".weights.h5 files do not keep variable names)")
    return {name: np.asarray(root[layer][name]) for layer in layers for name in _names(root[layer].attrs,
                                                                                       "weight_names")}


def write(path, weights: dict) -> None:
  """Writes {variable name: array} in the layout above, one layer per first name component."""
  layers = {}
  for name in weights:
    layers.setdefault(name.split("/")[0], []).append(name)
  with _h5py().File(path, "w") as f:
    f.attrs["layer_names"] = np.asarray([n.encode() for n in layers])  # fixed-length bytes, as Keras writes
    f.attrs["backend"] = b"tensorflow"
    for layer, names in layers.items():
      group = f.create_group(layer)
      group.attrs["weight_names"] = np.asarray([n.encode() for n in names])
      for name in names:
        group.create_dataset(name, data=np.asarray(weights[name]))
