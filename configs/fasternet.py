"""FasterNet (timm fasternet_*): partial-convolution (PConv) blocks.

  python -m effjax.main --config configs/fasternet.py:runlocal --workdir runs/fasternet
  python -m effjax.main --config configs/fasternet.py:variant=t0,dataset=tfds:imagenet2012 --workdir runs/fn_t0

Arguments: variant (t0, t1, t2, s, m, l), dataset, num_classes, runlocal (two stages of a narrow FasterNet on the
embedded MNIST subset resized to 32×32: 8×8 then 4×4 maps).

The ImageNet-1K recipe of the official code (JierunChen/FasterNet cfg/fasternet_<variant>.yaml), per variant in
RECIPES (decoded like model variants): AdamW, 300 epochs, 20 warm-up epochs, cosine to min_lr 1e-5, label
smoothing 0.1, bicubic training interpolation, no colour jitter, no random erasing, Mixup/CutMix switched per batch,
evaluation with test_crop_ratio 0.9 (shorter side 224 / 0.9, central 224), progressive resolution: random-resized
crops of 192 px before epoch 280 and 224 px after (yaml multi_scale "192_280"; data/custom_imagenet_data.py switches
the whole training transform at that epoch, as config.data.pp_train_schedule does). Difference: timm steps its
cosine per epoch from warmup_lr 1e-6; effjax per update from 0.
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import fasternet

# cfg/fasternet_<variant>.yaml: lr (for the batch in its comment), batch, weight_decay, drop_path_rate, aa, mixup.
RECIPES = {
    "t0": dict(lr=4e-3, batch=4096, weight_decay=0.005, drop_path_rate=0.0, randaugment="", mixup=0.05),
    "t1": dict(lr=4e-3, batch=4096, weight_decay=0.01, drop_path_rate=0.02, randaugment="rand-m3-mstd0.5-inc1",
               mixup=0.1),
    "t2": dict(lr=4e-3, batch=4096, weight_decay=0.02, drop_path_rate=0.05, randaugment="rand-m5-mstd0.5-inc1",
               mixup=0.1),
    "s": dict(lr=4e-3, batch=4096, weight_decay=0.03, drop_path_rate=0.1, randaugment="rand-m7-mstd0.5-inc1",
              mixup=0.3),
    "m": dict(lr=2e-3, batch=2048, weight_decay=0.05, drop_path_rate=0.2, randaugment="rand-m7-mstd0.5-inc1",
              mixup=0.5),
    "l": dict(lr=2e-3, batch=2048, weight_decay=0.05, drop_path_rate=0.3, randaugment="rand-m7-mstd0.5-inc1",
              mixup=0.7),
}

def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="t0", dataset="tfds:imagenet2012", num_classes=1000, runlocal=False)
  if arg.variant not in fasternet.VARIANTS:
    raise cfg.ConfigError(f"unknown FasterNet variant {arg.variant!r}; expected one of "
                          f"{list(fasternet.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "fasternet"
  r = RECIPES[arg.variant]
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, drop_path_rate=r["drop_path_rate"]))  # yaml drop_path_rate
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(
      label_smoothing=0.1,           # yaml smoothing
      mixup_alpha=r["mixup"],        # yaml mixup
      cutmix_alpha=1.0))             # yaml cutmix 1.0, mixup_switch_prob 0.5
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # timm create_transform: random-resized crop (bicubic: yaml train_interpolation), flip, RandAugment (yaml aa),
  # ImageNet mean/std; evaluation: shorter side int(224 / 0.9) = 248 (yaml test_crop_ratio), central 224.
  randaug = (f"timm_randaugment(policy={r['randaugment']},method=bicubic)",) if r["randaugment"] else ()
  train_ops = lambda size: (f"inception_crop(size={size},method=bicubic)", "flip", *randaug, train_config.IMAGENET_NORM)
  c.data.pp_train = train_ops(224)                     # yaml image_size
  c.data.pp_train_schedule = ((280.0, train_ops(192)),)  # yaml multi_scale "192_280": 192 px before epoch 280
  c.data.pp_eval = ("center_crop(size=224,resize_small=248,method=bicubic)", train_config.IMAGENET_NORM)
  c.batch_size = r["batch"]          # yaml: "lr ... for bs=<batch>"
  c.total_epochs = 300.0             # yaml epochs
  c.optimizer.name = "adamw"         # yaml opt
  c.optimizer.lr = r["lr"]           # yaml lr
  c.optimizer.weight_decay = r["weight_decay"]  # yaml weight_decay (timm: not on 1-D params and biases)
  c.optimizer.warmup_epochs = 20.0   # yaml warmup_epochs
  c.optimizer.end_lr_factor = 1e-5 / r["lr"]  # yaml min_lr
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, depths=(2, 2), width=32, feature_dim=256, act="gelu", drop_path_rate=0.0))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.optimizer.end_lr_factor = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "resize(size=32)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_train_schedule = ()
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
