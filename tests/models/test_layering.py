"""Layering: a model module imports layers, kernels and weights, never another model module (parsed with ast)."""
import ast
import os

import pytest

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "effjax", "models")


def model_imports(source: str) -> list[str]:
  """The effjax.models modules that `source` (a module inside effjax/models/) imports, in any spelling."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if a.name.startswith("effjax.models")]
    elif isinstance(node, ast.ImportFrom):
      base = ".".join(["effjax", "models"][:3 - node.level]) if node.level else ""   # relative to effjax/models/
      module = ".".join(p for p in (base, node.module) if p)
      if module == "effjax.models":
        found += [f"effjax.models.{a.name}" for a in node.names]
      elif module.startswith("effjax.models."):
        found.append(module)
  return found


@pytest.mark.parametrize("source,expected", [
    ("from effjax.models import crate", ["effjax.models.crate"]),
    ("from effjax.models.resnet import stem", ["effjax.models.resnet"]),
    ("import effjax.models.dformer as d", ["effjax.models.dformer"]),
    ("from . import vit", ["effjax.models.vit"]),
    ("from .crate import MSSA", ["effjax.models.crate"]),
    ("from ..models.resnet import stem", ["effjax.models.resnet"]),
    ("def f():\n  from effjax.models import fit\n", ["effjax.models.fit"]),
    ("from effjax.layers import crate\nimport effjax.weights.mapping", []),
])
def test_model_imports_finds_every_spelling(source, expected):
  assert model_imports(source) == expected


def test_no_model_module_imports_another_model():
  files = sorted(f for f in os.listdir(MODELS) if f.endswith(".py"))
  assert "resnet.py" in files and "halonet.py" in files
  offenders = {}
  for name in files:
    with open(os.path.join(MODELS, name), encoding="utf-8") as f:
      if imports := model_imports(f.read()):
        offenders[name] = imports
  assert not offenders, f"model modules importing other models (move the shared code to layers/ or weights/): " \
                        f"{offenders}"
