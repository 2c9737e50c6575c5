"""D-Former 3-D segmentation (Wu et al., 2022).

  python -m effjax.main --config configs/dformer.py:runlocal --workdir runs/dformer_local
  python -m effjax.main --config configs/dformer.py:dataset=synapse,root=/data/Synapse --workdir runs/dformer_synapse
  python -m effjax.main --config configs/dformer.py:dataset=acdc,root=/data/ACDC --workdir runs/dformer_acdc

Arguments: dataset (synapse | acdc), root (a folder with imagesTr/ and labelsTr/ NIfTI files, see
effjax/data/sources/nifti.py), runlocal (a small D-Former on synthetic ellipsoid volumes, CPU minutes).
The architecture is the reference's (embed 96, depths 2-2-6-2, heads 3-6-12-24, patch (2, 4, 4), group
(2, 8, 8), intervals 8-4-2-1: 50.6 M parameters with 14 classes). The training recipe is the nnU-Net /
nnFormer one the reference code plugs into (nnU-Net v1 nnUNetTrainerV2: SGD with Nesterov momentum 0.99, lr 0.01,
weight decay 3e-5, poly(0.9) decay to 0 over 1000 epochs of 250 iterations, gradient clipping at 12, batch 2,
Dice + CE with deep supervision on the two heads the reference returns); it was not checked against the paper's
text, and the crop sizes are the ones commonly used with these datasets. nnU-Net steps the poly schedule once
per epoch, lr·(1 − epoch/1000)^0.9; effjax per iteration. Not reproduced yet: nnU-Net's patch sampling with
foreground oversampling, its 3-D augmentation, sliding-window inference and the standard Synapse 18/12 split
(the nifti source crops at random and evaluates on centre crops).
"""
import ml_collections

from effjax import config as cfg, train_config

DATASETS = {  # crop [D, H, W], classes incl. background, intensity normalisation of the NIfTI source
    "synapse": ((64, 128, 128), 14, "ct"),
    "acdc": ((16, 160, 160), 4, "zscore"),
}


def get_config(arg=None):
  arg = cfg.parse_arg(arg, dataset="synapse", root="", runlocal=False)
  if arg.dataset not in DATASETS:
    raise cfg.ConfigError(f"unknown D-Former dataset {arg.dataset!r}; expected one of {list(DATASETS)}")
  crop, num_classes, norm = DATASETS[arg.dataset]
  c = train_config.base_config()
  c.model_name = "dformer"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=num_classes, in_channels=1, width=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
      patch_size=(2, 4, 4), group_size=(2, 8, 8), intervals=(8, 4, 2, 1), mlp_ratio=4.0, drop_path_rate=0.1,
      deep_supervision=True, fidelity="official", remat="none"))
  c.task_name = "segmentation"
  # The reference returns only the full- and half-resolution heads; its quarter head gets no loss.
  c.task = ml_collections.ConfigDict(dict(ce_weight=1.0, dice_weight=1.0, deep_supervision_weights=(1.0, 0.5, 0.0),
                                          dice_include_background=False))
  c.evaluators = ("dice",)
  c.evaluator = ml_collections.ConfigDict(dict(dice=dict(png_volumes=2)))
  c.data.source = f"nifti:root={arg.root};crop={'x'.join(map(str, crop))};norm={norm};classes={num_classes}"
  c.data.train_split, c.data.eval_split = "train", "test"
  c.batch_size = 2
  c.eval_batch_size = 2
  c.total_epochs = -1.0
  c.total_steps = 250 * 1000  # 1000 epochs of 250 iterations
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.99
  c.optimizer.nesterov = True        # nnUNetTrainerV2: torch.optim.SGD(..., nesterov=True)
  c.optimizer.weight_decay = 3e-5
  c.optimizer.schedule = "warmup_poly"  # nnUNetTrainerV2: poly_lr(epoch, max_num_epochs, 0.01, 0.9)
  c.optimizer.grad_clip_norm = 12.0
  c.log_every_steps = 50
  c.eval_every_steps = 25_000
  c.checkpoint_every_steps = 5_000

  if arg.runlocal:  # a small D-Former on 16x32x32 synthetic ellipsoid volumes (3 object classes)
    c.model = ml_collections.ConfigDict(dict(
        num_classes=4, in_channels=1, width=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
        patch_size=(2, 4, 4), group_size=(2, 8, 8), intervals=(8, 4, 2, 1), mlp_ratio=4.0, drop_path_rate=0.0,
        deep_supervision=True, fidelity="official", remat="none"))
    c.task.deep_supervision_weights = (1.0, 0.5, 0.25)
    c.data.source = "ellipsoids:depth=16;height=32;width=32;classes=3;objects=3;noise=0.1;train=512;test=16"
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 1200
    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 50
    c.optimizer.grad_clip_norm = 1.0
    c.log_every_steps = 25
    c.eval_every_steps = 400
    c.checkpoint_every_steps = 400
  return c
