"""HaloNet: ResNet-style backbones with blocked local self-attention with halos (timm's ByobNet HaloNets).

  python -m effjax.main --config configs/halonet.py:runlocal --workdir runs/halonet
  python -m effjax.main --config configs/halonet.py:variant=halonet26t,dataset=tfds:imagenet2012 --workdir runs/h26t

Arguments: variant (a timm name in effjax.models.halonet.VARIANTS: halonet_h1, halonet26t, sehalonet33ts,
halonet50ts, eca_halonext26ts), dataset, num_classes, runlocal (a two-stage HaloNet on the embedded MNIST subset
resized to 32×32: 8×8 maps after the stem, attention on 4×4 blocks with a halo of 1, then a stride-2 attention
block).

The ImageNet setting is timm's "a1h" recipe of the released halonet26t / halonet50ts weights: the ResNet strikes
back A1 procedure (Wightman et al. 2021, Table 1: LAMB lr 5e-3, weight decay 0.01, batch 2048, 600 epochs, 5 warm-up
epochs + cosine, BCE with target threshold 0.2 and no label smoothing, Mixup 0.2 / CutMix 1.0, RandAugment
rand-m7-mstd0.5-inc1, stochastic depth 0.05, repeated augmentation) at timm's input size for these models, 256 px
("h"; feature maps of 256/32 = 8 = the block size in the last stage), bicubic; evaluation at the variant's
crop_pct (timm byoanet.py default_cfgs).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import halonet

# timm byoanet.py default_cfgs crop_pct (0.95 unless set).
CROP_PCT = {"sehalonet33ts": 0.94, "halonet50ts": 0.94, "eca_halonext26ts": 0.94}

def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="halonet26t", dataset="tfds:imagenet2012", num_classes=1000, runlocal=False)
  if arg.variant not in halonet.VARIANTS:
    raise cfg.ConfigError(f"unknown HaloNet variant {arg.variant!r}; expected one of {sorted(halonet.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "halonet"
  c.model = ml_collections.ConfigDict(dict(num_classes=arg.num_classes, variant=arg.variant,
                                           drop_path_rate=0.05))  # RSB A1: stochastic depth 0.05
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(
      loss="bce", bce_target_thresh=0.2,  # RSB A1: BCE, targets binarised at 0.2
      label_smoothing=0.0,                # RSB A1: no label smoothing
      mixup_alpha=0.2, cutmix_alpha=1.0))  # RSB A1
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  norm = "normalize(mean=(0.485,0.456,0.406),std=(0.229,0.224,0.225))"   # timm's, so timm weights evaluate as is
  c.data.pp_train = ("inception_crop(size=256,method=bicubic)", "flip",
                     "timm_randaugment(policy=rand-m7-mstd0.5-inc1,method=bicubic)", norm)  # RSB A1 RandAugment
  crop_pct = CROP_PCT.get(arg.variant, 0.95)
  c.data.pp_eval = (f"center_crop(size=256,resize_small={int(256 / crop_pct)},method=bicubic)", norm)
  c.data.repeated_augmentation = 3   # RSB A1: repeated augmentation (timm --aug-repeats 3)
  c.batch_size = 2048                # RSB A1
  c.total_epochs = 600.0             # RSB A1
  c.optimizer.name = "lamb"          # RSB A1
  c.optimizer.lr = 5e-3              # RSB A1
  c.optimizer.weight_decay = 0.01    # RSB A1
  c.optimizer.warmup_epochs = 5.0    # RSB A1
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, blocks=("ba", "a"), widths=(64, 128), strides=(1, 2), bottle_ratios=(0.25, 0.25),
        num_heads=(2, 4), block_size=4, halo_size=1, stem_width=16, drop_path_rate=0.0))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.data.repeated_augmentation = 1
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
