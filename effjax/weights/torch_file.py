"""PyTorch checkpoint files (`torch.save`'s zip format) read and written without torch.

A `torch.save` file is a zip archive `<name>/data.pkl` + `<name>/data/<key>` (+ `version`, `byteorder`):
data.pkl is a protocol-2 pickle of the saved object in which every tensor is
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` and every
storage a persistent id `("storage", torch.<Type>Storage, key, location, numel)` naming the raw bytes of
`data/<key>`. Reading uses a restricted unpickler: the few globals a state dict needs are mapped to
numpy-building functions and every other global becomes an inert `Opaque` record, so a file cannot run code.
Writing emits the same opcodes by hand for a flat {name: array} dict, which `torch.load(weights_only=True)`
accepts. The legacy (pre-1.6, non-zip) format is not read.
"""
import collections
import io
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_OF = {np.dtype(v): k for k, v in STORAGE_DTYPES.items()}


class Opaque:
  """Stand-in for any object of the pickle that is not a tensor or a container (e.g. argparse.Namespace):
  records its constructor arguments and state, runs nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.state = args, None

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"Opaque({type(self).__qualname__})"


class _Storage:
  def __init__(self, dtype, data):
    self.dtype, self.data = dtype, data


def _rebuild_tensor(storage, offset, size, stride, *_):
  item = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(storage.data[offset:], tuple(size), tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data, *_):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive, prefix, little_endian):
    super().__init__(file)
    self.archive, self.prefix, self.little_endian = archive, prefix, little_endian

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in STORAGE_DTYPES:
      return np.dtype(STORAGE_DTYPES[name])
    return type(f"{module}.{name}", (Opaque,), {})

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise ValueError(f"unsupported persistent id {pid!r} in the PyTorch file")
    dtype, key = pid[1], pid[2]
    if not isinstance(dtype, np.dtype):
      raise ValueError(f"unsupported storage type {dtype!r} in the PyTorch file")
    dtype = dtype.newbyteorder("<" if self.little_endian else ">")
    return _Storage(dtype, np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype))


def read(path) -> object:
  """The object saved in a `torch.save` zip file, with tensors as numpy arrays."""
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a PyTorch zip checkpoint (legacy pre-1.6 files are not read; re-save "
                     f"with torch >= 1.6)")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
    prefix = pkl[0][:-len("data.pkl")]
    names = set(archive.namelist())
    little = archive.read(f"{prefix}byteorder") != b"big" if f"{prefix}byteorder" in names else True
    return _Unpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix, little).load()


def _global(module, name):
  return b"c" + f"{module}\n{name}\n".encode()


def _int(v):
  return b"J" + struct.pack("<i", v)


def _str(s):
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def _tuple(items):
  return b"(" + b"".join(items) + b"t"


def write(path, tensors: dict, name: str = "archive") -> None:
  """Writes {name: array} as a `torch.save` zip file of an OrderedDict state dict (C-contiguous tensors)."""
  ordered_dict = _global("collections", "OrderedDict") + b")R"
  body = [b"\x80\x02", ordered_dict, b"("]
  blobs = {}
  for i, (key, value) in enumerate(tensors.items()):
    value = np.ascontiguousarray(value)
    if value.dtype not in _STORAGE_OF:
      raise ValueError(f"{key}: dtype {value.dtype} has no PyTorch storage type")
    blobs[str(i)] = value.astype(value.dtype.newbyteorder("<")).tobytes()
    strides = [s // value.itemsize for s in value.strides] if value.size else [1] * value.ndim
    pid = _tuple([_str("storage"), _global("torch", _STORAGE_OF[value.dtype]), _str(str(i)), _str("cpu"),
                  _int(value.size)]) + b"Q"
    args = _tuple([pid, _int(0), _tuple([_int(s) for s in value.shape]), _tuple([_int(s) for s in strides]),
                   b"\x89", ordered_dict])
    body += [_str(key), _global("torch._utils", "_rebuild_tensor_v2"), args, b"R"]
  body += [b"u", b"."]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{name}/data.pkl", b"".join(body))
    archive.writestr(f"{name}/byteorder", b"little")
    for key, blob in blobs.items():
      archive.writestr(f"{name}/data/{key}", blob)
    archive.writestr(f"{name}/version", b"3\n")
