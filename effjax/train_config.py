"""The trainer's config schema: `base_config()` holds every key effjax/train.py reads, with its default.

Every config file (configs/<name>.py) starts from it and fills in model, task and data, so that a typo anywhere
is caught by the locked ConfigDict (an unknown key is an error naming the closest valid one).
"""
from ml_collections import ConfigDict

# The ImageNet statistics timm's and the official models' weights expect, as a pp op.
IMAGENET_NORM = "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"


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
  c.optimizer.dcls_clamp = 0         # > 0: clamp DCLS tap positions to ±dcls_clamp // 2 after every update

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
  c.init_from.skip = r"^head/"       # param-path regex left at its fresh init (e.g. a new head)
  c.progress_bar = True
  return c
