"""Orbax checkpoints of the train state, the step and the data position, with a compatibility check.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `state` is the train-state pytree (params,
optimizer state, model collections, EMA, rng, step); `data` is the data iterator's global state
({"next_batch": n}, the same for any number of processes); `meta` says what the checkpoint was made from:
the model name, the optimizer name, every config key that defines the run (`fingerprint`) and the
path -> [shape, dtype] of every state leaf. Saves are asynchronous and the last `keep` are kept.

Restoring compares `meta` with the current run first. A difference is an `IncompatibleCheckpoint` (one
line naming the first difference and the ways on) and nothing is touched. Only a checkpoint that fails
to read (truncated, partially written) is set aside, renamed to <step>.unreadable-<time> with a warning,
and the previous one is tried; nothing is restored into the data iterator until a checkpoint has been
read completely, so a run that finds no readable checkpoint starts exactly like a fresh one.
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from effjax import metrics
from effjax.config import ConfigError

# Config keys that may change between a checkpoint and the run resuming it (run length, logging,
# evaluation, checkpointing, topology). Every other key is part of the fingerprint.
RESUMABLE_CHANGES = ("total_steps", "total_epochs", "log_every_steps", "eval_every_steps",
                     "checkpoint_every_steps", "keep_checkpoints", "progress_bar", "resume", "init_from",
                     "evaluators", "evaluator", "eval_batch_size", "data.eval_split", "data.eval_examples",
                     "data.worker_count", "data.prefetch", "data.wait_warn_frac", "mesh", "sharding_rules",
                     "allow_config_change")
OVERRIDE_KEY = "allow_config_change"


class IncompatibleCheckpoint(ConfigError):
  """The checkpoint was made by another model, optimizer or config than the run trying to resume it."""


def fingerprint(config):
  """The flat {dotted key: value} of every config key that defines the run (all but RESUMABLE_CHANGES)."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      name = prefix + key
      if name in RESUMABLE_CHANGES:
        continue
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(value, name + ".")
      else:
        flat[name] = value
  walk(config, "")
  return json.loads(json.dumps(flat, default=str))  # tuples -> lists, as they come back from the JSON


