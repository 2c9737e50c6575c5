"""Writes the exact tested set: the installed versions of effjax's dependency closure (every extra included).

  python requirements/freeze.py > requirements/lock.txt

Run it with the interpreter of the environment the suite passed in (`.venv/bin/python`). It walks the
requirements of pyproject.toml and, recursively, of every installed distribution they name (markers
evaluated for this interpreter), and prints `name==version` of each, sorted. The README's commands and
.ci/run install with `pip install -c requirements/lock.txt ...`: the lock is a set of constraints, so a
package it does not list (a dependency added since) still installs, at its newest compatible version.
"""
import importlib.metadata
import os
import re
import sys
import tomllib

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canonical(name):
  return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements):
  """{canonical name: installed version} of `requirements` and everything they require; warns about the
  ones that are not installed."""
  found, todo = {}, [(Requirement(r), ()) for r in requirements]
  while todo:
    requirement, extras = todo.pop()
    if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras or ("",)):
      continue
    name = canonical(requirement.name)
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      print(f"# not installed: {requirement}", file=sys.stderr)
      continue
    new_extras = set(requirement.extras) - set(found.get(name, (None, set()))[1])
    if name in found and not new_extras:
      continue
    found[name] = (dist.version, found.get(name, (None, set()))[1] | set(requirement.extras))
    todo += [(Requirement(r), tuple(requirement.extras)) for r in dist.requires or ()]
  return {name: version for name, (version, _) in found.items()}


def main():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  requirements = list(project["dependencies"])
  for extra in project.get("optional-dependencies", {}).values():
    requirements += extra
  print("# The exact tested set (Python %d.%d, Linux x86_64); regenerate: python requirements/freeze.py > "
        "requirements/lock.txt" % sys.version_info[:2])
  for name, version in sorted(closure(requirements).items()):
    print(f"{name}=={version}")


if __name__ == "__main__":
  main()
