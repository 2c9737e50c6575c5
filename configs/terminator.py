"""Terminator (HyperZ·Z·W slow-fast network) on pixel-level 1D and 2D image classification.

  python -m effjax.main --config configs/terminator.py:dataset=smnist,runlocal --workdir runs/term_smnist
  python -m effjax.main --config configs/terminator.py:dataset=pmnist,runlocal --workdir runs/term_pmnist
  python -m effjax.main --config configs/terminator.py:dataset=cifar10 --workdir runs/term_cifar10

Arguments:
  dataset   smnist, pmnist (1D, full MNIST via tfds), scifar10 (1D, 1024 RGB pixels), cifar10, cifar100 (2D)
  stats     "batch" (official: batch statistics at evaluation too; the default) or "accumulated"
            (running statistics, per-example evaluation; the runlocal default); see
            effjax/layers/hyperzzw_norms.py
  runlocal  a small 1D/2D Terminator on the embedded 5,000-image MNIST subset (pMNIST uses the fixed
            permutation of smnist:permuted), a few minutes on a CPU.

Paper/official settings: Kar3 (no weight decay) with lr, β and norm penalty per dataset (OPTIMIZER below), batch 64,
100 epochs, cosine schedule with 8 warm-up epochs, label smoothing 0.09, channel dropout
(0, 0.05, 0.05, 0.05, 0.05); CIFAR: 5 SFNE blocks, 3→12→36→72→144→288 channels.
"""
import ml_collections

from effjax import config as cfg, train_config

DATASETS = {  # source, eval split, classes, data_dim, expansions (first block from the input channels)
    "smnist": ("smnist:base=tfds:mnist", "test", 10, 1, (12, 3, 2, 2, 2)),
    "pmnist": ("smnist:permuted,base=tfds:mnist", "test", 10, 1, (12, 3, 2, 2, 2)),
    "scifar10": ("smnist:base=tfds:cifar10", "test", 10, 1, (4, 3, 2, 2, 2)),
    "cifar10": ("tfds:cifar10", "test", 10, 2, (4, 3, 2, 2, 2)),
    "cifar100": ("tfds:cifar100", "test", 100, 2, (4, 3, 2, 2, 2)),
}
# dataset -> (lr, (β1, β2), norm penalty l2_reg): the official README's training commands (hyperevolnet/Terminator
# README.md): CIFAR-100 `optimizer.lr=0.00120925 optimizer.l2_reg=0.00004 optimizer.betas="[0.75, 0.99]"` (commit
# 2797123f); CIFAR-10 `optimizer.lr=0.001215 optimizer.l2_reg=0.00005 optimizers.betas=[0.5, 0.95]` (the earlier
# README versions, kept in the fork lalalune/Terminator). The 1D datasets have no official command: CIFAR-10's.
OPTIMIZER = {"cifar100": (0.00120925, (0.75, 0.99), 4e-5)}
CIFAR10_OPTIMIZER = (0.001215, (0.5, 0.95), 5e-5)


def get_config(arg=None):
  arg = cfg.parse_arg(arg, dataset="cifar10", stats="", runlocal=False)
  if arg.dataset not in DATASETS:
    raise cfg.ConfigError(f"unknown Terminator dataset {arg.dataset!r}; expected one of {list(DATASETS)}")
  source, eval_split, num_classes, data_dim, expansions = DATASETS[arg.dataset]
  lr, betas, l2_reg = OPTIMIZER.get(arg.dataset, CIFAR10_OPTIMIZER)
  c = train_config.base_config()
  c.model_name = "terminator"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=num_classes, expansions=expansions, skips=((), (), (0,), (1,), (2, 1)),
      global_layers=(3, 2, 2, 2, 2), dropout=(0.0, 0.05, 0.05, 0.05, 0.05), norm_groups=12,
      stats_mode=arg.stats or "batch", stats_momentum=0.9, remat="none",
      branch=ml_collections.ConfigDict(dict(omega_0=2000.0, local_sizes=(3, 9, 5, 7), impl="auto"))))
  c.task_name = "terminator"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.09, slow_loss_weight=1.0, l2_reg=l2_reg,
                                          slow_factor=1e-6))
  c.data.source = source
  c.data.train_split, c.data.eval_split = "train", eval_split
  # Official datamodules/cifar10.py (CIFAR-10 and CIFAR-100 alike): RandomCrop(32, padding=4,
  # padding_mode="symmetric") + flip, then Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)).
  norm = "normalize(mean=(0.4914,0.4822,0.4465),std=(0.2470,0.2435,0.2616))" if data_dim == 2 else \
      "normalize(mean=0.5,std=0.5)"
  c.data.pp_eval = (norm,)
  c.data.pp_train = (("random_crop(pad=4,mode=symmetric)", "flip") if data_dim == 2 else ()) + c.data.pp_eval
  c.batch_size = 64
  c.eval_batch_size = 64
  c.total_epochs = 100.0
  c.optimizer.name = "kar3"
  c.optimizer.lr = lr
  c.optimizer.b1, c.optimizer.b2 = betas
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_epochs = 8.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000

  if arg.runlocal:  # two or three small SFNE blocks on the embedded MNIST subset
    c.data.source = {1: "smnist", 2: "mnist5k"}[data_dim] + (":permuted" if arg.dataset == "pmnist" else "")
    if arg.dataset not in ("smnist", "pmnist", "cifar10"):
      raise cfg.ConfigError("runlocal is defined for dataset=smnist, pmnist (1D) and cifar10 (2D on MNIST)")
    c.data.eval_split = "test"
    c.data.pp_train = c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.model.num_classes = 10
    c.model.expansions = (12, 2)
    c.model.skips = ((), ())
    c.model.global_layers = (2, 2)
    c.model.dropout = (0.0, 0.05)
    c.model.stats_mode = arg.stats or "accumulated"
    c.model.branch.update(dict(global_hidden=32, local_hidden=16, channel_hidden=16,
                               interact_channel_hidden=8, interact_spatial_hidden=32, omega_0=30.0))
    c.batch_size = 32
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 400
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 30
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 400
  return c
