"""Orbax checkpoints of the train state, the step and the data iterator, with a resume order.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` is the train-state pytree (params, optimizer
state, model collections, EMA, rng, step); `data` is the grain iterator state, one JSON per process.
Saves are asynchronous and the last `keep` checkpoints are kept. A checkpoint that fails to restore
(truncated, partially written) is skipped with a warning, renamed to <step>.unreadable-<time>, and the
previous one is used.
"""
import os
import time

import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from effjax import metrics

_ITEMS = ("state", "data")


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under `directory`."""

  def __init__(self, directory, keep=3, async_save=True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, data_iterator, force=False):
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

  def restore_latest(self, abstract_state, data_iterator):
    """Restores the newest readable checkpoint into (state, iterator); (None, None) when there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: arrays come back sharded.
    """
    result, unreadable = (None, None), []
    for step in reversed(self.steps()):
      try:
        result = step, self._restore(step, abstract_state, data_iterator)
        break
      except Exception as e:  # a torn write shows up as many different exception types
        metrics.logger().warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                                 self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        unreadable.append(step)
    if unreadable:  # set them aside (kept for inspection) so that those steps can be saved again
      if jax.process_index() == 0:
        for step in unreadable:
          path = os.path.join(self.directory, str(step))
          os.rename(path, f"{path}.unreadable-{int(time.time())}")
      multihost_utils.sync_global_devices("effjax_checkpoint_set_aside")
      self.manager.reload()
    return result

  def _restore(self, step, abstract_state, data_iterator):
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]


def restore_params(path):
  """The params of the newest checkpoint in `path` (a WORKDIR/checkpoints directory), as host arrays."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f"checkpoint directory {path} does not exist")
  manager = ocp.CheckpointManager(path, item_handlers={"state": ocp.StandardCheckpointHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise ValueError(f"no checkpoint found in {path}")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return restored["state"]["params"]
