"""Shared helpers for tests that run the real trainer on a tiny ViT."""
import os
import subprocess
import sys

from effjax import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_vit_config(**overrides):
  """configs/vit.py:runlocal shrunk to seconds: 16 tokens, width 32, 2 blocks, batch 32."""
  c = cfg.load_config_file(os.path.join(REPO, "configs/vit.py:runlocal"))
  c.model.update(dict(patch_size=7, width=32, depth=2, num_heads=2, mlp_dim=64))
  c.batch_size = 32
  c.eval_batch_size = 32
  c.data.eval_examples = 64
  c.total_steps = 20
  c.log_every_steps = 1
  c.eval_every_steps = -1
  c.checkpoint_every_steps = 10
  c.optimizer.warmup_steps = 5
  c.progress_bar = False
  return set_keys(c, overrides)


def set_keys(c, overrides):
  """Sets dotted keys of config `c` ({"model.width": 32, ...}) and returns it."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def run_cli(args, env=None, timeout=300, devices=1, **kwargs):
  """Runs `python -m effjax.main ARGS` in the repo with `devices` fake CPU devices."""
  full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  return subprocess.run([sys.executable, "-m", "effjax.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


TINY_CLI = ["--config", "configs/vit.py:runlocal", "--config.model.patch_size=7", "--config.model.width=32",
            "--config.model.depth=2", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
            "--config.batch_size=32", "--config.eval_batch_size=32", "--config.data.eval_examples=64",
            "--config.log_every_steps=1", "--config.optimizer.warmup_steps=5", "--config.progress_bar=False"]
