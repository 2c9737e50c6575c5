"""FasterNet (timm fasternet_*): partial-convolution (PConv) blocks.

  python -m effjax.main --config configs/fasternet.py:runlocal --workdir runs/fasternet
  python -m effjax.main --config configs/fasternet.py:variant=t0,dataset=tfds:imagenet2012 --workdir runs/fn_t0

Arguments: variant (t0, t1, t2, s, m, l), dataset, num_classes, runlocal (two stages of a narrow FasterNet on the
embedded MNIST subset resized to 32×32: 8×8 then 4×4 maps).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import fasternet


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="t0", dataset="tfds:imagenet2012", num_classes=1000, runlocal=False)
  if arg.variant not in fasternet.VARIANTS:
    raise cfg.ConfigError(f"unknown FasterNet variant {arg.variant!r}; expected one of "
                          f"{list(fasternet.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "fasternet"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, drop_path_rate=0.05))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # timm's ImageNet recipe: inception crop + flip, resize 256 + central 224 crop for evaluation, ImageNet mean/std
  c.data.pp_train = ("inception_crop(size=224)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)", train_config.IMAGENET_NORM)
  c.batch_size = 2048
  c.total_epochs = 300.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 4e-3
  c.optimizer.weight_decay = 0.005
  c.optimizer.warmup_epochs = 20.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, depths=(2, 2), width=32, feature_dim=256, act="gelu", drop_path_rate=0.0))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "resize(size=32)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("resize(size=32)", "normalize(mean=0.1307,std=0.3081)")
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
