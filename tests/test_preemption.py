"""Runs that stop well: signals are never swallowed, a restore interrupted by a signal sets nothing aside,
damaged checkpoints fall back, refusals say what is true, one run per workdir, Ctrl-C saves like SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import checkpoint, metrics, preemption
from effjax.config import ConfigError

import trainer_utils

ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": trainer_utils.xla_flags(1)}


def _saved(directory, steps):
  """A Checkpointer in `directory` holding a tiny state at each of `steps`, and that state's (meta, abstract)."""
  state = {"params": {"w": jnp.arange(4.0)}, "step": jnp.zeros((), jnp.int32)}
  meta = {"model_name": "m", "optimizer": "o", "fingerprint": {"lr": 1}, "state": {"['params']['w']": [[4], "f32"]}}
  ckpt = checkpoint.Checkpointer(str(directory), keep=5, async_save=False)
  for s in steps:
    ckpt.save(s, jax.tree.map(lambda x: x + s, state), {"next_batch": s}, meta, force=True)
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  return ckpt, meta, abstract


def test_a_signal_during_restore_sets_nothing_aside(tmp_path, monkeypatch):
  ckpt, meta, abstract = _saved(tmp_path / "c", [1, 2])
  real = ckpt.manager.restore

  def interrupted(step, args):
    if "state" in args.keys():
      raise preemption.Terminated("SIGTERM before the training loop started")
    return real(step, args=args)
  monkeypatch.setattr(ckpt.manager, "restore", interrupted)
  with pytest.raises(preemption.Terminated):
    ckpt.restore_latest(abstract, meta)
  assert sorted(os.listdir(tmp_path / "c")) == ["1", "2"]


def test_missing_meta_falls_back_to_the_previous_checkpoint(tmp_path):
  ckpt, meta, abstract = _saved(tmp_path / "c", [1, 2])
  import shutil
  shutil.rmtree(tmp_path / "c" / "2" / "meta")
  step, state, data = ckpt.restore_latest(abstract, meta)
  assert step == 1 and data == {"next_batch": 1} and float(state["params"]["w"][0]) == 1.0
  assert any(n.startswith("2.unreadable-") for n in os.listdir(tmp_path / "c"))


def test_refusal_offers_the_override_only_when_the_shapes_agree():
  saved = {"model_name": "m", "optimizer": "adamw", "fingerprint": {"model.width": 32},
           "state": {"['params']['w']": [[32], "float32"]}}
  wider = {**saved, "fingerprint": {"model.width": 64}, "state": {"['params']['w']": [[64], "float32"]}}
  assert checkpoint.first_difference(saved, wider) == ("config.model.width is 32 there, 64 now", False)
  relr = {**saved, "fingerprint": {"model.width": 32, "optimizer.lr": 2}}
  assert checkpoint.first_difference(saved, relr)[1] is True


def test_input_pipeline_tuning_does_not_refuse_resume():
  from effjax import config as cfg
  a = cfg.load_config_file(os.path.join(trainer_utils.REPO, "configs/vit.py:runlocal"))
  b = cfg.load_config_file(os.path.join(trainer_utils.REPO, "configs/vit.py:runlocal"))
  b.data.prefetch, b.data.wait_warn_frac = a.data.prefetch + 3, 0.9
  assert checkpoint.fingerprint(a) == checkpoint.fingerprint(b)


def test_a_signal_swallowed_during_compilation_stops_before_the_loop():
  with preemption.Sigterm() as sig:
    try:  # a handler's exception raised inside a callback is lost ("Exception ignored in ...")
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.5)
    except preemption.Terminated:
      pass
    with pytest.raises(preemption.Terminated, match="SIGTERM"):
      with sig.loop():
        pass


def test_sigint_is_handled_like_sigterm():
  with preemption.Sigterm() as sig:
    with sig.loop():
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
      assert sig.agreed(1) and sig.name == "SIGINT"


def test_a_deferred_signal_reaches_the_trainer_and_stops_at_the_loop():
  """The entry point defers (multi-process start-up); the trainer's own Sigterm takes the signal over (it was lost
  between the two before) and the loop's start stops the run. A Sigterm that does not defer stops at once."""
  before = signal.getsignal(signal.SIGTERM)
  with preemption.Sigterm(defer=True) as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # a deferred signal only sets the flag
    assert outer.requested and outer.name == "SIGTERM"
    with preemption.Sigterm() as inner:
      assert inner.requested and inner.defer
      with pytest.raises(preemption.Terminated, match="SIGTERM before the training loop") as stopped:
        with inner.loop():
          pass
      assert not stopped.value.agreed  # one process: no coordination service to leave
    with pytest.raises(preemption.Terminated, match="SIGTERM"):
      with preemption.Sigterm(defer=False):
        pass
    assert signal.getsignal(signal.SIGTERM) == outer._handle  # the refused one installed nothing
    with pytest.raises(preemption.Terminated, match="second signal"):  # Ctrl-C after it: at once
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.2)
  assert signal.getsignal(signal.SIGTERM) == before


def test_metrics_row_cut_mid_line_is_tolerated(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra')
  assert metrics.read_jsonl(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]
  writer = metrics.Writer(str(tmp_path))
  writer.write(2, {"train/loss": 1.5})
  writer.close()
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))] == [1, 2]


