"""The trainer's config schema and its validation, in one place.

`base_config()` holds every key effjax/train.py reads, with its default. Every config file (configs/<name>.py)
starts from it and fills in model, task and data, so that a typo anywhere is caught by the locked ConfigDict (an
unknown key is an error naming the closest valid one). `validate` checks types, ranges and combinations before
anything is built, `check_data` what needs the data source, and `eval_spec` gives each evaluation its own data
config (config.evals.<name>, EVAL_KEYS): the data pipeline receives only that slice.
"""
import copy
import math

import jax.numpy as jnp
from ml_collections import ConfigDict, config_dict

from effjax import components
from effjax.config import ConfigError

# The ImageNet statistics timm's and the official models' weights expect, as a pp op.
IMAGENET_NORM = "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
  c.evals = ConfigDict()             # per-evaluation data and cadence, see EVAL_KEYS below

  c.data = ConfigDict()
  c.data.source = ""                 # name[:arg] of a module in effjax/data/sources, e.g. "tfds:cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.pp_train = ()               # ops on training examples, in order, e.g. ("random_crop(pad=2)", "normalize")
  c.data.pp_train_schedule = ()      # progressive resolution: ((until_epoch, pp_train), ...) used in order before
  #                                    pp_train, whole batches switching, e.g. ((280, (<192 px ops>)),) (FasterNet)
  c.data.pp_eval = ()                # ops on evaluation examples (deterministic only), e.g. ("normalize",)
  c.data.prefetch = 2                # batches prepared and put on the devices while steps run (0 = none)
  c.data.wait_warn_frac = 0.1        # warn once when more than this fraction of step time waits for data
  c.data.worker_count = 0            # grain worker processes (0 = in the main process)
  c.data.repeated_augmentation = 1   # > 1: each epoch shows N/R records R times, differently augmented
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
  c.optimizer.layer_decay = 1.0      # < 1: layer-wise lr decay (BEiT / MAE), see effjax/optim.py
  c.optimizer.lr_scale = ""          # "re:<regex>=<factor>": those params' updates x factor (effjax/optim.py)
  c.optimizer.dcls_clamp = 0         # > 0: DCLS positions kept within ±dcls_clamp // 2 (convnext.param_constraint)

  c.mesh = (("data", -1),)           # (axis name, size) pairs; -1 takes the remaining devices
  c.sharding_rules = ((".*", "replicate"),)  # (param-path regex, "replicate" | "fsdp") first match wins

  c.log_every_steps = 10
  c.eval_every_steps = 500           # also evaluates at the end; -1: only at the end
  c.checkpoint_every_steps = 500     # also saves at the end
  c.keep_checkpoints = 3
  c.resume = ""                      # checkpoint dir to resume from when the workdir has none
  c.allow_config_change = False      # resume a checkpoint made with other config values (same state shapes)
  c.init_from = ConfigDict()
  c.init_from.path = ""              # effjax checkpoint dir or official weights file (effjax.weights) to fine-tune from
  c.init_from.skip = config_dict.placeholder(str)  # param-path regex left at its fresh init; None: the model's HEAD
  c.init_from.allow_unused = False   # True: params of the file that the model does not have are ignored, not an error
  c.progress_bar = True
  return c


def token_reduction() -> ConfigDict:
  """config.model.reduction of the transformer classifiers (ViT, CRATE, CRATE-α; effjax/layers/token_reduction.py):
  method "none" | "tome" (r tokens merged per layer, inflection of ToMe's schedule) | "diffrate" (prune_keep and
  merge_keep: per-layer kept tokens, class token included). Validated when the model is built."""
  return ConfigDict(dict(method="none", r=0, inflection=0.0, prune_keep=config_dict.placeholder(tuple),
                         merge_keep=config_dict.placeholder(tuple)))


# config.evals.<name> keys -> the config.data key each replaces (None: not a data key). Missing keys take
# the defaults: type = the evaluation's name (effjax/evaluators/<type>.py), the config.data values, and
# every_steps = config.eval_every_steps (-1: only at the end).
EVAL_KEYS = {"type": None, "source": "source", "split": "eval_split", "pp": "pp_eval", "examples": "eval_examples",
             "every_steps": None}


def eval_spec(config, name):
  """(evaluator type, data config, every_steps) of evaluation `name`: config.evals.<name> over the defaults."""
  spec = dict(config.evals.get(name, {}))
  unknown = sorted(set(spec) - set(EVAL_KEYS))
  if unknown:
    raise ConfigError(f"config.evals.{name}: unknown key(s) {unknown}; valid: {sorted(EVAL_KEYS)}")
  data = copy.deepcopy(config.data)
  for key, data_key in EVAL_KEYS.items():
    if data_key and key in spec:
      data[data_key] = spec[key]
  return spec.get("type", name), data, spec.get("every_steps", config.eval_every_steps)


