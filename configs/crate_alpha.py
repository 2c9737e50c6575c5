"""CRATE-α: the official ImageNet-21K pre-training and ImageNet-1K fine-tuning recipes, and a quick CPU run.

  python -m effjax.main --config configs/crate_alpha.py:variant=B/16 --workdir runs/crate_alpha_b16_in21k
  python -m effjax.main --workdir runs/crate_alpha_b16_in1k \
      --config configs/crate_alpha.py:variant=B/16,stage=finetune,init=runs/crate_alpha_b16_in21k/checkpoints/...
  python -m effjax.main --config configs/crate_alpha.py:runlocal --workdir runs/crate_alpha_mnist

Arguments: variant (Ti/S/B/L/H with /patch, e.g. L/14), stage (pretrain on ImageNet-21K or finetune on
ImageNet-1K), batch, init (checkpoint to fine-tune from; head and patch embedding are re-initialised as in
the official config), dataset (overrides the stage's data source), runlocal.
Official settings (UCSC-VLAA/CRATE-alpha configs/crate/classification/{pre_training_in21k,fine_tuning_in1k}.py
and optim/build_optax.py), used for both stages unless noted: Adam (b1 0.9, b2 0.95) with decoupled weight decay
0.1 on the params matching ".*/kernel$" only (big_vision's default wd_mults: not the ISTA dictionaries, norms,
biases, embeddings), lr = base_lr · batch/256 (base 5e-5 pre-training, 1e-5 fine-tuning), 10 warm-up epochs then
cosine to 1e-6, 91 epochs, batch 4096, gradient clipping at 1.0, Mixup 0.8 / CutMix 1.0 with switch probability
0.5, label smoothing 0.1 when fine-tuning (official one-hot on = 0.9, off = 0.1/1000; effjax's 0.9 + 0.1/1000).
Data: inception crop to 224 px (area 8-100%) and a horizontal flip; fine-tuning adds the official TF
re-implementation of timm's RandAugment (2 layers, magnitude N(9, 0.5), applied with probability 0.5 each,
increasing ops, fill (124, 116, 104)), here timm's own rand-m9-mstd0.5-inc1 with bilinear resampling; evaluation
resize_small 256 (official: area resampling; here antialiased bilinear) and a central 224 px crop; pixel values in
[-1, 1].
"""
import ml_collections

from effjax import config as cfg, train_config

STAGES = {  # data source, classes, base lr, label smoothing
    "pretrain": ("tfds:imagenet21k", 19167, 5e-5, 0.0),
    "finetune": ("tfds:imagenet2012", 1000, 1e-5, 0.1),
}


def get_config(arg=None):
  arg = cfg.parse_arg(arg, variant="B/16", stage="pretrain", batch=4096, init="", dataset="", runlocal=False)
  if arg.stage not in STAGES:
    raise cfg.ConfigError(f"unknown CRATE-α stage {arg.stage!r}; expected one of {list(STAGES)}")
  source, classes, base_lr, smoothing = STAGES[arg.stage]
  c = train_config.base_config()
  c.model_name = "crate_alpha"
  c.model = ml_collections.ConfigDict(dict(
      num_classes=classes, variant=arg.variant if "/" in arg.variant else arg.variant + "/16", posemb="learn",
      dropout=0.0, drop_path_rate=0.0, layer_scale=None, remat="none"))
  c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
  c.task = ml_collections.ConfigDict(dict(label_smoothing=smoothing, mixup_alpha=0.8, cutmix_alpha=1.0))
  c.evaluators = ("classification", "coding_rate")
  c.evaluator.coding_rate = ml_collections.ConfigDict(dict(max_examples=256, per_head=False))
  c.data.source = arg.dataset or source
  c.data.train_split, c.data.eval_split = "train", "validation"
  randaug = ("timm_randaugment(policy=rand-m9-mstd0.5-inc1,method=bilinear)",) if arg.stage == "finetune" else ()
  c.data.pp_train = ("inception_crop(size=224)", "flip", *randaug, "normalize(mean=0.5,std=0.5)")
  c.data.pp_eval = ("center_crop(size=224,resize_small=256)", "normalize(mean=0.5,std=0.5)")
  c.batch_size = arg.batch
  c.total_epochs = 91.0
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.lr = base_lr * arg.batch / 256
  c.optimizer.weight_decay = 0.1
  c.optimizer.decay_mask = "re:/kernel$"
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.end_lr_factor = 1e-6 / c.optimizer.lr
  c.optimizer.grad_clip_norm = 1.0
  c.init_from.path = arg.init
  c.init_from.skip = r"^(head|embedding)/"
  c.log_every_steps = 50
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 4000

  if arg.runlocal:  # small CRATE-α on the embedded MNIST subset
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, patch_size=7, width=96, depth=4, num_heads=4, posemb="learn", dropout=0.0, drop_path_rate=0.0,
        layer_scale=None, remat="none"))
    c.model.reduction = train_config.token_reduction()  # ToMe / DiffRate at inference
    c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
    c.optimizer.decay_mask = "no_bias_norm"
    c.data.source = "mnist5k"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.pp_train = ("random_crop(pad=2)", "normalize(mean=0.1307,std=0.3081)")
    c.data.pp_eval = ("normalize(mean=0.1307,std=0.3081)",)
    c.batch_size = 128
    c.eval_batch_size = 200
    c.total_epochs = -1.0
    c.total_steps = 1000
    c.optimizer.lr = 2e-3
    c.optimizer.end_lr_factor = 0.0
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_steps = 100
    c.init_from.path = ""
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  return c
