"""ConvNeXt, and ConvNeXt with DCLS depthwise convolutions (`dcls=True`).

  python -m effjax.main --config configs/convnext.py:runlocal --workdir runs/convnext
  python -m effjax.main --config configs/convnext.py:runlocal,dcls=True --workdir runs/convnext_dcls
  python -m effjax.main --config configs/convnext.py:variant=tiny,dataset=tfds:imagenet2012 --workdir runs/cnx_t

Arguments: variant (timm's convnext_<variant>: atto ... large), dataset, num_classes, dcls (replace every 7×7
depthwise convolution with a DCLS-Gauss convolution of `kernel_count` taps over a `dks`×`dks` kernel),
kernel_count, dks, runlocal (two stages of a narrow ConvNeXt on the embedded MNIST subset: patch 2, 14×14 then
7×7 maps; with dcls, 8 taps over 7×7 kernels).
"""
import ml_collections

from effjax import config as cfg, train_config
from effjax.models import convnext


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="tiny", dataset="tfds:imagenet2012", num_classes=1000, dcls=False,
                      kernel_count=26, dks=17, runlocal=False)
  if arg.variant not in convnext.VARIANTS:
    raise cfg.ConfigError(f"unknown ConvNeXt variant {arg.variant!r}; expected one of {list(convnext.VARIANTS)}")
  c = train_config.base_config()
  c.model_name = "convnext"
  dcls = dict(kernel_count=arg.kernel_count, dilated_kernel_size=arg.dks, version="gauss") if arg.dcls else None
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=4, kernel_size=7,
      ls_init_value=1e-6, drop_path_rate=0.1, dcls=dcls))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # timm's ImageNet recipe: inception crop + flip, resize 256 + central 224 crop for evaluation, ImageNet mean/std
  c.data.pp_train = ("inception_crop(size=224)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)", train_config.IMAGENET_NORM)
  c.batch_size = 4096
  c.total_epochs = 300.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 4e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 20.0
  c.optimizer.dcls_clamp = arg.dks if arg.dcls else 0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    dcls = dict(kernel_count=8, dilated_kernel_size=7, version="gauss") if arg.dcls else None
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, depths=(2, 2), widths=(32, 64), patch_size=2, kernel_size=7, ls_init_value=1e-6,
        drop_path_rate=0.0, dcls=dcls))
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
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
