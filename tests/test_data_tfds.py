"""The tfds path end to end, offline: a dataset prepared here in ArrayRecord format (JPEG images, tests/tfds_photos.py)
trains through the CLI with data.source=tfds:<name> and TFDS_DATA_DIR; 0 and 2 grain workers give the same
batches, and a run killed after a checkpoint resumes exactly."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tfds_photos

from effjax import metrics, train_config
from effjax.data import pipeline

import trainer_utils

# The CLI in a subprocess, recording a digest of every global batch the trainer takes, and SIGKILLing itself
# right after the checkpoint of step `kill` is written (-1: never).
_CLI = textwrap.dedent("""
    import hashlib, os, signal, sys
    import numpy as np
    from effjax import checkpoint, main
    from effjax.data import pipeline
    log, kill = sys.argv[1], int(sys.argv[2])
    take = pipeline.TrainData.__next__
    def recording_next(self):
      batch = take(self)
      with open(log, "a") as f:
        f.write(hashlib.sha256(np.asarray(batch["image"]).tobytes() + np.asarray(batch["label"]).tobytes())
                .hexdigest() + "\\n")
      return batch
    pipeline.TrainData.__next__ = recording_next
    save = checkpoint.Checkpointer.save
    def save_then_maybe_die(self, step, *args, **kwargs):
      result = save(self, step, *args, **kwargs)
      if step == kill:
        self.wait()
        os.kill(os.getpid(), signal.SIGKILL)
      return result
    checkpoint.Checkpointer.save = save_then_maybe_die
    sys.argv = ["effjax.main"] + sys.argv[3:]
    main.run()
""")

PP = ['--config.data.pp_train=("inception_crop(size=28)", "flip", "randaugment(num_layers=2,magnitude=9)", '
      '"normalize(mean=0.5,std=0.5)")',
      '--config.data.pp_eval=("center_crop(size=28,resize_small=32)", "normalize(mean=0.5,std=0.5)")']


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  tfds_photos.prepare(directory)
  return directory


def test_prepared_tfds_dataset_decodes_jpeg_images(data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
  c = train_config.base_config().data
  c.source = f"tfds:{tfds_photos.NAME}"
  train, test = pipeline.make_source(c, "train"), pipeline.make_source(c, "test")
  assert (len(train), len(test)) == (48, 16) and train.info["num_classes"] == 4
  example = train[5]
  assert example["image"].dtype == np.uint8 and example["image"].ndim == 3 and example["image"].shape[2] == 3
  assert 36 <= min(example["image"].shape[:2]) and max(example["image"].shape[:2]) <= 64
  assert np.bincount([int(train[i]["label"]) for i in range(48)]).tolist() == [12] * 4


def _cli(data_dir, workdir, log, workers, kill=-1):
  args = trainer_utils.TINY_CLI + PP + [
      "--workdir", str(workdir), f"--config.data.source=tfds:{tfds_photos.NAME}", "--config.model.num_classes=4",
      "--config.data.eval_examples=16", "--config.batch_size=16", "--config.eval_batch_size=16",
      f"--config.data.worker_count={workers}", "--config.total_steps=12", "--config.checkpoint_every_steps=6"]
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "XLA_FLAGS": trainer_utils.xla_flags(1)}
  out, err = (open(f"{log}.{name}", "w+") for name in ("out", "err"))
  # Its own session, so that grain workers orphaned by the SIGKILL can be ended (they would hold pipes open).
  proc = subprocess.Popen([sys.executable, "-c", _CLI, str(log), str(kill), *args], cwd=trainer_utils.REPO, env=env,
                          stdout=out, stderr=err, text=True, start_new_session=True)
  try:
    proc.wait(timeout=600)
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  out.seek(0), err.seek(0)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r}


@pytest.mark.slow
def test_tfds_training_same_batches_with_0_and_2_workers_and_exact_resume(data_dir, tmp_path):
  straight = _cli(data_dir, tmp_path / "w0", tmp_path / "w0.log", workers=0)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert "test accuracy:" in straight.stdout
  killed = _cli(data_dir, tmp_path / "w2", tmp_path / "w2.log", workers=2, kill=6)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = _cli(data_dir, tmp_path / "w2", tmp_path / "w2.log", workers=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "at step 6" in resumed.stderr

  batches_0 = (tmp_path / "w0.log").read_text().split()
  batches_2 = (tmp_path / "w2.log").read_text().split()
  assert len(batches_0) == 12 and len(set(batches_0)) == 12
  assert batches_2 == batches_0
  losses_0, losses_2 = _losses(tmp_path / "w0"), _losses(tmp_path / "w2")
  assert sorted(losses_2) == list(range(1, 13)) and all(losses_2[s] == losses_0[s] for s in losses_0)
