"""Soak test of resume: stop a run N times at random moments, then compare it with an uninterrupted run.

    PYTHONPATH=. python experiments/reliability/soak.py --kills=20 --out=experiments/reliability/soak_n20.json
    PYTHONPATH=. python experiments/reliability/soak.py --kills=20 --signal=mixed --processes=2 --out=...

--signal chooses how a life is stopped: SIGKILL (default), SIGTERM, SIGINT, "mixed" (TERM or INT at random) or
"any" (KILL, TERM or INT at random). With --processes=2 every life (and the reference) is two processes on
localhost; a signal goes to process 0, process 1 or both (0.3 s apart), at random. A life stopped by SIGTERM/SIGINT
must end on its own within --exit_within seconds with exit status 0 (all its processes), no traceback, and no
checkpoint set aside as unreadable (a good checkpoint must never be), and each process's last stderr line must be
effjax's own (`effjax: stopped: ...`, or with status 3 the watchdog's `effjax: error: process i of 2 is gone ...`,
which is accepted) with no message of JAX's coordination client before it; the row records the exit statuses and how
long it took. (With two processes, a signal before the training loop stops both when they reach it, with status 0.)

A reference run of the tiny ViT (the tests' config, `--steps` steps, a checkpoint every 2 steps) runs
uninterrupted first; it takes S seconds to start (imports, compilation). Then the same command runs in
another workdir and is killed N times; each life is killed, at random, one of three ways:
  - startup: U(0, S) seconds after its start (imports, compilation, restore), or once it has logged
    k ~ U{1..steps/N} more steps if that comes first;
  - training: once it has logged k ~ U{1..steps/N} more steps, plus U(0, 50 ms);
  - during save: once it has logged k more steps, at the first moment a new checkpoint is being written
    (a new orbax temporary directory exists: the asynchronous save is in flight);
and is then rerun to the end. Pass: every logged step's train loss equals the reference's bit for bit
(also steps logged twice because a life died before checkpointing them), the final params are identical
and the final eval row is the same. Writes a JSON summary (one row per kill) to --out.
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import numpy as np  # noqa: E402

from effjax import checkpoint, metrics  # noqa: E402

import trainer_utils  # noqa: E402


def command(workdir, steps):
  return [sys.executable, "-m", "effjax.main", *trainer_utils.TINY_CLI, "--workdir", workdir,
          f"--config.total_steps={steps}", "--config.checkpoint_every_steps=2", "--config.eval_every_steps=-1"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """The run's processes (one, or two on localhost), started together; all runs share a persistent
  compilation cache (same executables, shorter lives)."""

  def __init__(self, workdir, steps, processes):
    env = {**os.environ, "XLA_FLAGS": trainer_utils.xla_flags(1), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(workdir), "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    multi = [] if processes == 1 else [f"--coordinator_address=127.0.0.1:{_free_port()}",
                                       f"--num_processes={processes}"]
    self.procs = [subprocess.Popen(command(workdir, steps) + multi + ([f"--process_id={i}"] if multi else []),
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for i in range(processes)]

  def poll(self):
    """None while any process runs, else the first non-zero exit status (0 when all succeeded)."""
    codes = [p.poll() for p in self.procs]
    return None if None in codes else next((c for c in codes if c), 0)

  def communicate(self, timeout=None):
    outs = [p.communicate(timeout=timeout) for p in self.procs]
    self.returncode, self.errs = self.poll(), [e for _, e in outs]
    return "".join(o for o, _ in outs), "".join(self.errs)

  def kill(self):
    for p in self.procs:
      p.kill()


def _ends_well(err, code):
  """Whether a signalled process's stderr ends in effjax's own line for exit status `code` (0: stopped before the
  loop, or the trainer's "saved checkpoint at step N and stopped"; 3: the watchdog's), with no trace, no checkpoint
  set aside and nothing from JAX's coordination client (which reports a vanished peer, then aborts)."""
  last = (err.strip().splitlines() or [""])[-1]
  ours = last.startswith("effjax: error: process ") if code == 3 else (
      last.startswith("effjax: stopped: ") or last.endswith(" and stopped"))
  return ours and not any(b in err for b in ("Traceback", "unreadable", "coordination", "Terminating process", "GRPC"))


def temporary(workdir):
  """Orbax's temporary directories: a checkpoint being written (or left by a killed life)."""
  try:
    return {name for name in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in name}
  except OSError:
    return set()


def committed(workdir):
  try:
    return max([int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()], default=None)
  except OSError:
    return None


def logged(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for _ in f)
  except OSError:
    return 0


