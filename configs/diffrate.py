"""DiffRate's compression-rate search (effjax/tasks/diffrate.py) on a trained ViT / CRATE / CRATE-α runlocal model.

  python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit --config.model.pool=cls
  python -m effjax.main --config configs/diffrate.py:base=vit,init=runs/vit/checkpoints,target=6 \
      --workdir runs/vit_diffrate

Arguments: base (vit | crate | crate_alpha: its runlocal config, with pool "cls"), init (the trained run's
checkpoint directory; empty: a fresh model, a smoke test), target (the layers' FLOPs in MFLOPs, DiffRate's formula),
steps, runlocal (accepted and ignored: the search always runs on the runlocal models). As DiffRate's main.py
and engine.py: only the rates train (AdamW, lr 0.01 cosine to 0.001, no weight decay), λ = 5; the epochs of its
ImageNet search become `steps` batches here. The learned kept counts: token_reduction.learned_keeps(params, P).
"""
import os

import ml_collections

from effjax import config as cfg


def get_config(arg=None):
  arg = cfg.parse_arg(arg, base="vit", init="", target=6.0, steps=300, runlocal=False)
  if arg.base not in ("vit", "crate", "crate_alpha"):
    raise cfg.ConfigError(f"base must be vit, crate or crate_alpha, got {arg.base!r}")
  c = cfg.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{arg.base}.py") + ":runlocal")
  if "pool" in c.model:
    c.model.pool = "cls"
  c.model.reduction.method = "diffrate"
  c.task_name = "diffrate"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0, target=arg.target, unit=1e6, lamb=5.0))
  c.init_from.path = arg.init
  c.init_from.skip = "_rate$"          # the rates start at zero logits (DiffRate's init); everything else loads
  c.evaluators = ("classification",)
  c.total_epochs, c.total_steps = -1.0, arg.steps
  c.optimizer.name = "adamw"
  c.optimizer.lr = 0.01                # DiffRate main.py: --arch-lr 0.01, --arch-min-lr 0.001, weight_decay=0
  c.optimizer.end_lr_factor = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps, c.optimizer.warmup_epochs = 0, 0.0
  c.optimizer.grad_clip_norm = 0.0
  c.eval_every_steps = -1
  c.checkpoint_every_steps = arg.steps
  return c
