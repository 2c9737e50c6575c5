"""The shared trainer end to end on a tiny ViT: parallelism parity, NaN guard, corrupt checkpoints, gradient
accumulation, bf16 + EMA, fine-tuning with a new head, the CLI. Signals: test_preemption.py (a stop saves the step it
reached, quickly; the soak: exact resume after SIGTERM, SIGINT and SIGKILL, losses and params bit for bit);
test_data_tfds.py resumes the batches with grain workers."""
import itertools
import os

import jax
import numpy as np
import pytest

from effjax import checkpoint, metrics, sharding, train
from effjax.data import pipeline
from effjax.metrics import NonFiniteError

import trainer_utils
from trainer_utils import tiny_vit_config


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_one_device_data_parallel_and_fsdp_give_the_same_losses(tmp_path):
  runs = {
      "one": dict(mesh=(("data", 1),)),
      "dp8": dict(mesh=(("data", 8),)),
      "fsdp8": dict(mesh=(("data", 8),), sharding_rules=((".*", "fsdp"),)),
  }
  losses = {}
  for name, overrides in runs.items():
    train.train_and_evaluate(tiny_vit_config(**overrides), str(tmp_path / name))
    losses[name] = np.array([l for _, l in sorted(_losses(str(tmp_path / name)).items())])
  assert len(losses["one"]) == 20
  for name in ("dp8", "fsdp8"):
    np.testing.assert_allclose(losses[name], losses["one"], rtol=1e-5, atol=0)
  assert losses["one"][-1] < losses["one"][0]


def test_fsdp_rule_shards_parameters():
  mesh = sharding.make_mesh((("data", 8),))
  shapes = {"block0": {"mlp": {"fc1": {"kernel": jax.ShapeDtypeStruct((32, 64), np.float32)}}},
            "head": {"bias": jax.ShapeDtypeStruct((10,), np.float32)}}
  sh = sharding.param_shardings(shapes, mesh, ((r"^head/", "replicate"), (".*", "fsdp")))
  assert sh["block0"]["mlp"]["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(None, "data")
  assert sh["head"]["bias"].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="strategy must be one of"):
    sharding.param_shardings(shapes, mesh, ((".*", "zero3"),))


def test_nan_stops_the_run_naming_step_and_metric_and_last_checkpoint_restores(tmp_path, capsys, monkeypatch):
  workdir = str(tmp_path / "w")
  original_next, steps = pipeline.TrainData.__next__, itertools.count(1)

  def nan_images_at_step_15(self):
    batch = original_next(self)
    return {**batch, "image": batch["image"] * np.nan} if next(steps) == 15 else batch
  monkeypatch.setattr(pipeline.TrainData, "__next__", nan_images_at_step_15)
  with pytest.raises(NonFiniteError, match="step 15: metric train/loss is nan"):
    train.train_and_evaluate(tiny_vit_config(), workdir)
  monkeypatch.undo()
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).steps() == [10]
  assert max(_losses(workdir)) == 14
  result = train.train_and_evaluate(tiny_vit_config(total_steps=12), workdir)
  assert "at step 10" in capsys.readouterr().err
  assert result["step"] == 12 and np.isfinite(result["train/loss"])


def test_truncated_latest_checkpoint_is_skipped(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_vit_config(), workdir)
  state_dir = os.path.join(workdir, "checkpoints", "20", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  capsys.readouterr()
  result = train.train_and_evaluate(tiny_vit_config(total_steps=22), workdir)
  err = capsys.readouterr().err
  assert "checkpoints/20 is unreadable" in err and "at step 10" in err
  assert result["step"] == 22
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).steps() == [10, 20, 22]
  assert any(name.startswith("20.unreadable-") for name in os.listdir(os.path.join(workdir, "checkpoints")))


def test_gradient_accumulation_matches_full_batch(tmp_path):
  full = train.train_and_evaluate(tiny_vit_config(total_steps=5), str(tmp_path / "full"))
  accum = train.train_and_evaluate(tiny_vit_config(total_steps=5, grad_accum_steps=2), str(tmp_path / "accum"))
  np.testing.assert_allclose(sorted(_losses(str(tmp_path / "accum")).items()),
                             sorted(_losses(str(tmp_path / "full")).items()), rtol=1e-4)
  assert accum["step"] == full["step"] == 5


def test_bf16_compute_with_ema(tmp_path):
  result = train.train_and_evaluate(tiny_vit_config(compute_dtype="bfloat16", ema_decay=0.9), str(tmp_path))
  losses = _losses(str(tmp_path))
  assert all(np.isfinite(list(losses.values()))) and losses[20] < losses[1]
  correct = result["eval/accuracy"] * result["eval/examples"]  # whole examples of the 64 evaluated
  assert result["eval/examples"] == 64 and abs(correct - round(correct)) < 1e-4
  params = checkpoint.restore_params(str(tmp_path / "checkpoints"))
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))


def test_init_from_keeps_body_and_replaces_head(tmp_path):
  train.train_and_evaluate(tiny_vit_config(total_steps=10), str(tmp_path / "pre"))
  pre = checkpoint.restore_params(str(tmp_path / "pre" / "checkpoints"))
  finetune = tiny_vit_config(total_steps=1, **{
      "model.num_classes": 4, "data.source": "synthetic:size=28,channels=1,num_classes=4,examples=256",
      "init_from.path": str(tmp_path / "pre" / "checkpoints"), "optimizer.lr": 0.0})
  train.train_and_evaluate(finetune, str(tmp_path / "ft"))
  ft = checkpoint.restore_params(str(tmp_path / "ft" / "checkpoints"))
  np.testing.assert_array_equal(ft["block1"]["mlp"]["fc1"]["kernel"], pre["block1"]["mlp"]["fc1"]["kernel"])
  assert ft["head"]["kernel"].shape == (32, 4) and pre["head"]["kernel"].shape == (32, 10)


def test_cli_writes_workdir_contract(tmp_path):
  workdir = tmp_path / "w"
  result = trainer_utils.run_cli(trainer_utils.TINY_CLI + ["--workdir", str(workdir), "--config.total_steps=6"],
                                 devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test accuracy:" in result.stdout
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "lock", "metrics.jsonl", "tensorboard"]
  rows = metrics.read_jsonl(str(workdir))
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  for key in ("train/learning_rate", "train/grad_norm", "train/param_norm", "train/update_norm",
              "train/step_time_s", "train/examples_per_s"):
    assert key in train_rows[-1]
  assert any("eval/accuracy" in r for r in rows)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
