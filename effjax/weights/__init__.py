"""Official checkpoint files: read into flat {official name: numpy array}, convert to effjax params, write back.

Formats, chosen by the file suffix:
  .pth .pt .bin   PyTorch `torch.save` zip files, read without torch (weights/torch_file.py); also
  .pth.tar        (the name official training scripts give their checkpoints)
  .safetensors    safetensors.numpy
  .npz            numpy archives: state-dict names, big_vision/Flax paths joined by "/", or the golden
                  reference files (keys "param/<name>")
  .msgpack        Flax `serialization.to_bytes` files (nested dicts; paths joined by "/")
  .h5             Keras 2 weights under their variable names, e.g. pix2seq's FIT (needs h5py, weights/keras_h5.py)
A checkpoint that wraps its weights ({"model": ...}, {"state_dict": ...}, {"params": ..., "opt": ...}) is
unwrapped; a golden file's "param/" or a Flax checkpoint's "params/" prefix is stripped. `load_official`
then converts with the family module's `convert_official`; `load_official_variables` also returns the model
collections the file carries (e.g. batch-norm statistics, from the module's `convert_official_variables`).
"""
import os

import flax.serialization
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from effjax import components
from effjax.weights import keras_h5, torch_file

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".npz", ".msgpack", ".h5")
_WRAPPERS = ("state_dict", "model", "model_state", "module", "params")


def _suffix(path):
  if str(path).lower().endswith(".pth.tar"):
    return ".pth"
  suffix = os.path.splitext(str(path))[1].lower()
  if suffix not in SUFFIXES:
    raise ValueError(f"{path}: unknown weights format {suffix!r}; expected one of {', '.join(SUFFIXES)}")
  return suffix


def _unwrap(obj):
  """The weights inside a training checkpoint: descend through _WRAPPERS keys holding dicts."""
  while isinstance(obj, dict):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      return obj
    obj = inner
  raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a dict of weights")


def _strip_prefix(flat):
  for prefix in ("param/", "params/"):
    if any(k.startswith(prefix) for k in flat):
      return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  return flat


def read(path) -> dict:
  """{official name: numpy array} of an official weights file (see the module docstring)."""
  suffix = _suffix(path)
  if not os.path.isfile(path):
    raise ValueError(f"weights file {path} does not exist")
  if suffix in TORCH_SUFFIXES:
    flat = traverse_util.flatten_dict(_unwrap(torch_file.read(path)), sep=".")
  elif suffix == ".safetensors":
    try:
      flat = safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
      raise ValueError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
  elif suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      flat = _strip_prefix({k: data[k] for k in data.files})
  elif suffix == ".msgpack":
    with open(path, "rb") as f:
      flat = _strip_prefix(traverse_util.flatten_dict(flax.serialization.msgpack_restore(f.read()), sep="/"))
  else:
    flat = keras_h5.read(path)
  arrays = {k: np.asarray(v) for k, v in flat.items() if isinstance(v, np.ndarray) or np.isscalar(v)}
  if not arrays:
    raise ValueError(f"{path} holds no arrays")
  return arrays


def write(path, flat: dict) -> None:
  """Writes {official name: array} in the format of the suffix (.msgpack nests names on "/")."""
  suffix = _suffix(path)
  flat = {k: np.asarray(v) for k, v in flat.items()}
  if suffix in TORCH_SUFFIXES:
    torch_file.write(path, flat)
  elif suffix == ".safetensors":
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, path)
  elif suffix == ".npz":
    np.savez(path, **flat)
  elif suffix == ".msgpack":
    with open(path, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(traverse_util.unflatten_dict(flat, sep="/")))
  else:
    keras_h5.write(path, flat)


def converter(model_name: str):
  """`convert_official` of effjax.models.<model_name> (ValueError for an unknown model or one without it)."""
  module = components.load("models", model_name)
  if not hasattr(module, "convert_official"):
    raise ValueError(f"effjax.models.{model_name} has no convert_official: no official weights to load")
  return module.convert_official


def load_official(path, model_name: str) -> dict:
  """Params of effjax.models.<model_name> from an official weights file, via its `convert_official`."""
  return converter(model_name)(read(path))


def load_official_variables(path, model_name: str) -> dict:
  """{"params": ..., <collection>: ...} of effjax.models.<model_name> from an official weights file: every
  collection the file carries (the module's `convert_official_variables` where it has one)."""
  return load_official_variables_from(read(path), model_name)


def load_official_variables_from(flat: dict, model_name: str) -> dict:
  """load_official_variables of an already read {official name: array}."""
  convert = getattr(components.load("models", model_name), "convert_official_variables", None)
  return convert(flat) if convert is not None else {"params": converter(model_name)(flat)}
