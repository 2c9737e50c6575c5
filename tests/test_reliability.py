"""Reliability of resume and failure paths (issue 13): an incompatible checkpoint stops the run untouched,
a failed restore leaves no trace, every failure of the command ends in one line, SIGTERM before the loop,
the final eval row of a rerun, keep-N (the soak script in small: tests/test_preemption.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from effjax import checkpoint, metrics, train, train_config
from effjax.config import ConfigError
from effjax.data import ops

import trainer_utils
from trainer_utils import tiny_vit_config

_STEPS = dict(total_steps=10, checkpoint_every_steps=5, keep_checkpoints=5)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir holding a finished 10-step run with checkpoints 5 and 10."""
  workdir = tmp_path_factory.mktemp("finished") / "w"
  train.train_and_evaluate(tiny_vit_config(**_STEPS), str(workdir))
  return workdir


def _copy(finished, tmp_path):
  shutil.copytree(finished, tmp_path / "w")
  return tmp_path / "w"


def _snapshot(workdir):
  """Every file's bytes, but the lock's (it names the run holding the workdir, so each run rewrites it)."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != "lock"}


def _losses(workdir):
  return [(r["step"], r["train/loss"]) for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r]


@pytest.mark.parametrize("override, difference, overridable", [
    ({"model.width": 48}, "config.model.width is 32 there, 48 now", False),  # the state's shapes differ
    ({"optimizer.name": "sgd"}, "optimizer 'adamw' there, 'sgd' now", False),  # so does the optimizer state
    ({"optimizer.lr": 0.01}, "config.optimizer.lr is 0.002 there, 0.01 now", True),
    ({"model.width": 48, "allow_config_change": True}, "there, [", False),
])
def test_incompatible_checkpoint_stops_before_changing_anything(finished, tmp_path, override, difference,
                                                                overridable):
  workdir = _copy(finished, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpoint) as raised:
    train.train_and_evaluate(tiny_vit_config(**{**_STEPS, "total_steps": 12, **override}), str(workdir))
  message = str(raised.value)
  assert "\n" not in message and difference.replace("'", '"') in message.replace("'", '"'), message
  assert "--workdir" in message and "init_from.path" in message
  assert ("allow_config_change=True" in message) == overridable
  assert "allow_config_change" not in override or "state['params']" in message
  assert _snapshot(workdir) == before  # nothing renamed, trained, or overwritten (config.json included)


def test_allow_config_change_resumes_with_a_new_learning_rate(finished, tmp_path, capsys):
  workdir = _copy(finished, tmp_path)
  result = train.train_and_evaluate(
      tiny_vit_config(**{**_STEPS, "total_steps": 12, "optimizer.lr": 0.01, "allow_config_change": True}),
      str(workdir))
  assert "at step 10" in capsys.readouterr().err and result["step"] == 12
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["lr"] == 0.01


def test_failed_restore_leaves_no_trace(finished, tmp_path, capsys):
  """Every checkpoint unreadable: the run from scratch equals a fresh run bit for bit."""
  workdir = _copy(finished, tmp_path)
  for path in (workdir / "checkpoints").glob("*/state/**/*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  (workdir / "metrics.jsonl").unlink()
  capsys.readouterr()
  train.train_and_evaluate(tiny_vit_config(**_STEPS), str(workdir))
  err = capsys.readouterr().err
  assert err.count("is unreadable") == 2 and "starting from scratch" in err
  assert _losses(workdir) == _losses(finished)
  names = os.listdir(workdir / "checkpoints")
  assert sum(n.startswith(("5.unreadable-", "10.unreadable-")) for n in names) == 2


def test_truncated_manifest_falls_back_without_event_loop_tracebacks(finished, tmp_path, monkeypatch):
  """The reads in flight when a restore fails still complete and call back into orbax's closed event loop:
  "RuntimeError: Event loop is closed" through sys.unraisablehook (88 tracebacks for one damaged checkpoint)."""
  workdir = _copy(finished, tmp_path)
  for path in (workdir / "checkpoints" / "10").rglob("manifest.ocdbt"):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
  one_device = {"mesh": (("data", 1),)}  # (on 8 devices the reads end before the loop closes)
  result = train.train_and_evaluate(tiny_vit_config(**{**_STEPS, "total_steps": 12, **one_device}), str(workdir))
  assert result["step"] == 12 and any(n.startswith("10.unreadable-") for n in os.listdir(workdir / "checkpoints"))
  assert not [e for e in seen if "Event loop is closed" in str(e)], f"{len(seen)} unraisable exceptions"


def test_rerun_of_finished_run_writes_missing_eval_row_and_keeps_n(finished, tmp_path, capsys):
  workdir = _copy(finished, tmp_path)
  rows = metrics.read_jsonl(str(workdir))  # as if killed between the final checkpoint and the final eval
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if "eval/accuracy" not in r))
  (workdir / "checkpoints" / "7").write_text("not a checkpoint")
  for _ in range(2):
    train.train_and_evaluate(tiny_vit_config(**{**_STEPS, "keep_checkpoints": 1}), str(workdir))
  assert "checkpoints/7 is not a checkpoint directory" in capsys.readouterr().err
  evals = [r for r in metrics.read_jsonl(str(workdir)) if "eval/accuracy" in r]
  assert [r["step"] for r in evals] == [10]
  assert checkpoint.Checkpointer(workdir / "checkpoints").steps() == [10]


def test_numbers_are_checked_before_compiling():
  for key, value, match in [("optimizer.lr", float("nan"), "config.optimizer.lr is nan"),
                            ("optimizer.b2", 1.5, r"optimizer.b2=1.5 is out of range"),
                            ("model.dropout", float("inf"), "config.model.dropout is inf"),
                            ("keep_checkpoints", 0, "keep_checkpoints=0 is out of range")]:
    with pytest.raises(ConfigError, match=match):
      train_config.validate(tiny_vit_config(**{key: value}), 1)
  for spec in ("normalize(std=0.0)", "normalize(mean=0.5,std=(0.5,0.0,0.5))", "normalize(std=nan)"):
    with pytest.raises(ValueError, match="std must be finite and non-zero"):
      ops.parse(spec)


# The command with NaN training images, injected here (the trainer has no test hook): the NaN guard must stop it.
_NAN_IMAGES_CLI = """
import sys
from effjax import main
from effjax.data import pipeline
next_batch = pipeline.TrainData.__next__
def nan_images(self):
  batch = next_batch(self)
  return {**batch, "image": batch["image"] * float("nan")}
