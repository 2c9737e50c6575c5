"""Config helpers: `file.py:key=value,...` arguments, the trainer's base config, durations, validation.

A config file defines `get_config(arg=None)`; `arg` is the text after the colon on the command line
(`configs/vit.py:runlocal,variant=S`). Every config starts from `base_config()`, which holds all keys the
trainer reads, so that a typo anywhere is caught by the locked ConfigDict.
"""
import ast
import difflib
import os

from ml_collections import ConfigDict


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
      raise ConfigError(f"unknown config argument {key!r}{_closest(key, defaults)}")
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


def _split_top_level(text: str) -> list[str]:
  """Splits on commas outside brackets: "a=(1,2),b" -> ["a=(1,2)", "b"]."""
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      items.append(text[start:i])
      start = i + 1
  return items + [text[start:]]


def _closest(key: str, valid) -> str:
  close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
  return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def closest_key(config: ConfigDict, dotted: str) -> str:
  """For an unknown dotted key, the one-line hint naming the closest valid key at that level."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if isinstance(node, ConfigDict) and part in node:
      node = node[part]
      continue
    prefix = ".".join(parts[:i])
    valid = list(node.keys()) if isinstance(node, ConfigDict) else []
    close = difflib.get_close_matches(part, valid, n=1, cutoff=0.5)
    if close:
      return f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    return f"valid keys{' under ' + prefix if prefix else ''}: {', '.join(sorted(valid))}"
  return ""


def base_config() -> ConfigDict:
  """Every key the trainer reads, with defaults. Configs fill in model/task/data and override."""
  c = ConfigDict()
  c.seed = 0
  c.model_name = ""                  # effjax/models/<model_name>.py, built as Model(**config.model)
  c.model = ConfigDict()
  c.task_name = "classification"     # effjax/tasks/<task_name>.py
  c.task = ConfigDict()
  c.evaluators = ("classification",) # effjax/evaluators/<name>.py, run every eval_every_steps
  c.evaluator = ConfigDict()         # evaluator options, e.g. evaluator.coding_rate.eps
  c.evals = ConfigDict()             # per-evaluation data and cadence, see effjax/data/pipeline.py:EVAL_KEYS

  c.data = ConfigDict()
  c.data.source = ""                 # name[:arg] of a module in effjax/data/sources, e.g. "tfds:cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.pp_train = ()               # ops on training examples, in order, e.g. ("random_crop(pad=2)", "normalize")
  c.data.pp_eval = ()                # ops on evaluation examples (deterministic only), e.g. ("normalize",)
  c.data.prefetch = 2                # batches prepared and put on the devices while steps run (0 = none)
  c.data.wait_warn_frac = 0.1        # warn once when more than this fraction of step time waits for data
  c.data.worker_count = 0            # grain worker processes (0 = in the main process)
  c.data.eval_examples = -1          # evaluate on the first N examples of the eval split (-1 = all)

  c.batch_size = 128                 # global batch size over all devices and hosts
  c.eval_batch_size = 256
  c.grad_accum_steps = 1             # micro-batches per update; batch_size must be divisible by it
  c.total_steps = -1                 # run length in steps; or set total_epochs instead
  c.total_epochs = -1.0
  c.compute_dtype = "float32"        # "bfloat16": bf16 compute, float32 params and optimizer state
  c.ema_decay = 0.0                  # > 0 keeps an EMA of params, used for evaluation

  c.optimizer = ConfigDict()
  c.optimizer.name = "adamw"         # adamw, sgd, lamb, lars, lion, kar3 (see effjax/optim.py)
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.momentum = 0.9         # sgd / lars
  c.optimizer.nesterov = False       # sgd
  c.optimizer.schedule = "warmup_cosine"  # warmup_cosine, warmup_linear, warmup_constant, warmup_rsqrt, constant
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.end_lr_factor = 0.0    # final lr as a fraction of the peak
  c.optimizer.grad_clip_norm = 0.0   # 0 disables global-norm clipping
  c.optimizer.decay_mask = "no_bias_norm"  # which params get weight decay: "all" or "no_bias_norm"
  c.optimizer.grad_noise_eta = 0.0   # annealed gradient noise σ_t² = η / (1 + t)^γ; 0 disables
  c.optimizer.grad_noise_gamma = 0.55

  c.mesh = (("data", -1),)           # (axis name, size) pairs; -1 takes the remaining devices
  c.sharding_rules = ((".*", "replicate"),)  # (param-path regex, "replicate" | "fsdp") first match wins

  c.log_every_steps = 10
  c.eval_every_steps = 500           # also evaluates at the end; -1: only at the end
  c.checkpoint_every_steps = 500     # also saves at the end
  c.keep_checkpoints = 3
  c.resume = ""                      # checkpoint dir to resume from when the workdir has none
  c.allow_config_change = False      # resume a checkpoint made with other config values (same state shapes)
  c.init_from = ConfigDict()
  c.init_from.path = ""              # checkpoint to fine-tune from (params only)
  c.init_from.skip = r"^head/"       # param-path regex left at its fresh init (e.g. a new head)
  c.progress_bar = True
  c.debug_nan_step = -1              # testing aid: inject a NaN into the loss at this step
  return c


def load_config_file(spec: str) -> ConfigDict:
  """Runs `get_config(arg)` of "path/to/file.py[:arg]"."""
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("effjax_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()


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
