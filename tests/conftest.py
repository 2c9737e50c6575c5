"""Test setup: 8 fake CPU devices, configured before JAX initialises its backend."""
import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=8"])

import jax  # noqa: E402
import pytest  # noqa: E402

from effjax import reference  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


@pytest.fixture
def golden():
  """Loads a golden file copied from ../shared/reference into tests/data (or shipped in effjax/reference for
  the notebooks): golden("crate_small")."""
  return load_golden


def golden_path(name):
  """tests/data/<name>.npz, or the packaged effjax/reference/<name>.npz."""
  local = os.path.join(DATA, f"{name}.npz")
  return local if os.path.exists(local) else reference.path(name)


def load_golden(name):
  import json

  import numpy as np
  d = np.load(golden_path(name))
  return {k: d[k] for k in d.files if k != "meta"}, json.loads(str(d["meta"]))
