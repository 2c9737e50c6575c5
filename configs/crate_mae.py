"""CRATE-MAE: masked-autoencoder pre-training with the white-box encoder/decoder, and a quick CPU run.

  python -m effjax.main --config configs/crate_mae.py:variant=B --workdir runs/crate_mae_b
  python -m effjax.main --config configs/crate_mae.py:runlocal --workdir runs/crate_mae_mnist

Arguments: variant (T/S/B/L: mae_crate_tiny/small/base/large), patch, dataset, runlocal.
Task: mask ratio 0.75, MSE on the removed patches (effjax/tasks/mae.py). Evaluation: masked/visible MSE
and a PNG of reconstructions (evaluators/reconstruction.py), and the encoder's coding rate and sparsity.
Optimiser: the MAE pre-training recipe the official CRATE-MAE code builds on (AdamW, b2 0.95, weight decay
0.05, lr = 1.5e-4 · batch/256, 40 warm-up epochs, cosine, 800 epochs, batch 4096).
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B", patch=16, dataset="tfds:imagenet2012", batch=4096, runlocal=False)
  c = train_config.base_config()
  c.model_name = "crate_mae"
  c.model = ml_collections.ConfigDict(dict(variant=arg.variant, patch_size=arg.patch, lmbda=0.5, remat="none"))
  c.task_name = "mae"
  c.task = ml_collections.ConfigDict(dict(mask_ratio=0.75, norm_pix_loss=False, eval_seed=0))
  c.evaluators = ("reconstruction", "coding_rate")
  c.evaluator.coding_rate = ml_collections.ConfigDict(dict(max_examples=256, per_head=False))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  # MAE main_pretrain.py: RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) + flip, ImageNet mean/std;
  # evaluation as MAE's fine-tuning eval: shorter side 256 (bicubic), central 224 crop.
  c.data.pp_train = ("inception_crop(size=224,area_min=0.2,method=bicubic)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=224,resize_small=256,method=bicubic)", train_config.IMAGENET_NORM)
  c.batch_size = arg.batch
  c.total_epochs = 800.0
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.lr = 1.5e-4 * arg.batch / 256
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_epochs = 40.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:  # small CRATE-MAE on the embedded MNIST subset (7x7 patches of 4x4 pixels)
    c.model = ml_collections.ConfigDict(dict(patch_size=4, width=64, depth=2, num_heads=4, decoder_depth=2,
                                             lmbda=0.5, remat="none"))
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.data.eval_examples = 400
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 500
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
  return c
