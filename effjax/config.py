"""The config language: `path/to/file.py:key=value,...` and the one-line ConfigError.

A config file defines `get_config(arg=None)`; `arg` is the text after the colon on the command line
(`configs/vit.py:runlocal,variant=S`), parsed by `parse_arg` against the file's defaults. A component chosen by
name with an argument of its own inside a config argument (a data source, `synthetic:size=8;channels=1`)
separates its items with `;`, since `,` already separates the config's: `parse_nested_arg`.

This module knows nothing of the trainer: the trainer's keys are in effjax/train_config.py, the command line's
`--config.a.b=...` check in effjax/config_overrides.py.
"""
import ast
import difflib
import importlib.util
import os

from ml_collections import ConfigDict

NESTED_SEPARATOR = ";"


class ConfigError(ValueError):
  """A config that cannot run; the message is one line naming the problem."""


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """Parses `key=value,flag` into a ConfigDict of `defaults` updated by the string.

  A bare `flag` means `flag=True`. Values are Python literals when they parse as such, else strings;
  a value must have the type of its default (ints are accepted for floats). An unknown key is a
  ConfigError naming the closest known key.
  """
  result = ConfigDict(defaults)
  for item in _split_top_level(arg or ""):
    item = item.strip()
    if not item:
      continue
    key, _, text = item.partition("=")
    key = key.strip()
    value = _parse_value(text.strip()) if _ else True
    if key not in defaults:
      close = closest(key, defaults)
      hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(sorted(defaults))}"
      raise ConfigError(f"unknown config argument {key!r}; {hint}")
    default = defaults[key]
    if default is not None and not isinstance(value, type(default)):
      if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      elif isinstance(default, str):
        value = str(value)
      else:
        raise ConfigError(f"config argument {key}={text!r}: expected {type(default).__name__}")
    result[key] = value
  return result


def parse_nested_arg(arg: str | None, **defaults) -> ConfigDict:
  """`parse_arg` for an argument nested in a config argument, whose items are separated by `;`: "a=1;b"."""
  return parse_arg((arg or "").replace(NESTED_SEPARATOR, ","), **defaults)


def _split_top_level(text: str) -> list[str]:
  """Splits on commas outside brackets: "a=(1,2),b" -> ["a=(1,2)", "b"]."""
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      items.append(text[start:i])
      start = i + 1
  return items + [text[start:]]


def closest(key: str, valid) -> str | None:
  """The valid key most similar to an unknown `key` (difflib ratio >= 0.5), or None."""
  close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
  return close[0] if close else None


def load_config_file(spec: str) -> ConfigDict:
  """Runs `get_config(arg)` of "path/to/file.py[:arg]"."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("effjax_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()
