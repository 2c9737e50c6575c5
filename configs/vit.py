"""ViT baseline.

  python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit
  python -m effjax.main --config configs/vit.py:variant=S,dataset=tfds:imagenet2012 --workdir runs/vit_s

Arguments: variant (Ti/S/B/L: the standard ViT sizes of effjax/models/vit.py), patch, dataset (a data source name),
runlocal (the quick CPU run on the embedded MNIST subset: >93% test accuracy in a few minutes).
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="Ti", patch=16, dataset="tfds:imagenet2012", num_classes=1000,
                      runlocal=False)
  c = train_config.base_config()
  c.model_name = "vit"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=arg.patch, dropout=0.0, pool="cls",
      remat="none"))
  c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # big_vision's ImageNet recipe: inception crop + flip for training, resize 256 + central 224 crop for evaluation.
  c.data.pp_train = ("inception_crop(size=224)", "flip", "normalize(mean=0.5,std=0.5)")
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)", "normalize(mean=0.5,std=0.5)")
  c.batch_size = 1024
  c.total_epochs = 300.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:  # a small ViT on the embedded 5,000-image MNIST subset, a few minutes on a CPU
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=128, dropout=0.0,
        pool="gap", remat="none"))
    c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1500
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
