"""CRATE classifier (white-box transformer), the official ImageNet-1K training command and a quick CPU run.

  python -m effjax.main --config configs/crate.py:runlocal --workdir runs/crate_mnist
  python -m effjax.main --config configs/crate.py:variant=B --workdir runs/crate_b_in1k

Arguments: variant (T/S/B/L), patch, dataset (a data source name), num_classes, mixup / cutmix (Beta
alphas, 0 = off), runlocal (a small CRATE on the embedded 5,000-image MNIST subset: >= 90% test accuracy
within 10 minutes on one CPU).
Recipe: the official README's ImageNet-1K command for main.py (Ma-Lab-Berkeley/CRATE): Lion (betas 0.9, 0.99),
lr 2e-4, weight decay 0.05 on every parameter (main.py passes model.parameters() to Lion), batch 512, 200 epochs,
label smoothing 0.1 (main.py --label_smooth). main.py steps its LambdaLR once per epoch with
min((e + 1) / 20, cosine(e / epochs)), so its warm-up is 20 epochs (not 20 steps) and the lr is constant within
an epoch; here a 20-epoch linear warm-up and cosine decay stepped per update. The authors' book gives another
recipe for the paper's table (Lion lr 2.4e-4, weight decay 0.5, batch 2048, 150 epochs, 5 warm-up epochs); the
config keys select it (command in experiments/crate/README.md). Data as in the official main.py:
training images get an inception crop (random resized crop, area 8-100%, aspect 3/4-4/3) to 224 px and a
horizontal flip; evaluation resizes the shorter side to 256 and takes the central 224 px; both are
normalised with the ImageNet mean/std. The official script uses no Mixup, CutMix or RandAugment, so they
are off by default (mixup=0.8,cutmix=1.0 turns on the DeiT-style mixing in effjax/tasks/classification.py).
Every evaluation also measures the per-layer coding rate and sparsity (effjax/evaluators/coding_rate.py).
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B", patch=16, dataset="tfds:imagenet2012", num_classes=1000, mixup=0.0,
                      cutmix=0.0, runlocal=False)
  c = train_config.base_config()
  c.model_name = "crate"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=arg.patch, pool="cls", dropout=0.0,
      emb_dropout=0.0, remat="none"))
  c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
  c.task_name = "classification"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1, mixup_alpha=arg.mixup, cutmix_alpha=arg.cutmix))
  c.evaluators = ("classification", "coding_rate")
  c.evaluator.coding_rate = ml_collections.ConfigDict(dict(max_examples=256))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "validation"
  c.data.pp_train = ("inception_crop(size=224)", "flip", train_config.IMAGENET_NORM)
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)",
                    train_config.IMAGENET_NORM)
  c.batch_size = 512
  c.total_epochs = 200.0
  c.optimizer.name = "lion"
  c.optimizer.lr = 2e-4
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99   # lion_pytorch defaults
  c.optimizer.decay_mask = "all"               # main.py: Lion(model.parameters(), ...) decays every parameter
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_epochs = 20.0             # main.py: warmup_steps = 20 scheduler steps, one per epoch
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:  # small CRATE on the embedded MNIST subset (28x28x1, 4,000 train / 1,000 test; 16 patches)
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, patch_size=7, width=96, depth=4, num_heads=4, pool="cls", dropout=0.0, emb_dropout=0.0,
        remat="none"))
    c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
    c.task.label_smoothing = 0.0
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.name = "adamw"
    c.optimizer.lr = 2e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
