"""Byte-level text corpus that ships with Python: the top-level modules of the standard library.

Works offline and is deterministic for a given Python version: the sorted `*.py` files directly in
the stdlib directory are concatenated (separated by a NUL byte) and cut off at `max_bytes`. The last
5% of the bytes form "test", the rest "train". Example i of a split is the window of seq_len+1 bytes
starting at i·stride: {"tokens": int32 [seq_len + 1]} (inputs tokens[:-1], targets tokens[1:]).

Argument: "seq_len=256,stride=256,max_bytes=4000000", e.g. data.source = "pytext:seq_len=128".
"""
import os
import sysconfig

import numpy as np

from effjax.config import parse_nested_arg

TEST_FRACTION = 0.05


def corpus_bytes(max_bytes: int) -> np.ndarray:
  """uint8 [<= max_bytes]: the concatenated stdlib sources."""
  root = sysconfig.get_paths()["stdlib"]
  chunks, total = [], 0
  for name in sorted(f for f in os.listdir(root) if f.endswith(".py")):
    with open(os.path.join(root, name), "rb") as f:
      data = f.read() + b"\0"
    chunks.append(data)
    total += len(data)
    if total >= max_bytes:
      break
  return np.frombuffer(b"".join(chunks)[:max_bytes], np.uint8)


class TextSource:
  """Windows of seq_len+1 bytes at multiples of `stride` inside one split of the corpus."""

  def __init__(self, data: np.ndarray, seq_len: int, stride: int, split: str):
    self.data, self.seq_len, self.stride = data, seq_len, stride
    self.info = {"vocab_size": 256, "seq_len": seq_len, "name": f"pytext/{split}", "num_bytes": len(data)}

  def __len__(self):
    return max((len(self.data) - self.seq_len - 1) // self.stride + 1, 0)

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(f"example {i} out of range for {len(self)} examples")
    start = i * self.stride
    return {"tokens": self.data[start:start + self.seq_len + 1].astype(np.int32)}


def make(split: str, arg: str | None = None):
  a = parse_nested_arg(arg, seq_len=256, stride=256, max_bytes=4_000_000)
  if a.seq_len < 1 or a.stride < 1:
    raise ValueError(f"pytext: seq_len and stride must be positive, got {a.seq_len}, {a.stride}")
  data = corpus_bytes(a.max_bytes)
  cut = int(len(data) * (1 - TEST_FRACTION))
  splits = {"train": data[:cut], "test": data[cut:]}
  if split not in splits:
    raise ValueError(f"data source 'pytext' has no split {split!r}; available: train, test")
  return TextSource(splits[split], a.seq_len, a.stride, split)
