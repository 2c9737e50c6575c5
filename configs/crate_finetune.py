"""CRATE fine-tuning on CIFAR-10/100 from an ImageNet-1K checkpoint (the paper's transfer recipe).

  python -m effjax.main --config configs/crate_finetune.py:variant=B,dataset=tfds:cifar100,num_classes=100,init=runs/crate_b_in1k/checkpoints/<step> --workdir runs/crate_b_cifar100

Arguments: variant (T/S/B/L), dataset, num_classes, init (checkpoint whose params are loaded; the head is
re-initialised), batch.
Paper settings: AdamW, lr 5e-5, weight decay 0.01, batch 256, 200 epochs, warm-up then cosine, label
smoothing 0.1. The paper resizes CIFAR images to 224 px and uses RandAugment; effjax.data.ops has neither a
resize nor RandAugment op, so this config fine-tunes at the native 32 px with patch 16 → 2×2 patches and
re-initialises the position embedding (its length differs from the 224 px checkpoint's).
"""
import ml_collections

from effjax import config as cfg
from effjax.models import crate


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B", dataset="tfds:cifar10", num_classes=10, init="", batch=256)
  c = cfg.base_config()
  c.model_name = "crate"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=arg.num_classes, patch_size=16, **crate.variant_kwargs(arg.variant), pool="cls", dropout=0.0,
      emb_dropout=0.0, remat="none"))
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.1))
  c.evaluators = ("classification", "coding_rate")
  c.evaluator.coding_rate = ml_collections.ConfigDict(dict(max_examples=256))
  c.data.source = arg.dataset
  c.data.train_split, c.data.eval_split = "train", "test"
  c.data.augment = ("random_crop(pad=4)", "flip")
  c.data.preprocess = ("normalize(mean=(0.4914,0.4822,0.4465),std=(0.247,0.2435,0.2616))",)
  c.batch_size = arg.batch
  c.total_epochs = 200.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-5
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_epochs = 5.0
  c.init_from.path = arg.init
  c.init_from.skip = r"^(head|pos_embedding)"
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
