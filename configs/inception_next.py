"""InceptionNeXt (timm inception_next_*).

  python -m effjax.main --config configs/inception_next.py:runlocal --workdir runs/inception_next
  python -m effjax.main --config configs/inception_next.py:variant=tiny,dataset=tfds:imagenet2012 --workdir runs/inx_t

Arguments: variant (atto, tiny, small, base), dataset, num_classes, drop_path (-1: the official value for the
variant, RECIPES), runlocal (two stages of a narrow InceptionNeXt on the embedded MNIST subset resized to 32×32:
8×8 then 4×4 maps).

The ImageNet-1K recipe of T/S/B in the InceptionNeXt paper (Yu et al., CVPR 2024, §4.1) and its official code
(sail-sg/inceptionnext: train.py defaults, a timm 0.6 fork, and scripts/inceptionnext/train_inceptionnext_*.sh);
each value's source is at the line setting it. Differences from the official run: timm steps the cosine schedule
once per epoch and adds 10 cool-down epochs at the minimum lr (--cooldown-epochs 10) starting warm-up from 1e-6;
effjax steps it per update over 300 epochs from 0. No EMA (the official scripts do not pass --model-ema).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import inception_next

# scripts/inceptionnext/train_inceptionnext_<variant>.sh DROP_PATH, decoded like model variants (atto's own 600-epoch
# recipe in its script is not reproduced: only its drop path is taken).
RECIPES = {"atto": dict(drop_path_rate=0.1), "tiny": dict(drop_path_rate=0.1), "small": dict(drop_path_rate=0.3),
           "base": dict(drop_path_rate=0.4)}

def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="tiny", dataset="tfds:imagenet2012", num_classes=1000, drop_path=-1.0,
                      runlocal=False)
  if arg.variant not in inception_next.VARIANTS:
    raise cfg.ConfigError(f"unknown InceptionNeXt variant {arg.variant!r}; expected one of "
                          f"{list(inception_next.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "inception_next"
  drop_path = RECIPES[arg.variant]["drop_path_rate"] if arg.drop_path < 0 else arg.drop_path
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, mlp_ratios=(4, 4, 4, 3),
      ls_init_value=1e-6,            # models/inceptionnext.py default
      drop_path_rate=drop_path))     # train_inceptionnext_*.sh DROP_PATH: 0.1 / 0.3 / 0.4 for T / S / B
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(
      label_smoothing=0.1,           # train.py --smoothing 0.1
      mixup_alpha=0.8,               # train.py --mixup 0.8
      cutmix_alpha=1.0))             # train.py --cutmix 1.0
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # timm create_transform as train.py calls it: random-resized crop 224 with random bilinear/bicubic interpolation
  # (--train-interpolation random), flip, RandAugment rand-m9-mstd0.5-inc1 (--aa; its geometric ops resample at
  # random too), ImageNet mean/std, random erasing 0.25 pixel mode (--reprob, --remode). Evaluation: the model's
  # default cfg, crop_pct 0.875 bicubic: shorter side 256, central 224.
  c.data.pp_train = ("inception_crop(size=224,method=random)", "flip",
                     "timm_randaugment(policy=rand-m9-mstd0.5-inc1,method=random)", train_config.IMAGENET_NORM,
                     "random_erasing(prob=0.25,mode=pixel)")
  c.data.pp_eval = ("center_crop(size=224,resize_small=256,method=bicubic)", train_config.IMAGENET_NORM)
  c.batch_size = 4096                # README / scripts: ALL_BATCH_SIZE=4096
  c.total_epochs = 300.0             # train.py --epochs 300
  c.optimizer.name = "adamw"         # scripts: --opt adamw
  c.optimizer.lr = 4e-3              # scripts: --lr 4e-3
  c.optimizer.weight_decay = 0.05    # train.py --weight-decay 0.05 (timm: not on 1-D params and biases)
  c.optimizer.warmup_epochs = 20.0   # scripts: --warmup-epochs 20
  c.optimizer.end_lr_factor = 1e-5 / 4e-3  # train.py --min-lr 1e-5
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, depths=(2, 2), widths=(32, 64), mlp_ratios=(4, 4), band_kernel_size=7, branch_ratio=0.125,
        ls_init_value=1e-6, drop_path_rate=0.0))
    c.optimizer.end_lr_factor = 0.0
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
