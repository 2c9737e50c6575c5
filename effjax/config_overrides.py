"""One line for what goes wrong while absl parses the command line, where the config file runs (once).

ml_collections' config flag runs `--config file.py:arg` and applies the `--config.a.b=value` overrides inside
absl's flag parsing; a failure there comes out as an exception with a traceback in its message (or, for an
override naming no key of the locked config, a bare AttributeError). effjax/main.py catches it where the flags
are parsed and prints `flag_error(...)`: the config file's own error, the bad flag value, or the closest valid
key of an unknown override (only then is the config file run again, to name that key).
"""
import os

from absl import flags
from ml_collections import ConfigDict

from effjax.config import ConfigError, closest, load_config_file


def closest_key(config: ConfigDict, dotted: str) -> str:
  """For an unknown dotted key, the one-line hint naming the closest valid key at that level ("" if it exists)."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if isinstance(node, ConfigDict) and part in node:
      node = node[part]
      continue
    prefix = ".".join(parts[:i])
    valid = list(node.keys()) if isinstance(node, ConfigDict) else []
    close = closest(part, valid)
    if close:
      return f"did you mean '{prefix + '.' if prefix else ''}{close}'?"
    return f"valid keys{' under ' + prefix if prefix else ''}: {', '.join(sorted(valid))}"
  return ""


def _overrides(argv):
  """The dotted keys of the `--config.a.b=...` arguments, in order."""
  return [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]


def _first_line(error):
  return (str(error).splitlines() or [""])[0]


def _config_spec(argv):
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def flag_error(error, argv) -> str:
  """The one-line message for `error`, raised while absl parsed `argv`."""
  if isinstance(error, flags.Error) and not str(error).startswith("flag --config="):  # a bad value of another flag
    return _first_line(error)
  path = (_config_spec(argv) or "").split(":", 1)[0]
  if path and not os.path.isfile(path):
    return f"config file {path} not found"
  root = error  # the config file's own error, under ml_collections' and absl's wrappers
  while root.__cause__ is not None or root.__context__ is not None:
    root = root.__cause__ or root.__context__
  if isinstance(error, AttributeError) and isinstance(root, KeyError) and _config_spec(argv):  # an unknown override
    config = load_config_file(_config_spec(argv))
    for key in _overrides(argv):
      hint = closest_key(config, key)
      if hint:
        return f"unknown config key 'config.{key}'; {hint}"
  if isinstance(root, ConfigError):
    return _first_line(root)
  return f"config file: {type(root).__name__}: {_first_line(root)}"
