"""pyproject.toml's ranges and requirements/lock.txt's tested set agree."""
import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lock():
  with open(os.path.join(ROOT, "requirements", "lock.txt")) as f:
    pairs = [line.strip().split("==") for line in f if line.strip() and not line.startswith("#")]
  return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_every_range_holds_its_locked_version():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  requirements = [Requirement(r) for r in project["dependencies"]]
  requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
  lock = _lock()
  outside = [f"{r} (locked {lock[canonicalize_name(r.name)]})" for r in requirements
             if canonicalize_name(r.name) in lock
             and not r.specifier.contains(lock[canonicalize_name(r.name)], prereleases=True)]
  assert not outside, f"locked versions outside pyproject.toml's ranges: {outside}"
  assert {"jax", "jaxlib", "numpy", "flax"} <= set(lock)  # the lock holds the stack, not an empty file


def test_ranges_admit_newer_releases():
  """A library declares ranges: no `==` pins in pyproject.toml (those belong in the lock)."""
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
  pinned = [r for r in requirements if any(s.operator in ("==", "===") for s in Requirement(r).specifier)]
  assert not pinned
