"""Metric logging: metrics.jsonl and TensorBoard events on process 0, a console progress bar, NaN guard."""
import json
import logging
import math
import os
import sys

import jax
import tqdm


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is at the time (so notebooks and test capture see the messages)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def logger():
  """The "effjax" console logger (INFO, stderr), independent of absl's verbosity."""
  log = logging.getLogger("effjax")
  if not log.handlers:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s effjax: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
  return log


class NonFiniteError(FloatingPointError):
  """Raised when a logged metric is NaN or Inf; names the step and the metric."""


def check_finite(step, metrics):
  """Raises NonFiniteError for the first non-finite metric, checking losses before everything else."""
  for name, value in sorted(metrics.items(), key=lambda kv: ("loss" not in kv[0], kv[0])):
    if not math.isfinite(value):
      raise NonFiniteError(f"step {step}: metric {name} is {value}; stopping (the last checkpoint is intact)")


class Writer:
  """Appends {"step": ..., **metrics} rows to WORKDIR/metrics.jsonl and TensorBoard; process 0 only."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    self.jsonl = self.tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_torn_row(path)
      self.jsonl = open(path, "a")
      self.tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

  def write(self, step, metrics):
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self.jsonl.flush()
    for name, value in metrics.items():
      self.tb.add_scalar(name, float(value), int(step))
    self.tb.flush()

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever it is installed (only to
  accept torch tensors, which effjax never passes), which costs a process about a second. A torch the program has
  already imported stays as it is."""
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _drop_torn_row(path):
  """Cuts a last row written only in part (e.g. on a full disk) so that appended rows start on a new line."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(workdir):
  """All rows of WORKDIR/metrics.jsonl (a last row cut mid-line, e.g. by a full disk, is left out)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [line for line in f if line.strip()]
  if lines and not lines[-1].endswith("\n"):
    lines.pop()
  return [json.loads(line) for line in lines]


class ProgressBar:
  """One console line (tqdm): step/total, steps/s, ETA and the latest loss, on process 0 only.

  On a terminal it redraws at most every 0.5 s; into a log file or pipe at most once a minute."""

  def __init__(self, total_steps, start_step, enabled=True):
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True,
                         disable=not (enabled and jax.process_index() == 0),
                         mininterval=0.5 if sys.stderr.isatty() else 60.0)

  def update(self, step, loss):
    self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    self.bar.update(step - self.bar.n)

  def close(self):
    self.bar.close()
