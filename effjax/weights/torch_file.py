"""PyTorch checkpoint files (`torch.save`'s zip format) read and written without torch.

A `torch.save` file is a zip archive `<name>/data.pkl` + `<name>/data/<key>` (+ `version`, `byteorder`):
data.pkl is a protocol-2 pickle of the saved object in which every tensor is
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` and every
storage a persistent id `("storage", torch.<Type>Storage, key, location, numel)` naming the raw bytes of
`data/<key>`. Reading uses a restricted unpickler: the few globals a state dict needs are mapped to
numpy-building functions and every other global becomes an inert `Opaque` record, so a file cannot run code;
every tensor view is checked against its storage (offset, sizes and strides must stay inside it) and every
storage against its declared element count, so a file cannot make the reader touch memory outside its data.
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


def _ints(value, what):
  if not (isinstance(value, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in value)):
    raise ValueError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
  return tuple(value)


def _rebuild_tensor(storage, offset, size, stride, *_):
  """The view (offset, size, stride) of `storage` as a new array; a view reaching outside it is refused."""
  if not isinstance(storage, _Storage) or not isinstance(offset, int) or offset < 0:
    raise ValueError(f"tensor with storage {storage!r} at offset {offset!r} is not a valid tensor record")
  size, stride = _ints(size, "size"), _ints(stride, "stride")
  if len(size) != len(stride):
    raise ValueError(f"tensor size {size} and stride {stride} differ in length")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1  # one past the last element read
  if end > storage.data.size:
    raise ValueError(f"tensor view (offset {offset}, size {size}, stride {stride}) reaches element {end - 1} of a "
                     f"storage of {storage.data.size} elements")
  item = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(storage.data[offset:], size, tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data, *_):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive, prefix, little_endian):
    super().__init__(file)
    self.archive, self.prefix, self.little_endian = archive, prefix, little_endian
    self.names = set(archive.namelist())

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
    name = f"{self.prefix}data/{key}"
    if name not in self.names:
      raise ValueError(f"storage {key!r} has no data in the archive")
    data = self.archive.read(name)
    numel = pid[4] if len(pid) > 4 else None
    if len(data) % dtype.itemsize or (isinstance(numel, int) and numel * dtype.itemsize > len(data)):
      raise ValueError(f"storage {key!r} holds {len(data)} bytes, too few for {numel} {dtype} elements")
    return _Storage(dtype, np.frombuffer(data, dtype))


def _not_a_zip(path):
  """Why `path` (not a readable zip archive) cannot be read."""
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    return f"{path} is empty (0 bytes)"
  if head.startswith(b"PK"):
    return f"{path} is a truncated or damaged zip archive (no readable central directory)"
  if head[:1] == b"\x80":
    return (f"{path} is a legacy (pre-1.6) PyTorch file, which is not read; re-save it with torch >= 1.6 "
            f"(torch.save(torch.load(path), path))")
  return f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)"


def read(path) -> object:
  """The object saved in a `torch.save` zip file, with tensors as numpy arrays (ValueError for any damage)."""
  if not zipfile.is_zipfile(path):
    raise ValueError(_not_a_zip(path))
  try:
    with zipfile.ZipFile(path) as archive:
      pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if len(pkl) != 1:
        raise ValueError(f"expected one data.pkl in the archive, found {len(pkl)}")
      prefix = pkl[0][:-len("data.pkl")]
      little = archive.read(f"{prefix}byteorder") != b"big" if f"{prefix}byteorder" in archive.namelist() else True
      return _Unpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix, little).load()
  except Exception as e:  # damaged archive, hostile or foreign pickle: whatever breaks, one message
    raise ValueError(f"{path} is not a readable PyTorch state dict: {type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0]}") from None


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