pipeline.TrainData.__next__ = nan_images
main.run()
"""


@pytest.mark.slow
def test_every_cli_failure_ends_in_one_line(finished, tmp_path):
  bad_config = tmp_path / "bad.py"
  bad_config.write_text("def get_config(:\n")
  a_file = tmp_path / "file"
  a_file.write_text("")
  workdir = _copy(finished, tmp_path)
  cases = [
      (["--workdir", str(a_file)], "is a file, not a directory"),
      (["--workdir", str(tmp_path / "x"), "--config.total_steps=abc"], "--config.total_steps=abc"),
      (["--workdir", str(tmp_path / "x"), "--config.optimizer.lr=nan"], "config.optimizer.lr is nan"),
      (["--workdir", str(tmp_path / "x"), "--config.data.pp_train=('normalize(std=0.0)',)"],
       "std must be finite and non-zero"),
      (["--workdir", str(workdir), "--config.model.width=48"], "config.model.width is 32 there, 48 now"),
  ]
  for args, expected in cases:
    result = trainer_utils.run_cli(trainer_utils.TINY_CLI + args)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith("effjax: error:") and expected in lines[-1], lines[-3:]
  result = trainer_utils.run_cli(["--config", f"{bad_config}:x", "--workdir", str(tmp_path / "x")])
  assert result.returncode != 0 and result.stderr.strip().splitlines() == [
      "effjax: error: config file: SyntaxError: invalid syntax (bad.py, line 1)"]
  result = subprocess.run([sys.executable, "-c", _NAN_IMAGES_CLI, *trainer_utils.TINY_CLI,
                           "--workdir", str(tmp_path / "x")], cwd=trainer_utils.REPO, capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": trainer_utils.xla_flags(1)}, timeout=300)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert last.startswith("effjax: error: NonFiniteError: step 1") and f"{tmp_path}/x/error.log" in last
  assert "Traceback" in (tmp_path / "x" / "error.log").read_text()


@pytest.mark.slow
def test_sigterm_before_the_training_loop_exits_cleanly(tmp_path):
  workdir = tmp_path / "w"
  env = {**os.environ, "XLA_FLAGS": trainer_utils.xla_flags(1)}
  proc = subprocess.Popen([sys.executable, "-m", "effjax.main", *trainer_utils.TINY_CLI, "--workdir", str(workdir)],
                          cwd=trainer_utils.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not workdir.exists() and time.time() < deadline:  # the workdir is made before compiling
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
  assert err.strip().splitlines()[-1].startswith("effjax: stopped: SIGTERM before the training loop started")
