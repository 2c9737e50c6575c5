"""ConvNeXt, and ConvNeXt with DCLS depthwise convolutions (`dcls=True`).

  python -m effjax.main --config configs/convnext.py:runlocal --workdir runs/convnext
  python -m effjax.main --config configs/convnext.py:runlocal,dcls=True --workdir runs/convnext_dcls
  python -m effjax.main --config configs/convnext.py:variant=tiny,dataset=tfds:imagenet2012 --workdir runs/cnx_t

Arguments: variant (timm's convnext_<variant>: atto ... large), dataset, num_classes, drop_path (-1: the paper's
value for the variant, RECIPES), ema (True: evaluate the EMA weights, as the official commands), dcls (replace
every 7×7 depthwise convolution with a DCLS convolution of `kernel_count` taps over a `dks`×`dks` kernel),
dcls_version ("gauss": ConvNeXt-dcls-Gauss of the DCLS-Gauss paper, 26 taps over 23×23, iso-parameter with
ConvNeXt; "v0": the first DCLS paper's bilinear ConvNeXt-dcls, 34 taps (S/B: 40) over 17×17), kernel_count and
dks (-1: the version's official value), runlocal (two stages of a narrow ConvNeXt on the embedded MNIST subset:
patch 2, 14×14 then 7×7 maps; with dcls, 8 taps over 7×7 kernels).

The ImageNet-1K recipe of the ConvNeXt paper (Liu et al. 2022, Appendix A.1, Table 5) and its official code
(facebookresearch/ConvNeXt main.py defaults, TRAINING.md commands); each value's source is at the line setting it.
Paper and code agree on every value used here.
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import convnext

# Per-variant recipe values (paper Table 5 / TRAINING.md `--drop_path`), decoded like model variants. Variants
# outside the paper's ImageNet-1K table (atto ... nano, trained by timm with other recipes) keep 0.1.
RECIPES = {"tiny": dict(drop_path_rate=0.1), "small": dict(drop_path_rate=0.4), "base": dict(drop_path_rate=0.5),
           "large": dict(drop_path_rate=0.5)}
# DCLS version -> (taps per variant, dilated kernel size): the official ConvNeXt-dcls models (Khalfaoui-Hassani et
# al., ICLR 2023, "Dilated convolution with learnable spacings": bilinear v0, 34 taps, 40 for S and B, over 17x17)
# and ConvNeXt-dcls-Gauss (the follow-up DCLS-Gauss paper: 26 taps over 23x23). As the official ConvNeXt-dcls
# (models/convnext_dcls.py, optim_factory.py, engine.py): positions shared by the blocks of a stage, no weight decay
# and 5x the learning rate on them, DCLS weights ~ trunc N(0, 0.02) with zero bias, and the repulsion between a
# kernel's taps (utils.get_dcls_loss_rep) squared and added to the loss after epoch 20 (convnext.param_penalty).
DCLS = {"gauss": ({"tiny": 26}, 23), "v0": ({"tiny": 34, "small": 40, "base": 40}, 17)}

def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="tiny", dataset="tfds:imagenet2012", num_classes=1000, drop_path=-1.0, ema=True,
                      dcls=False, dcls_version="gauss", kernel_count=-1, dks=-1, runlocal=False)
  if arg.variant not in convnext.VARIANTS:
    raise cfg.ConfigError(f"unknown ConvNeXt variant {arg.variant!r}; expected one of {list(convnext.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "convnext"
  if arg.dcls_version not in DCLS:
    raise cfg.ConfigError(f"unknown dcls_version {arg.dcls_version!r}; expected one of {list(DCLS)}")
  taps, dks = DCLS[arg.dcls_version]
  taps = taps.get(arg.variant, taps["tiny"]) if arg.kernel_count < 0 else arg.kernel_count
  dks = dks if arg.dks < 0 else arg.dks
  dcls = dict(kernel_count=taps, dilated_kernel_size=dks, version=arg.dcls_version,
              shared_positions=True,     # convnext_dcls.py: one P per stage, given to every block's dwconv
              init_std=0.02,             # convnext_dcls.py _init_weights: trunc_normal_(std=.02), bias 0
              repulsion_after_epoch=20) if arg.dcls else None  # engine.py: loss + loss_rep ** 2 if epoch > 20
  drop_path = RECIPES.get(arg.variant, dict(drop_path_rate=0.1))["drop_path_rate"] if arg.drop_path < 0 else \
      arg.drop_path
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=4, kernel_size=7,
      ls_init_value=1e-6,            # main.py --layer_scale_init_value 1e-6 (paper §2.6)
      drop_path_rate=drop_path,      # Table 5: 0.1 / 0.4 / 0.5 / 0.5 for T / S / B / L
      dcls=dcls))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(
      label_smoothing=0.1,           # Table 5; main.py --smoothing 0.1
      mixup_alpha=0.8,               # Table 5; main.py --mixup 0.8
      cutmix_alpha=1.0))             # Table 5; main.py --cutmix 1.0 (switch prob 0.5: one of the two per batch)
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # datasets.py build_transform -> timm create_transform: random-resized crop 224 (scale 0.08-1) with bicubic
  # (--train_interpolation bicubic), flip, RandAugment rand-m9-mstd0.5-inc1 (--aa, Table 5 "RandAugment (9, 0.5)"),
  # ImageNet mean/std, random erasing 0.25 in pixel mode (--reprob, --remode; Table 5). Colour jitter is off when
  # RandAugment is on (timm). Evaluation: shorter side 256 (crop_pct 0.875) bicubic, central 224 crop.
  c.data.pp_train = ("inception_crop(size=224,method=bicubic)", "flip",
                     "timm_randaugment(policy=rand-m9-mstd0.5-inc1,method=bicubic)", train_config.IMAGENET_NORM,
                     "random_erasing(prob=0.25,mode=pixel)")
  c.data.pp_eval = ("center_crop(size=224,resize_small=256,method=bicubic)", train_config.IMAGENET_NORM)
  c.batch_size = 4096                # Table 5; TRAINING.md: 4 nodes x 8 GPUs x 128
  c.total_epochs = 300.0             # Table 5; main.py --epochs 300
  c.ema_decay = 0.9999 if arg.ema else 0.0  # TRAINING.md --model_ema true --model_ema_eval true, decay 0.9999
  c.optimizer.name = "adamw"         # Table 5: AdamW, betas (0.9, 0.999), eps 1e-8 (main.py defaults)
  c.optimizer.lr = 4e-3              # Table 5; main.py --lr 4e-3 (for batch 4096)
  c.optimizer.weight_decay = 0.05    # Table 5; main.py --weight_decay 0.05; not on 1-D params and biases
  c.optimizer.warmup_epochs = 20.0   # Table 5; main.py --warmup_epochs 20, linear per step, then cosine
  c.optimizer.end_lr_factor = 1e-6 / 4e-3  # main.py --min_lr 1e-6
  c.optimizer.dcls_clamp = dks if arg.dcls else 0
  if arg.dcls:  # optim_factory.py: P in group "no_decay_dcls" (wd 0, every other >1-D param decayed); engine.py: lr x5
    c.optimizer.decay_mask = "re:(kernel|weight|sig)$"
    c.optimizer.lr_scale = "re:(dcls_p|/p)$=5"
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    dcls = dict(kernel_count=8, dilated_kernel_size=7, version="gauss") if arg.dcls else None
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, depths=(2, 2), widths=(32, 64), patch_size=2, kernel_size=7, ls_init_value=1e-6,
        drop_path_rate=0.0, dcls=dcls))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.ema_decay = 0.0
    c.optimizer.end_lr_factor = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.dcls_clamp = 7 if arg.dcls else 0
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
