"""Shared helpers for tests that run the real trainer (a tiny ViT, or a model's runlocal config shrunk)."""
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
  c.update_from_flattened_dict(overrides)
  return c


def xla_flags(devices):
  """This process's XLA_FLAGS (the suite's, tests/conftest.py) with `devices` fake CPU devices instead of 8."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  return " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])


def run_cli(args, env=None, timeout=300, devices=1, **kwargs):
  """Runs `python -m effjax.main ARGS` in the repo with `devices` fake CPU devices."""
  full_env = {**os.environ, "XLA_FLAGS": xla_flags(devices), **(env or {})}
  return subprocess.run([sys.executable, "-m", "effjax.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


TINY_CLI = ["--config", "configs/vit.py:runlocal", "--config.model.patch_size=7", "--config.model.width=32",
            "--config.model.depth=2", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
            "--config.batch_size=32", "--config.eval_batch_size=32", "--config.data.eval_examples=64",
            "--config.log_every_steps=1", "--config.optimizer.warmup_steps=5", "--config.progress_bar=False"]


def train_runlocal_two_steps(spec, workdir, model=None, keys=None):
  """Trains `configs/<spec>` (e.g. "convnext.py:runlocal") shrunk to 2 steps of batch 16 on every device
  (the suite runs with 8 fake CPU devices), with `model` fields and dotted `keys` ({"data.source": ...}) set, through
  effjax.train.train_and_evaluate. Checks: both steps logged with a finite loss, every evaluation metric finite, and
  a classification accuracy (if the config has one) that counts whole examples of the 32 evaluated. Returns the
  final metrics."""
  import jax
  import numpy as np

  from effjax import metrics, train
  c = cfg.load_config_file(os.path.join(REPO, "configs", spec))
  c.model.update(model or {})
  c.batch_size, c.eval_batch_size, c.data.eval_examples = 16, 16, 32
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 1, -1, 2
  c.optimizer.warmup_steps, c.progress_bar = 1, False
  c.update_from_flattened_dict(keys or {})
  assert jax.device_count() == 8
  result = train.train_and_evaluate(c, str(workdir))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert [r["step"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r] == [1, 2]
  evals = {k: v for k, v in result.items() if k.startswith("eval/")}
  assert evals and all(np.isfinite(v) for v in evals.values()), evals
  if "eval/examples" in result and "eval/accuracy" in result:  # the classification evaluator
    correct = result["eval/accuracy"] * result["eval/examples"]
    assert result["eval/examples"] == 32 and abs(correct - round(correct)) < 1e-4, result
  return result


def logits_shape(config, input_shape):
  """The output shape of `config`'s model on zeros of `input_shape`, traced only (jax.eval_shape: nothing runs)."""
  import jax
  import jax.numpy as jnp

  from effjax import components
  model = components.load("models", config.model_name).Model(**config.model)
  out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False))
  return out.shape
