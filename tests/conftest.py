"""Test setup: 8 fake CPU devices, configured before JAX initialises its backend."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=8"])

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


@pytest.fixture
def golden():
  """Loads a golden file copied from ../shared/reference into tests/data: golden("crate_small")."""
  import json

  import numpy as np

  def load(name):
    d = np.load(os.path.join(DATA, f"{name}.npz"))
    return {k: d[k] for k in d.files if k != "meta"}, json.loads(str(d["meta"]))
  return load
