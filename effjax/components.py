"""Components chosen by name: `load("models", "vit")` imports `effjax.models.vit`.

There is no central import table: a component is a module in the right package, so adding an
architecture means adding `effjax/models/<name>.py`, never editing a registry.
"""
import difflib
import importlib
import pkgutil

KINDS = ("models", "tasks", "evaluators", "data.sources")


def available(kind: str) -> list[str]:
  """Names of the modules of one kind, e.g. available("models") -> ["crate", "vit", ...]."""
  package = importlib.import_module(f"effjax.{kind}")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def load(kind: str, name: str):
  """Imports `effjax.<kind>.<name>`; an unknown name is a ValueError naming the closest ones."""
  if kind not in KINDS:
    raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
  names = available(kind)
  if name not in names:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {kind.split('.')[-1][:-1]} {name!r}.{hint} Available: {', '.join(names)}")
  return importlib.import_module(f"effjax.{kind}.{name}")
