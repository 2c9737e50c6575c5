"""FIT image classifier: patches grouped into windows, FIT encoder, head on the mean of the latents.

  python -m effjax.main --config configs/fit.py:runlocal --workdir runs/fit_mnist
  python -m effjax.main --config configs/fit.py:res=448,dataset=tfds:imagenet2012 --workdir runs/fit_in448

Arguments: res (image side; patch 16, windows of 7×7 patches, so (res/112)² groups), layers,
grouping ("window" or "strided"), dataset, runlocal (embedded MNIST subset: 28×28 in 2×2 patches,
4 groups of 7×7 patches; a few minutes on a CPU). Metric: eval/accuracy.
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, res=224, layers="(2)2(2)2(2)2(2)", grouping="window", dataset="tfds:imagenet2012",
                      num_classes=1000, remat="none", runlocal=False)
  if arg.res % 112:
    raise cfg.ConfigError(f"res={arg.res} must be a multiple of 112 (patch 16 x window 7)")
  c = train_config.base_config()
  c.model_name = "fit"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, layers=arg.layers, patch_size=16, group_size=7, grouping=arg.grouping,
      latents_per_group=16, width=512, latent_width=768, num_heads=8, latent_num_heads=12, mlp_ratio=4,
      drop_path_rate=0.1, drop_units=0.0, remat=arg.remat))
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # The standard ImageNet pre-processing at `res`: inception crop + flip; shorter side to res/0.875, central crop.
  c.data.pp_train = (f"inception_crop(size={arg.res})", "flip", "normalize(mean=0.5,std=0.5)")
  c.data.pp_eval = (f"center_crop(size={arg.res},resize_small={arg.res * 8 // 7})", "normalize(mean=0.5,std=0.5)")
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

  if arg.runlocal:
    c.model.update(dict(num_classes=10, layers="(1)2(1)", patch_size=2, group_size=7, latents_per_group=4,
                        width=64, latent_width=64, num_heads=2, latent_num_heads=4, mlp_ratio=2, drop_path_rate=0.0))
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 64
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 500
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = -1
    c.checkpoint_every_steps = 500
  return c
