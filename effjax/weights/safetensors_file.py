"""`.safetensors` files read and written with numpy alone.

Layout: an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype": "F32", "shape": [...],
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the little-endian tensor bytes (offsets relative
to the end of the header).
"""
import json
import struct

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODE_OF = {np.dtype(v): k for k, v in DTYPES.items()}


def read(path) -> dict:
  """{name: array} of a .safetensors file."""
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise ValueError(f"{path} is too short to be a safetensors file")
  (n,) = struct.unpack("<Q", blob[:8])
  try:
    header = json.loads(blob[8:8 + n])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} has no valid safetensors header ({e})") from None
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
    out[name] = np.frombuffer(blob[8 + n + begin:8 + n + end], dtype).reshape(info["shape"]).copy()
  return out


def write(path, tensors: dict) -> None:
  """Writes {name: array} as a .safetensors file."""
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    value = np.ascontiguousarray(value)
    if value.dtype not in _CODE_OF:
      raise ValueError(f"{name}: dtype {value.dtype} has no safetensors code")
    blob = value.astype(value.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": _CODE_OF[value.dtype], "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # the reference writer aligns the data to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
