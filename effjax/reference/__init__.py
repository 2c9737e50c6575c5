"""Golden reference files shipped with the package (small; produced by the official code, see
tests/data and the reference README for the layout): what the notebooks show, loadable anywhere.

  arrays, meta = reference.load("crate_small")   # official CRATE params, inputs and outputs
  weights.read(reference.path("crate_small"))     # the params only, as an official weights file
"""
import importlib.resources
import json

import numpy as np


def path(name: str) -> str:
  """File path of the packaged reference file `name` (e.g. "crate_small")."""
  resource = importlib.resources.files(__name__) / f"{name}.npz"
  if not resource.is_file():
    available = sorted(p.name[:-4] for p in importlib.resources.files(__name__).iterdir() if p.name.endswith(".npz"))
    raise ValueError(f"no packaged reference file {name!r}; available: {', '.join(available)}")
  return str(resource)


def load(name: str):
  """({key: array} without "meta", meta dict) of the packaged reference file `name`."""
  with np.load(path(name)) as data:
    return {k: data[k] for k in data.files if k != "meta"}, json.loads(str(data["meta"]))
