"""Test setup: 8 fake CPU devices, configured before JAX initialises its backend, and a persistent compilation cache.

The cache (JAX_COMPILATION_CACHE_DIR, default tmp/jax_cache under the repository, ignored by git) keeps every
compiled program, however small and fast to compile: a model that several tests train, or a test run again, is
compiled once. The settings go through the environment so that the subprocesses the tests start (the command line,
the soak script) share the cache. EFFJAX_CPU_ONEDNN=0 compiles the trainer's steps without the oneDNN options
(effjax/runtime.py): with them an executable cannot be serialised, so no step would be cached
(tests/test_runtime.py compiles with them).
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA:CPU's older loop emitters instead of its MLIR fusion emitters: the same programs compile in about two thirds of
# the time (a tiny ConvNeXt's train step 1.59 -> 0.87 s, Terminator's 7.8 -> 5.5 s), and the suite compiles far more
# than it runs.
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=8", "--xla_cpu_use_fusion_emitters=false"])
# CPU only, also in the subprocesses: with the tpu extra installed (CI installs it for tests/test_aot.py, which
# reaches libtpu through jax.experimental.topologies) JAX would otherwise probe for a TPU at start-up.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, "tmp", "jax_cache"))
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ.setdefault("EFFJAX_CPU_ONEDNN", "0")
# XLA's LLVM back end at optimisation level 0: the suite's programs are compiled once and run a few steps on tiny
# shapes, so compile time dominates (about a third less CPU time for the model tests). Summation orders can differ
# from optimised code in the last bits, which float32 tolerances must allow for.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

from effjax import reference  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # if jax came in earlier
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
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


def pytest_collection_modifyitems(items):
  """Files holding a `slow` test run first, each file's tests kept together and in order: with `pytest -n 2` (and
  pyproject's `--dist loadscope`: each worker takes whole files) the long files start at once and the short ones
  fill the end, so that the two workers finish together."""
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)