def one_life(workdir, steps, mode, delay, more_steps, sig=signal.SIGKILL, processes=1, targets=(0,),
             exit_within=60.0):
  """Starts the run and stops it as `mode` says with `sig` (to the processes in `targets`); returns a row
  describing the kill (None: it finished)."""
  leftovers, rows = temporary(workdir), logged(workdir)
  proc, began = Run(workdir, steps, processes), time.time()

  def wait(done):
    while proc.poll() is None and not done():
      time.sleep(0.002)
  if mode == "startup":  # (or, on a fast start, once it has logged `more_steps` steps)
    wait(lambda: time.time() >= began + delay or logged(workdir) >= rows + more_steps)
  else:
    wait(lambda: logged(workdir) >= rows + more_steps)
    if mode == "training":
      time.sleep(delay)
    else:
      wait(lambda: temporary(workdir) - leftovers)
  in_save, steps_logged = bool(temporary(workdir) - leftovers), logged(workdir) - rows  # 0: before the loop's 1st step
  if proc.poll() is not None:
    _, err = proc.communicate()
    if proc.returncode != 0:
      raise SystemExit(f"a life ended with exit status {proc.returncode} before its kill:\n{err[-2000:]}")
    return None
  sent = time.time()
  for i, target in enumerate(targets):
    if i:
      time.sleep(0.3)
    proc.procs[target].send_signal(sig)
  if sig == signal.SIGKILL:
    proc.kill()
    proc.communicate()
  else:
    try:
      _, err = proc.communicate(timeout=exit_within)
    except subprocess.TimeoutExpired:
      proc.kill()
      raise SystemExit(f"a life did not end within {exit_within} s of {sig.name} ({mode}, targets {targets})")
    codes = [p.returncode for p in proc.procs]  # 3: the watchdog saw a peer gone (one line)
    if any(c not in (0, 3) for c in codes) or codes[targets[0]] != 0 or not all(
        _ends_well(e, c) for e, c in zip(proc.errs, codes)):
      raise SystemExit(f"a life stopped by {sig.name} ({mode}, targets {targets}) ended with statuses {codes}:\n"
                       f"{err[-3000:]}")
  return {"mode": mode, "signal": sig.name, "targets": list(targets), "exit_codes": [p.returncode for p in proc.procs],
          "steps_logged": steps_logged, "seconds_after_start": round(sent - began, 3),
          "exit_seconds": round(time.time() - sent, 3),
          "save_in_flight": in_save, "last_checkpoint": committed(workdir)}


def compare(reference, soaked):
  """Number of differences: per-step losses (every logged row), final params, final eval row."""
  ref_rows, rows = metrics.read_jsonl(reference), metrics.read_jsonl(soaked)
  ref_loss = {r["step"]: r["train/loss"] for r in ref_rows if "train/loss" in r}
  differences = sum(r["train/loss"] != ref_loss.get(r["step"]) for r in rows if "train/loss" in r)
  differences += len(set(ref_loss) - {r["step"] for r in rows if "train/loss" in r})
  a = checkpoint.restore_params(os.path.join(reference, "checkpoints"))
  b = checkpoint.restore_params(os.path.join(soaked, "checkpoints"))
  import jax
  differences += sum(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a),
                                                                                         jax.tree.leaves(b)))
  evals = [[{k: v for k, v in r.items() if k.startswith("eval/")} for r in rs if "eval/accuracy" in r]
           for rs in (ref_rows, rows)]
  differences += evals[0][-1:] != evals[1][-1:]
  return differences, float(list(ref_loss.values())[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="/tmp/effjax_soak")
  parser.add_argument("--out", required=True)
  parser.add_argument("--signal", default="SIGKILL", choices=["SIGKILL", "SIGTERM", "SIGINT", "mixed", "any"])
  parser.add_argument("--processes", type=int, default=1, choices=[1, 2])
  parser.add_argument("--modes", default="startup,training,during save",
                      help="comma-separated moments to choose from: startup, training, during save")
  parser.add_argument("--exit_within", type=float, default=60.0, help="seconds a signalled life may take to end")
  args = parser.parse_args()
  rand = random.Random(args.seed)
  reference, soaked = os.path.join(args.workdir, "reference"), os.path.join(args.workdir, "soaked")
  for path in (reference, soaked):
    if os.path.exists(path):
      raise SystemExit(f"{path} exists; pass an empty --workdir")

  began = time.time()
  proc = Run(reference, args.steps, args.processes)
  _, err = proc.communicate()
  if proc.returncode != 0:
    raise SystemExit(f"the reference run failed:\n{err[-3000:]}")
  total = time.time() - began
  rows = metrics.read_jsonl(reference)
  startup = total - sum(r.get("train/step_time_s", 0.0) for r in rows)
  train_time = total - startup
  print(f"reference: {total:.1f} s ({startup:.1f} s startup, {train_time:.1f} s training)", flush=True)

  kills = []
  while len(kills) < args.kills:
    mode = rand.choice(args.modes.split(","))
    delay = rand.uniform(0, startup) if mode == "startup" else rand.uniform(0, 0.05)
    choices = {"mixed": ["SIGTERM", "SIGINT"], "any": ["SIGKILL", "SIGTERM", "SIGINT"]}.get(args.signal, [args.signal])
    sig = signal.Signals[rand.choice(choices) if len(choices) > 1 else args.signal]  # one signal: no draw
    targets = rand.choice([(0,), (1,), (0, 1)]) if args.processes == 2 else (0,)
    row = one_life(soaked, args.steps, mode, delay, rand.randint(1, max(1, args.steps // args.kills)), sig,
                   args.processes, targets, args.exit_within)
    if row is None:
      raise SystemExit(f"the run finished after {len(kills)} kills; pass more --steps")
    kills.append(row)
    print(f"kill {len(kills)}: {row}", flush=True)
  proc = Run(soaked, args.steps, args.processes)
  _, err = proc.communicate()
  finished = proc.returncode == 0
  differences, final_loss = compare(reference, soaked)
  summary = {"kills": len(kills), "signal": args.signal, "processes": args.processes, "steps": args.steps,
             "differences": int(differences), "finished": finished,
             "kills_during_a_save": sum(k["save_in_flight"] for k in kills),
             "kills_before_the_first_checkpoint": sum(k["last_checkpoint"] is None for k in kills),
             "final_loss": final_loss, "reference_seconds": round(total, 1),
             "soak_seconds": round(time.time() - began - total, 1), "rows": kills}
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=1)
  print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
  if differences or not finished:
    raise SystemExit(f"FAILED: {differences} differences, finished={finished}\n{err[-2000:]}")


if __name__ == "__main__":
  main()
