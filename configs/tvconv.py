"""MobileNetV2 with TVConv depthwise convolutions (translation-variant, layout-aware), or the plain MobileNetV2.

  python -m effjax.main --config configs/tvconv.py:runlocal --workdir runs/tvconv
  python -m effjax.main --config configs/tvconv.py:runlocal,tvconv=False --workdir runs/tvconv_plain
  python -m effjax.main --config configs/tvconv.py:variant=x1_0,dataset=tfds:imagenet2012 --workdir runs/tvconv_x1

Arguments: variant (width multiplier of the official MobileNetV2: x0_1, x0_2, x0_3, x0_5, x1_0), dataset,
num_classes, tvconv (False: plain 3×3 depthwise convolutions), runlocal (three stages of a small TVConv MobileNetV2
on the embedded MNIST subset at 28×28: 28×28, 14×14 and 7×7 affinity maps, a one-hidden-layer width-16 generator).
TVConv is tied to one input size: the full config brings every image to the official 96×96 and trains with the
official face-recognition recipe (SGD, lr 0.1, weight decay 5e-4, 38 epochs) on the dataset given (the paper's
CASIA-WebFace is not in TFDS).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import tvconv


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="x1_0", dataset="tfds:imagenet2012", num_classes=1000, tvconv=True,
                      runlocal=False)
  if arg.variant not in tvconv.VARIANTS:
    raise cfg.ConfigError(f"unknown TVConv MobileNetV2 variant {arg.variant!r}; expected one of "
                          f"{list(tvconv.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "tvconv"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, tvconv=arg.tvconv, dropout_rate=0.0))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict()
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  c.data.pp_train = ("inception_crop(size=96)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=96,resize_small=110)", train_config.IMAGENET_NORM)
  c.batch_size = 512  # the official face-recognition recipe: SGD 0.1, weight decay 5e-4, 38 epochs, batch 512
  c.total_epochs = 38.0
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_epochs = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)), stem_width=16, last_width=128,
        tvconv=arg.tvconv, tvconv_hidden=16, tvconv_hidden_layers=1, dropout_rate=0.0))
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    # no random crop: TVConv is layout-aware, each position keeps its own kernel
    c.data.pp_train = ("normalize(mean=0.1307,std=0.3081)",)
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
