"""Reads the timm golden files written by tests/data/make_timm_goldens.py (layout: see that script)."""
import json
import os

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def load(case, key):
  """(state dict, NHWC input, {output name: array (NHWC when 4-D)}, meta) of model `key` in <case>_timm.npz."""
  d = np.load(os.path.join(DATA, f"{case}_timm.npz"))
  meta = json.loads(str(d["meta"]))
  sd = {k[len(f"param/{key}/"):]: d[k] for k in d.files if k.startswith(f"param/{key}/")}
  outputs = {k[len(f"output/{key}/"):]: d[k] for k in d.files if k.startswith(f"output/{key}/")}
  outputs = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in outputs.items()}
  return sd, d[f"input/{key}"].transpose(0, 2, 3, 1), outputs, meta
