"""Two processes on localhost (jax.distributed, CPU collectives) train like one process."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from effjax import metrics
import trainer_utils


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  args = trainer_utils.TINY_CLI + ["--config.total_steps=10", "--config.checkpoint_every_steps=5"]
  single = trainer_utils.run_cli(args + ["--workdir", str(tmp_path / "single")], devices=2)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "effjax.main", *args, "--workdir", str(tmp_path / "multi"),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=trainer_utils.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "2 devices (2 processes)" in outputs[0][1]

  def losses(workdir):
    return np.array([r["train/loss"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r])
  one, two = losses(tmp_path / "single"), losses(tmp_path / "multi")
  assert len(one) == len(two) == 10
  np.testing.assert_allclose(two, one, rtol=1e-5)
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["10", "5"]