def describe(config, abstract_state):
  """The `meta` item of a checkpoint of `abstract_state` made by `config`."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
  return {"model_name": config.model_name, "optimizer": config.optimizer.name,
          "fingerprint": fingerprint(config),
          "state": {jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)] for p, x in leaves}}


def first_difference(saved, current, allow_config_change=False):
  """One phrase naming the first difference between two `describe` results, or None; and whether the
  difference is one `allow_config_change` can accept (the state's tree and shapes agree)."""
  def show(value):
    return json.dumps(value)
  state_difference = None
  a, b = saved["state"], current["state"]
  for key in sorted(set(a) | set(b), key=lambda k: (not k.startswith("['params']"), k)):
    if key not in a:
      state_difference = f"state{key} is new (not in the checkpoint)"
    elif key not in b:
      state_difference = f"state{key} is in the checkpoint but not in this run"
    elif a[key] != b[key]:
      state_difference = f"state{key} has shape/dtype {a[key]} there, {b[key]} now"
    if state_difference:
      break
  if not allow_config_change:
    if saved["model_name"] != current["model_name"]:
      return f"model {saved['model_name']!r} there, {current['model_name']!r} now", state_difference is None
    if saved["optimizer"] != current["optimizer"]:
      return f"optimizer {saved['optimizer']!r} there, {current['optimizer']!r} now", state_difference is None
    a, b = saved["fingerprint"], current["fingerprint"]
    for key in sorted(set(a) | set(b), key=lambda k: (not k.startswith("model"), k)):
      if a.get(key, "<absent>") != b.get(key, "<absent>"):
        return (f"config.{key} is {show(a.get(key, '<absent>'))} there, {show(b.get(key, '<absent>'))} now",
                state_difference is None)
  return state_difference, False


def _drop_closed_loop_callbacks():
  """Silences one echo of a failed restore: the tensorstore reads still in flight complete after orbax has closed
  the restore's event loop, and each callback's "RuntimeError: Event loop is closed" reached sys.unraisablehook
  (76 tracebacks for one truncated manifest.ocdbt). From the first restore on, exactly those are dropped; every
  other unraisable exception still goes to the hook that was installed."""
  previous = sys.unraisablehook
  if getattr(previous, "effjax_drops_closed_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.effjax_drops_closed_loop = True
  sys.unraisablehook = hook


def _save_whole_arrays_on_cpu():
  """On CPU, saves each array whole from its first replica. orbax's default there (replica-parallel saving: every
  replica of a replicated array writes one slice of it) gains nothing when all devices share the host's memory,
  and compiles one slice per array shape: the first save of 60 small arrays on 8 CPU devices took 12.3 s instead
  of 0.3 s. Accelerators keep orbax's default."""
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if jax.default_backend() != "cpu" or not getattr(handler, "_use_replica_parallel", False):
    return
  absl_logger = logging.getLogger("absl")  # orbax warns that it overrides the registered handler: intended here
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)
  finally:
    absl_logger.setLevel(level)


class Checkpointer:
  """Saves and restores (train state, data position) pairs under `directory`."""

  def __init__(self, directory, keep=3, async_save=True):
    _save_whole_arrays_on_cpu()
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, data_state, meta, force=False):
    """Saves `state`, the data iterator's `data_state` and `meta` (a `describe` result) as `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

  def restore_latest(self, abstract_state, meta, allow_config_change=False):
    """(step, state, data_state) of the newest readable checkpoint; (None, None, None) when there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: arrays come back sharded.
    `meta` describes the current run; a checkpoint that differs raises IncompatibleCheckpoint.
    """
    self._warn_about_files()
    _drop_closed_loop_callbacks()  # (a failure's callbacks can arrive before its exception)
    result, unreadable = (None, None, None), []
    for step in reversed(self.steps()):
      path = os.path.join(self.directory, str(step))
      try:
        if not os.path.exists(os.path.join(path, "meta")):
          raise FileNotFoundError(f"{path}/meta is missing")
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # a torn write shows up as many different exception types (never a signal's
        # preemption.Terminated, a BaseException: an interrupted restore sets nothing aside)
        self._unreadable(step, e)
        unreadable.append(step)
        continue
      self._check(step, saved, meta, allow_config_change)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        result = step, restored["state"], dict(restored["data"])
        break
      except Exception as e:
        self._unreadable(step, e)
        unreadable.append(step)
    if unreadable:  # set them aside (kept for inspection) so that those steps can be saved again
      if jax.process_index() == 0:
        for step in unreadable:
          path = os.path.join(self.directory, str(step))
          os.rename(path, f"{path}.unreadable-{int(time.time())}")
      multihost_utils.sync_global_devices("effjax_checkpoint_set_aside")
      self.manager.reload()
    if result[0] is not None:
      for step in self.steps()[:-self.keep]:  # e.g. a run killed between a save and its cleanup
        self.manager.delete(step)
    return result

  def _check(self, step, saved, meta, allow_config_change):
    difference, overridable = first_difference(saved, meta, allow_config_change)
    if difference is None:
      return
    path = os.path.join(self.directory, str(step))
    ways = f"use a new --workdir, or fine-tune from it with --config.init_from.path={self.directory}"
    if overridable:
      ways += f", or resume it anyway with --config.{OVERRIDE_KEY}=True (the state's shapes agree)"
    raise IncompatibleCheckpoint(f"checkpoint {path} was made by another run: {difference}; "
                                 f"nothing was changed. To go on, {ways}")

  def _unreadable(self, step, error):
    metrics.logger().warning("checkpoint %s/%d is unreadable (%s: %s); setting it aside", self.directory, step,
                             type(error).__name__, (str(error).splitlines() or [""])[0][:200])

  def _warn_about_files(self):
    """Warns about step-numbered entries that are not directories (orbax skips them silently)."""
    for name in sorted(os.listdir(self.directory)):
      path = os.path.join(self.directory, name)
      if name.isdigit() and not os.path.isdir(path):
        metrics.logger().warning("%s is not a checkpoint directory (a file?); ignored", path)


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds WORKDIR/lock (an advisory flock, held by process 0, released by the OS however the process ends)
  for the duration of a run; a second run on the same workdir raises ConfigError naming the holder."""
  if not workdir:
    raise ConfigError("--workdir is empty; name a directory for the run")
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      raise ConfigError(f"--workdir {workdir} is in use by {holder}; wait for it to end, or use another "
                        f"--workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%H:%M:%S')})".encode(),
              0)
    yield
  finally:
    os.close(fd)


def restore_params(path):
  """The params of the newest checkpoint in `path` (a WORKDIR/checkpoints directory), as host arrays."""
  return restore_variables(path)["params"]


def restore_variables(path):
  """{"params": ..., <collection>: ...} (params and model collections such as batch statistics) of the newest
  checkpoint in `path` (a WORKDIR/checkpoints directory), as host arrays."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f"checkpoint directory {path} does not exist")
  # create=False and no save (rather than read_only=True, which logs three warnings on every restore)
  manager = ocp.CheckpointManager(path, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                      "data": ocp.JsonCheckpointHandler(),
                                                      "meta": ocp.JsonCheckpointHandler()},
                                  options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step()
  if step is None:
    raise ValueError(f"no checkpoint found in {path}")
  # onto this process's first device, whatever topology saved it (a checkpoint of a 2-process run included)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return {"params": restored["state"]["params"], **(restored["state"].get("model_state") or {})}
