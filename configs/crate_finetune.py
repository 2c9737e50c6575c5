"""CRATE fine-tuning on CIFAR-10/100 from an ImageNet-1K checkpoint (the official transfer command).

  python -m effjax.main --workdir runs/crate_b_cifar100 --config \
      configs/crate_finetune.py:variant=B,dataset=tfds:cifar100,num_classes=100,init=runs/crate_b_in1k/checkpoints/<step>

Arguments: variant (T/S/B/L), dataset, num_classes, init (checkpoint whose params are loaded; the head
and its LayerNorm are re-initialised, as the official finetune.py replaces `mlp_head`), batch, smoothing (label
smoothing; official 0), warmup (epochs; official 0).
Official settings (Ma-Lab-Berkeley/CRATE README command for finetune.py: --bs 256 --opt adamW --lr 5e-5
--n_epochs 200 --randomaug 1): AdamW (betas 0.9, 0.999, eps 1e-8) with weight decay 0.01 on every parameter
(net.parameters()), plain cross-entropy (nn.CrossEntropyLoss), no warm-up, cosine annealing over the 200 epochs
(CosineAnnealingLR, stepped per epoch there, per update here). Data as in finetune.py: training images get an
inception crop to 224 px, a horizontal flip and RandAugment with 2 layers at magnitude 14 of torchvision's
0-30 scale; evaluation images are resized to 224x224; both are normalised with the ImageNet mean/std of the
pre-trained model (finetune.py's RandomErasing is off: --erase_prob 0). At 224 px with patch 16 the position
embedding has the checkpoint's length and is loaded.
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B", dataset="tfds:cifar10", num_classes=10, init="", batch=256, smoothing=0.0,
                      warmup=0.0)
  c = train_config.base_config()
  c.model_name = "crate"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=16, pool="cls", dropout=0.0, emb_dropout=0.0,
      remat="none"))
  c.task = ml_collections.ConfigDict(dict(label_smoothing=arg.smoothing))  # finetune.py: nn.CrossEntropyLoss()
  c.evaluators = ("classification", "coding_rate")
  c.evaluator.coding_rate = ml_collections.ConfigDict(dict(max_examples=256))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "test"
  c.data.pp_train = ("inception_crop(size=224)", "flip", "randaugment(num_layers=2,magnitude=14,max_magnitude=30)",
                     train_config.IMAGENET_NORM)
  c.data.pp_eval = ("resize(size=224)", train_config.IMAGENET_NORM)
  c.batch_size = arg.batch
  c.total_epochs = 200.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-5
  c.optimizer.weight_decay = 0.01              # finetune.py: optim.AdamW(net.parameters(), weight_decay=0.01)
  c.optimizer.decay_mask = "all"
  c.optimizer.warmup_epochs = arg.warmup       # finetune.py: no warm-up
  c.init_from.path = arg.init
  c.init_from.skip = r"^head"  # head/ and head_norm/
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
