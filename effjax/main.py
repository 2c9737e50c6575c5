"""Command line: python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit [--config.a.b=v].

Multi-host: pass --coordinator_address, --num_processes and --process_id (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) and every process runs the same command.
"""
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from effjax import config as config_lib
from effjax import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py[:key=value,...]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for config.json, metrics, checkpoints")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "host:port of process 0 for multi-host runs")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 1)),
                                      "number of processes (hosts)")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", 0)),
                                   "index of this process")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax's INFO chatter out of the console
    absl_logging.set_verbosity(absl_logging.WARNING)
  import jax
  if _NUM_PROCESSES.value > 1:
    if jax.config.jax_platforms in (None, "", "cpu") and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk through gloo
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from effjax import train
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, ValueError) as e:
    sys.exit(f"effjax: error: {str(e).splitlines()[0]}")
  if jax.process_index() == 0:
    summary = ", ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("eval/"))
    print(f"finished at step {result['step']}{' (preempted, checkpoint saved)' if result['preempted'] else ''}: "
          f"{summary}", flush=True)
    if "eval/accuracy" in result:
      print(f"test accuracy: {100 * result['eval/accuracy']:.2f}%", flush=True)


def run():
  """Entry point: checks --config.* overrides against the config before absl parses them."""
  runtime.reexec_with_tcmalloc()
  error = config_lib.check_overrides(sys.argv[1:])
  if error:
    sys.exit(f"effjax: error: {error}")
  app.run(main)


if __name__ == "__main__":
  run()
