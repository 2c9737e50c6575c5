"""CRATE fine-tuning on CIFAR-10/100 from an ImageNet-1K checkpoint (the paper's transfer recipe).

  python -m effjax.main --workdir runs/crate_b_cifar100 --config \
      configs/crate_finetune.py:variant=B,dataset=tfds:cifar100,num_classes=100,init=runs/crate_b_in1k/checkpoints/<step>

Arguments: variant (T/S/B/L), dataset, num_classes, init (checkpoint whose params are loaded; the head
and its LayerNorm are re-initialised, as the official finetune.py replaces `mlp_head`), batch.
Paper settings: AdamW, lr 5e-5, weight decay 0.01, batch 256, 200 epochs, warm-up then cosine, label
smoothing 0.1. Data as in the official finetune.py (Ma-Lab-Berkeley/CRATE): training images get an
inception crop to 224 px, a horizontal flip and RandAugment with 2 layers at magnitude 14 of torchvision's
0-30 scale; evaluation images are resized to 224x224; both are normalised with the ImageNet mean/std of the
pre-trained model. At 224 px with patch 16 the position embedding has the checkpoint's length and is loaded.
(The official script itself trains with plain cross-entropy, lr 1e-4, batch 50; the paper's numbers are used.)
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B", dataset="tfds:cifar10", num_classes=10, init="", batch=256)
  c = train_config.base_config()
  c.model_name = "crate"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, variant=arg.variant, patch_size=16, pool="cls", dropout=0.0, emb_dropout=0.0,
      remat="none"))
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
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
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_epochs = 5.0
  c.init_from.path = arg.init
  c.init_from.skip = r"^head"  # head/ and head_norm/
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
