"""The command line's `--config.a.b=value` overrides, checked before absl parses them.

ml_collections' config flag rejects an override that names no key of the (locked) config with a traceback;
`check_overrides` runs the config file itself first and turns the first such override into one line naming
the closest valid key, which effjax/main.py prints before exiting.
"""
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


def check_overrides(argv) -> str | None:
  """One-line error for the first `--config.a.b=...` that names no key of the config, else None."""
  spec, overrides = None, []
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      overrides.append(arg[len("--config."):].split("=", 1)[0])
  if spec is None:
    return None
  try:
    config = load_config_file(spec)
  except (ConfigError, ValueError) as e:
    return str(e).splitlines()[0]
  for key in overrides:
    hint = closest_key(config, key)
    if hint:
      return f"unknown config key 'config.{key}'; {hint}"
  return None
