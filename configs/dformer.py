"""D-Former 3-D segmentation (Wu et al., 2022).

  python -m effjax.main --config configs/dformer.py:runlocal --workdir runs/dformer_local
  python -m effjax.main --config configs/dformer.py:dataset=synapse,root=/data/Synapse --workdir runs/dformer_synapse
  python -m effjax.main --config configs/dformer.py:dataset=acdc,root=/data/ACDC --workdir runs/dformer_acdc

Arguments: dataset (synapse | acdc), root (a folder with imagesTr/ and labelsTr/ NIfTI files, see
effjax/data/sources/nifti.py), runlocal (a small D-Former on synthetic ellipsoid volumes, CPU minutes).
The architecture is the reference's (embed 96, depths 2-2-6-2, heads 3-6-12-24, patch (2, 4, 4), group
(2, 8, 8), intervals 8-4-2-1: 50.6 M parameters with 14 classes). The training recipe is the nnU-Net v1 one the
reference code plugs into (nnUNetTrainerV2, as nnFormer's nnFormerTrainerV2_nnformer_synapse.py runs it): SGD with
Nesterov momentum 0.99, lr 0.01, weight decay 3e-5, poly(0.9) decay to 0 over 1000 epochs of 250 iterations,
gradient clipping at 12, batch 2, Dice + CE with deep supervision on the two heads the reference returns; random
patches of the crop size from whole volumes with foreground oversampling, rotation (±30°) and scaling (0.7-1.4),
noise, blur, brightness, contrast, low resolution, gamma and mirroring along every axis (effjax/data/volume.py);
evaluation by sliding windows (step 0.5 of a patch, Gaussian weighting, mirroring along every axis,
effjax/evaluators/_sliding_window.py) over whole volumes; Synapse on its standard 18 / 12 split (nifti
split=synapse, nnFormer's dataset_json/Synapse.json). It was not checked against the paper's text, and the crop
sizes are the ones commonly used with these datasets. Differences from nnU-Net: it steps the poly schedule once
per epoch, lr·(1 − epoch/1000)^0.9, effjax per iteration; its spatial transform reads from a larger patch (effjax
rotates within the patch: zero corners); test volumes are
centre-cropped / zero-padded to one `eval_crop` size (DATASETS; an assumed bound on the prepared volumes, not
checked on the data: raise it if your volumes are larger), not kept at their own size; no resampling
(prepare the volumes at a common spacing as nnU-Net does).
"""
import ml_collections

from effjax import config as cfg, train_config

DATASETS = {  # patch [D, H, W], evaluated volume size, classes incl. background, NIfTI normalisation, split
    "synapse": ((64, 128, 128), "224x512x512", 14, "ct", "synapse"),
    "acdc": ((16, 160, 160), "32x256x256", 4, "zscore", "fraction"),
}


def get_config(arg=None):
  arg = cfg.parse_arg(arg, dataset="synapse", root="", runlocal=False)
  if arg.dataset not in DATASETS:
    raise cfg.ConfigError(f"unknown D-Former dataset {arg.dataset!r}; expected one of {list(DATASETS)}")
  crop, eval_crop, num_classes, norm, split = DATASETS[arg.dataset]
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
  # nnUNetTrainerV2.validate: sliding window with step_size 0.5, Gaussian weighting, do_mirroring over axes (0, 1, 2)
  c.evaluator = ml_collections.ConfigDict(dict(dice=dict(png_volumes=2, patch_size=crop, step_size=0.5,
                                                         mirror_axes=(0, 1, 2))))
  c.data.source = (f"nifti:root={arg.root};crop=full;eval_crop={eval_crop};norm={norm};classes={num_classes};"
                   f"split={split}")
  size = "(" + ",".join(map(str, crop)) + ")"
  c.data.pp_train = (
      # DataLoader3D with oversample_foreground_percent 0.33: at batch 2 the second example of every batch is a
      # foreground patch, i.e. half of them (effjax draws per example)
      f"patch3d(size={size},foreground=0.5)",
      # nnUNetTrainerV2.setup_DA_params: rotations ±30° about each axis (p_rot 0.2), scale_range (0.7, 1.4) (p 0.2)
      "spatial3d(p_rot=0.2,angle=(-30.0,30.0),p_scale=0.2,scale_min=0.7,scale_max=1.4)",
      # get_moreDA_augmentation's fixed transforms, in its order
      "noise3d(p=0.1,variance=(0.0,0.1))",                        # GaussianNoiseTransform
      "blur3d(p=0.2,sigma=(0.5,1.0),p_per_channel=0.5)",          # GaussianBlurTransform
      "brightness3d(p=0.15,multiplier=(0.75,1.25))",              # BrightnessMultiplicativeTransform
      "contrast3d(p=0.15,factor=(0.75,1.25))",                    # ContrastAugmentationTransform
      "lowres3d(p=0.25,zoom=(0.5,1.0),p_per_channel=0.5)",        # SimulateLowResolutionTransform
      "gamma3d(p=0.1,gamma=(0.7,1.5),invert=True,retain_stats=True)",  # GammaTransform, inverted
      "gamma3d(p=0.3,gamma=(0.7,1.5),invert=False,retain_stats=True)",  # GammaTransform: p_gamma 0.3
      "mirror3d(axes=(0,1,2),p=0.5)",                             # default_3D_augmentation_params: mirror_axes
  )
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
    c.data.pp_train = ()
    c.evaluator.dice = ml_collections.ConfigDict(dict(png_volumes=2))
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
