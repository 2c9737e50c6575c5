"""Dilated ViT: D-Former's local-window + dilated-group stages as a 2-D image classifier.

  python -m effjax.main --config configs/dformer_dilated_vit.py:runlocal --workdir runs/dilated_vit_mnist
  python -m effjax.main --config configs/dformer_dilated_vit.py:dataset=tfds:cifar10,image=32 --workdir runs/dvit_c10

Arguments: dataset (a data source name), image (input side, for the group geometry), num_classes, runlocal
(MNIST subset: 28×28 → 14×14 tokens of 2×2 pixels, local windows of 7×7 and dilated groups of 7×7
members with stride 2, then patch merging to 7×7 tokens where both patterns cover the whole grid).
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, dataset="tfds:cifar10", image=32, num_classes=10, runlocal=False)
  c = train_config.base_config()
  c.model_name = "dilated_vit"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, patch_size=(2, 2), width=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
      group_size=(4, 4), intervals=(1, 1, 1, 1), mlp_ratio=4.0, drop_path_rate=0.1, remat="none"))
  if arg.image % 16:
    raise cfg.ConfigError(f"image={arg.image}: four stages of patch 2 need a side divisible by 16")
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.evaluators = ("classification",)
  c.data.source = arg.dataset
  c.data.augment = ("random_crop(pad=4)", "flip")
  c.data.preprocess = ("normalize(mean=0.5,std=0.25)",)
  c.batch_size = 256
  c.total_epochs = 100.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 5.0
  c.optimizer.grad_clip_norm = 1.0

  if arg.runlocal:
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, patch_size=(2, 2), width=32, depths=(2, 2), num_heads=(2, 4), group_size=(7, 7),
        intervals=(1, 1), mlp_ratio=2.0, drop_path_rate=0.0, remat="none"))
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.augment = ("random_crop(pad=2)",)
    c.data.preprocess = ("normalize(mean=0.1307,std=0.3081)",)
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