def test_workdir_lock_refuses_a_second_run_naming_the_first(tmp_path):
  with checkpoint.workdir_lock(str(tmp_path)):
    child = subprocess.run([sys.executable, "-c", "import sys; from effjax import checkpoint\n"
                            "with checkpoint.workdir_lock(sys.argv[1]): pass", str(tmp_path)],
                           capture_output=True, text=True, cwd=trainer_utils.REPO, env={**os.environ, **ENV},
                           timeout=120)
    assert f"is in use by process {os.getpid()} on" in child.stderr
  with checkpoint.workdir_lock(str(tmp_path)):  # released: usable again
    pass
  with pytest.raises(ConfigError, match="--workdir is empty"):
    with checkpoint.workdir_lock(""):
      pass


@pytest.mark.slow
def test_ctrl_c_in_training_saves_and_a_second_run_is_refused(tmp_path):
  workdir = tmp_path / "w"
  args = [*trainer_utils.TINY_CLI, "--workdir", str(workdir), "--config.total_steps=100000",
          "--config.checkpoint_every_steps=100000"]
  proc = subprocess.Popen([sys.executable, "-m", "effjax.main", *args], cwd=trainer_utils.REPO,
                          env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not ((workdir / "metrics.jsonl").exists() and (workdir / "metrics.jsonl").read_text().count("\n") >= 2):
    assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.1)
  second = trainer_utils.run_cli(args, env=ENV, timeout=120)
  assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr[-2000:]
  assert second.stderr.startswith(f"effjax: error: --workdir {workdir} is in use by process {proc.pid} on")
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  while proc.poll() is None:  # Ctrl-C held down: more signals during the stop and the exit change nothing
    time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
  assert time.time() - sent < 15 and "(preempted, checkpoint saved)" in out
  # the checkpoint holds the step the run had reached (the last one logged), not an older one
  logged = [r["step"] for r in metrics.read_jsonl(str(workdir)) if "train/loss" in r]
  assert len(logged) >= 2 and checkpoint.Checkpointer(workdir / "checkpoints").steps() == [max(logged)]


def test_grain_workers_end_with_the_data(tmp_path):
  """data.worker_count > 0: closing the training data ends its worker processes (they leaked shared memory)."""
  import multiprocessing

  from absl import flags

  from effjax.data import pipeline
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags, which the CLI parses
    flags.FLAGS.mark_as_parsed()
  c = trainer_utils.tiny_vit_config(**{"data.worker_count": 2})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  data = pipeline.train_data(c.data, 8, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), 0)
  assert not multiprocessing.active_children()  # nothing started before the first batch
  first = next(data)["image"]
  assert multiprocessing.active_children()
  data.close()
  assert not multiprocessing.active_children()
  data.set_state({"next_batch": 0})
  np.testing.assert_array_equal(next(data)["image"], first)
  data.close()


def test_restoring_params_logs_no_orbax_warnings(tmp_path, caplog):
  _saved(tmp_path / "c", [1])
  with caplog.at_level("WARNING"):
    params = checkpoint.restore_params(str(tmp_path / "c"))
  assert float(params["w"][1]) == 2.0
  assert not [r for r in caplog.records if r.levelname == "WARNING"], [r.getMessage() for r in caplog.records]


# (processes, soak.py arguments, the signals and moments its seed draws). One process: each moment once and each
# of SIGKILL, SIGTERM, SIGINT once (seed 7). Two processes (seed 16012): a SIGTERM to process 0 alone during start-up
# (0.27 of the reference's start-up time: before the loop, where the old code stopped process 0 alone and its peer
# ended with status 3, after JAX's coordination client's errors or --connect_timeout, or lost the signal; now both
# stop with status 0), then a SIGINT to both 0.3 s apart during a save: both processes must agree on the step they
# stop at (they hung before).
SOAKS = [(1, ["--kills=3", "--steps=16", "--seed=7", "--signal=any", "--modes=startup,training,during save"],
          {"SIGKILL", "SIGTERM", "SIGINT"}, {"startup", "training", "during save"}),
         (2, ["--kills=2", "--steps=10", "--seed=16012", "--signal=mixed", "--modes=startup,training,during save"],
          {"SIGTERM", "SIGINT"}, {"startup", "during save"})]


@pytest.mark.slow
@pytest.mark.parametrize("processes, args, signals, modes", SOAKS, ids=["1", "2"])
def test_soak_small(tmp_path, processes, args, signals, modes):
  """experiments/reliability/soak.py with a few stops at seeded random moments: every SIGTERM/SIGINT life ends on
  its own with status 0, nothing is set aside, and after SIGKILLs too the losses, final params and eval row equal
  an uninterrupted run's bit for bit."""
  import json
  script = os.path.join(trainer_utils.REPO, "experiments/reliability/soak.py")
  result = subprocess.run([sys.executable, script, *args, f"--processes={processes}", f"--workdir={tmp_path}",
                           f"--out={tmp_path / 'soak.json'}"],
                          capture_output=True, text=True, timeout=900, cwd=trainer_utils.REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  summary = json.loads((tmp_path / "soak.json").read_text())
  assert summary["kills"] == len(summary["rows"]) > 1 and summary["differences"] == 0 and summary["finished"]
  assert {row["signal"] for row in summary["rows"]} == signals and {row["mode"] for row in summary["rows"]} == modes
  if processes == 2:  # every process of every life stopped with status 0 (its own stop or the agreed one)
    assert [(row["targets"], row["exit_codes"]) for row in summary["rows"]] == [([0], [0, 0]), ([0, 1], [0, 0])]
  assert np.isfinite(summary["final_loss"])
