"""HaloNet: ResNet-style backbones with blocked local self-attention with halos (timm's ByobNet HaloNets).

  python -m effjax.main --config configs/halonet.py:runlocal --workdir runs/halonet
  python -m effjax.main --config configs/halonet.py:variant=halonet26t,dataset=tfds:imagenet2012 --workdir runs/h26t

Arguments: variant (a timm name in effjax.models.halonet.VARIANTS: halonet_h1, halonet26t, sehalonet33ts,
halonet50ts, eca_halonext26ts), dataset, num_classes, runlocal (a two-stage HaloNet on the embedded MNIST subset
resized to 32×32: 8×8 maps after the stem, attention on 4×4 blocks with a halo of 1, then a stride-2 attention
block).

The ImageNet setting trains at 256×256 (timm's input size for these models; feature maps of 256/32 = 8 = the block
size in the last stage) with LAMB and a cosine schedule, in the manner of timm's "a1h" recipe.
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import halonet


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="halonet26t", dataset="tfds:imagenet2012", num_classes=1000, runlocal=False)
  if arg.variant not in halonet.VARIANTS:
    raise cfg.ConfigError(f"unknown HaloNet variant {arg.variant!r}; expected one of {sorted(halonet.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "halonet"
  c.model = ml_collections.ConfigDict(dict(num_classes=arg.num_classes, variant=arg.variant, drop_path_rate=0.05))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  norm = "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"   # timm's, so timm weights evaluate as is
  c.data.pp_train = ("inception_crop(size=256)", "flip", norm)
  c.data.pp_eval = ("center_crop(size=256,resize_small=269)", norm)   # timm's crop_pct 0.95
  c.batch_size = 2048
  c.total_epochs = 300.0
  c.optimizer.name = "lamb"
  c.optimizer.lr = 5e-3
  c.optimizer.weight_decay = 0.02
  c.optimizer.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, blocks=("ba", "a"), widths=(64, 128), strides=(1, 2), bottle_ratios=(0.25, 0.25),
        num_heads=(2, 4), block_size=4, halo_size=1, stem_width=16, drop_path_rate=0.0))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "resize(size=32)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("resize(size=32)", "normalize(mean=0.1307,std=0.3081)")
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
