"""Two processes on localhost (jax.distributed, CPU collectives): they train like one process, their
checkpoints resume on one process (elastic resume), and a killed peer ends the job within seconds."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from effjax import metrics

import trainer_utils


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_two(args, workdir):
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": trainer_utils.xla_flags(1)}
  return [subprocess.Popen(
      [sys.executable, "-m", "effjax.main", *args, "--workdir", str(workdir),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=trainer_utils.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _losses(workdir):
  rows = {r["step"]: r["train/loss"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r}
  return np.array([rows[s] for s in sorted(rows)])


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_on_one(tmp_path):
  """2 processes x 20 steps, then 1 process to step 40, equals 1 process x 40 steps."""
  # a constant learning rate after warm-up: the schedule does not depend on total_steps
  args = trainer_utils.TINY_CLI + ["--config.checkpoint_every_steps=10", "--config.optimizer.schedule=warmup_constant"]
  single = trainer_utils.run_cli(args + ["--workdir", str(tmp_path / "single"), "--config.total_steps=40"],
                                 devices=2)
  assert single.returncode == 0, single.stderr[-3000:]

  procs = _start_two(args + ["--config.total_steps=20"], tmp_path / "elastic")
  outputs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "2 devices (2 processes)" in outputs[0][1]
  assert sorted(os.listdir(tmp_path / "elastic" / "checkpoints")) == ["10", "20"]

  resumed = trainer_utils.run_cli(args + ["--workdir", str(tmp_path / "elastic"), "--config.total_steps=40"],
                                  devices=2)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "at step 20" in resumed.stderr and "2 devices (1 processes)" in resumed.stderr
  one, elastic = _losses(tmp_path / "single"), _losses(tmp_path / "elastic")
  assert len(one) == len(elastic) == 40
  np.testing.assert_allclose(elastic, one, rtol=1e-5)


@pytest.mark.slow
def test_a_killed_peer_ends_the_job_in_seconds_with_one_line(tmp_path):
  workdir = tmp_path / "w"
  args = trainer_utils.TINY_CLI + ["--config.total_steps=100000", "--config.checkpoint_every_steps=5",
                                   "--peer_timeout=10"]
  procs = _start_two(args, workdir)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "10").exists() and time.time() < deadline:
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  _, err = procs[0].communicate(timeout=60)
  seconds = time.time() - killed
  procs[1].communicate()
  last_step = max(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert seconds < 10 and procs[0].returncode == 3, (seconds, err[-3000:])
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"effjax: error: process 1 of 2 is gone (killed, crashed or unreachable); ending the job. "
      f"Last checkpoint: step {last_step}; rerun to resume")
