"""Bottleneck ResNets as timm builds them: ECA-ResNet, ResNet-RS, and ResNets with cSE / sSE / scSE gates.

  python -m effjax.main --config configs/resnet.py:runlocal --workdir runs/ecaresnet
  python -m effjax.main --config configs/resnet.py:runlocal,gate=scse --workdir runs/scse_resnet
  python -m effjax.main --config configs/resnet.py:variant=resnetrs50,dataset=tfds:imagenet2012 --workdir runs/rs50

Arguments: variant (a timm name in effjax.models.resnet.VARIANTS: ecaresnet26t/50d/50t/101d/200d/269d/light,
resnetrs50 ... resnetrs420), gate (overrides the variant's gate: eca, se = cse, sse, scse, or "none"), dataset,
num_classes, runlocal (a two-stage ECA-ResNet with a deep stem on the embedded MNIST subset).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.layers.squeeze_excite import GATES
from effjax.models import resnet


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="ecaresnet50d", gate="", dataset="tfds:imagenet2012", num_classes=1000,
                      runlocal=False)
  if arg.variant not in resnet.VARIANTS:
    raise cfg.ConfigError(f"unknown ResNet variant {arg.variant!r}; expected one of {sorted(resnet.VARIANTS)}")
  if arg.gate and arg.gate != "none" and arg.gate not in GATES:
    raise cfg.ConfigError(f"unknown gate {arg.gate!r}; expected one of {sorted(GATES)} or 'none'")
  c = train_config.base_config()
  c.model_name = "resnet"
  model = dict(num_classes=arg.num_classes, variant=arg.variant, drop_path_rate=0.05)
  if arg.runlocal:  # a two-stage ECA-ResNet with a deep stem
    model = dict(num_classes=10, layers=(1, 1), widths=(16, 32), stem_width=16, stem_type="deep",
                 replace_stem_pool=False, avg_down=True, gate="eca", drop_path_rate=0.0)
  if arg.gate:
    model["gate"] = "" if arg.gate == "none" else arg.gate
  c.model = ml_collections.ConfigDict(model)
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # timm's ImageNet recipe: inception crop + flip, resize 256 + central 224 crop for evaluation, ImageNet mean/std
  c.data.pp_train = ("inception_crop(size=224)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)", train_config.IMAGENET_NORM)
  c.batch_size = 1024
  c.total_epochs = 350.0
  c.optimizer.name = "sgd"
  c.optimizer.lr = 1.6
  c.optimizer.weight_decay = 4e-5
  c.optimizer.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