def validate(config, num_devices):
  """Checks types and combinations that can be checked without data; raises ConfigError (one line)."""
  def need(cond, message):
    if not cond:
      raise ConfigError(message)
  need(config.model_name, "config.model_name is empty; set it to a module of effjax/models, e.g. 'vit'")
  for name in config.evals:
    need(name in config.evaluators, f"config.evals.{name} is not listed in config.evaluators {config.evaluators}")
  for kind, name in [("models", config.model_name), ("tasks", config.task_name)] + [
      ("evaluators", eval_spec(config, e)[0]) for e in config.evaluators]:
    try:
      components.load(kind, name)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  need((config.total_steps > 0) != (config.total_epochs > 0),
       f"set exactly one of config.total_steps ({config.total_steps}) and config.total_epochs "
       f"({config.total_epochs}) to a positive value")
  need(config.grad_accum_steps >= 1, f"config.grad_accum_steps must be >= 1, got {config.grad_accum_steps}")
  need(config.batch_size % config.grad_accum_steps == 0,
       f"batch_size {config.batch_size} is not divisible by grad_accum_steps {config.grad_accum_steps}")
  micro = config.batch_size // config.grad_accum_steps
  need(micro % num_devices == 0,
       f"batch size {micro} (per micro-batch) is not divisible by the number of devices ({num_devices})")
  need(config.eval_batch_size % num_devices == 0,
       f"eval_batch_size {config.eval_batch_size} is not divisible by the number of devices ({num_devices})")
  need(config.compute_dtype in COMPUTE_DTYPES,
       f"config.compute_dtype {config.compute_dtype!r} must be one of {list(COMPUTE_DTYPES)}")
  need(0.0 <= config.ema_decay < 1.0, f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
  need(config.log_every_steps > 0, f"config.log_every_steps must be positive, got {config.log_every_steps}")
  need(config.data.eval_examples != 0, "config.data.eval_examples=0 leaves nothing to evaluate; use -1 (all) or N > 0")
  need(config.init_from.path == "" or config.resume == "",
       "set at most one of config.resume and config.init_from.path")
  check_numbers(config)


def check_schema(config):
  """The config holds every key of the trainer's schema (a config file returning a plain dict, or one not built
  on effjax.base_config(), would fail deep inside the trainer)."""
  def missing(schema, node, prefix):
    for key, value in schema.items():
      if not hasattr(node, "keys") or key not in node:
        return prefix + key
      if isinstance(value, ConfigDict) and key != "model":
        found = missing(value, node[key], f"{prefix}{key}.")
        if found:
          return found
    return None
  key = missing(base_config(), config, "")
  if key:
    raise ConfigError(f"the config has no key {key!r}: get_config() must return the ConfigDict of "
                      f"effjax.base_config() with its fields filled in")


# (dotted key, lowest allowed value, bound it must stay below or None): each value must lie in [low, high)
_RANGES = (("batch_size", 1, None), ("eval_batch_size", 1, None), ("checkpoint_every_steps", 1, None),
           ("keep_checkpoints", 1, None), ("optimizer.lr", 0.0, None), ("optimizer.weight_decay", 0.0, None),
           ("optimizer.b1", 0.0, 1.0), ("optimizer.b2", 0.0, 1.0), ("optimizer.momentum", 0.0, 1.0),
           ("optimizer.warmup_steps", 0, None), ("optimizer.warmup_epochs", 0.0, None),
           ("optimizer.end_lr_factor", 0.0, None), ("optimizer.grad_clip_norm", 0.0, None),
           ("optimizer.grad_noise_eta", 0.0, None), ("data.worker_count", 0, None), ("data.prefetch", 0, None))


def check_numbers(config):
  """Every float in the config is finite, and the trainer's numeric keys lie in their ranges."""
  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, ConfigDict):
        walk(value, f"{prefix}{key}.")
        continue
      for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
          raise ConfigError(f"config.{prefix}{key} is {value}; it must be a finite number")
  walk(config, "")
  for key, low, high in _RANGES:
    node = config
    for part in key.split("."):
      node = node[part]
    if node < low or (high is not None and node >= high):
      raise ConfigError(f"config.{key}={node} is out of range; it must be in [{low}, {high or 'inf'})")


def check_data(config, info):
  """The config agrees with what the data source reports (`info`, e.g. its number of classes)."""
  want = config.model.get("num_classes")
  have = info.get("num_classes")
  if want is not None and have is not None and want != have:
    raise ConfigError(f"config.model.num_classes={want} but data source {config.data.source!r} has {have} classes")
