"""FIT autoregressive byte-level language model on the Python standard library sources (offline).

  python -m effjax.main --config configs/fit_lm.py:runlocal --workdir runs/fit_lm
  python -m effjax.main --config configs/fit_lm.py:seq_len=1024 --workdir runs/fit_lm_1k

Arguments: seq_len (bytes per example; groups of group_size bytes), group_size, runlocal (a small
model, 256-byte context in 16 groups of 16, a few minutes on a CPU). Metric: eval/bits_per_token
(= bits per byte) on the held-out last 5% of the corpus; samples (greedy and T=0.8) are written to
<workdir>/text_samples/.
"""
import ml_collections

from effjax import config as cfg, train_config


def get_config(arg=None):
  arg = cfg.parse_arg(arg, seq_len=1024, group_size=32, runlocal=False)
  c = train_config.base_config()
  c.model_name = "fit_ar"
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=256, seq_len=arg.seq_len, layers="(2)2(2)2(2)", group_size=arg.group_size,
      latents_per_group=8, width=384, latent_width=512, num_heads=6, latent_num_heads=8, mlp_ratio=4,
      drop_path_rate=0.0, drop_units=0.1, remat="none"))
  c.task_name = "language_model"
  c.task = ml_collections.ConfigDict(dict(label_smoothing=0.0))
  c.evaluators = ("text_samples",)
  c.evaluator.text_samples = ml_collections.ConfigDict(dict(prompt_len=128, num_tokens=256,
                                                            temperatures=(0.0, 0.8)))
  c.data.source = f"pytext:seq_len={arg.seq_len},stride={arg.seq_len // 2}"
  c.data.train_split, c.data.eval_split = "train", "test"
  c.batch_size = 64
  c.eval_batch_size = 64
  c.total_steps = 20_000
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 500
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000

  if arg.runlocal:
    c.model.update(dict(seq_len=256, layers="(1)2(1)", group_size=16, latents_per_group=4, width=128,
                        latent_width=128, num_heads=4, latent_num_heads=4, mlp_ratio=2, drop_units=0.0))
    c.data.source = "pytext:seq_len=256,stride=128,max_bytes=1000000"
    c.data.eval_examples = 128
    c.evaluator.text_samples = ml_collections.ConfigDict(dict(prompt_len=64, num_tokens=64,
                                                              temperatures=(0.0, 0.8)))
    c.batch_size = 32
    c.total_steps = 400
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 40
    c.log_every_steps = 20
    c.eval_every_steps = -1
    c.checkpoint_every_steps = 200
  return c
