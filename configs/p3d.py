"""P3D ResNet (pseudo-3D residual networks: P3D-A/B/C blocks cycled over a bottleneck ResNet) on video clips.

  python -m effjax.main --config configs/p3d.py:runlocal --workdir runs/p3d
  python -m effjax.main --config configs/p3d.py:variant=p3d199 --workdir runs/p3d199

Arguments: variant (p3d63, p3d131, p3d199), dataset (a source of clips {"image": [T, H, W, C]}; the default is the
paper's 16-frame 160×160 input built from the embedded moving MNIST digits), num_classes, runlocal (three P3D
blocks, one of each kind A, B, C, of a narrow P3D ResNet on 8-frame 32×32 moving-digit clips: 8×8, 4×4 and 2×2
maps). Volumes [D, H, W, C] go through the same model: the first axis is then depth.
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import p3d


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="p3d199", dataset="moving_digits:frames=16;size=160", num_classes=10,
                      runlocal=False)
  if arg.variant not in p3d.VARIANTS:
    raise cfg.ConfigError(f"unknown P3D ResNet variant {arg.variant!r}; expected one of {list(p3d.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "p3d"
  c.model = ml_collections.ConfigDict(dict(num_classes=arg.num_classes, variant=arg.variant, dropout_rate=0.5))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict()
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "test"
  c.data.pp_train = ("normalize(mean=0.5,std=0.5)",)
  c.data.pp_eval = ("normalize(mean=0.5,std=0.5)",)
  c.batch_size = 128
  c.total_epochs = 30.0
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 1.0
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(num_classes=10, layers=(1, 1, 1), width=16, dropout_rate=0.0))
    c.data.source = "moving_digits:frames=8;size=32"
    c.data.pp_train = ("normalize(mean=0.1307,std=0.3081)",)
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 64
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 600
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
  return c
