"""Command line: python -m effjax.main --config configs/vit.py:runlocal --workdir runs/vit [--config.a.b=v].

Multi-host: pass --coordinator_address, --num_processes and --process_id (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) and every process runs the same command. --peer_timeout (seconds) bounds
how long a survivor waits for a hung peer (a killed one is noticed at once); --connect_timeout bounds the
wait for all processes to join.

Every failure ends in one line on stderr, `effjax: error: ...`, and a non-zero exit status; the full trace
goes to WORKDIR/error.log, which the line names. A SIGTERM stops the run cleanly at any moment (inside
the training loop after saving a checkpoint) with a message and exit status 0; in a multi-process run one
that comes before the training loop stops every process together when they reach it (see effjax.preemption).
"""
import logging
import os
import signal
import sys
import threading
import traceback

if __name__ == "__main__":  # no SIGTERM/SIGINT kills the start-up: held back until run() installs the handler
  signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))

from absl import app, flags, logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from effjax import config as config_lib, config_overrides, preemption, runtime  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<file>.py[:key=value,...]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for config.json, metrics, checkpoints")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "host:port of process 0 for multi-host runs")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 1)),
                                      "number of processes (hosts)")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", 0)),
                                   "index of this process")
_PEER_TIMEOUT = flags.DEFINE_float("peer_timeout", 30.0, "seconds without a heartbeat from a peer process "
                                   "before the job ends (a killed peer is noticed at once)")
_CONNECT_TIMEOUT = flags.DEFINE_integer("connect_timeout", 300, "seconds to wait for all processes to join")
flags.mark_flags_as_required(["config", "workdir"])

_ending = threading.Lock()


def _end(line, code):
  """Prints `line` as the last thing on stderr and ends the process (from any thread, once)."""
  if not _ending.acquire(blocking=False):
    threading.Event().wait()  # another thread is ending the process
  sys.stdout.flush()
  sys.stderr.write(line + "\n")
  sys.stderr.flush()
  os._exit(code)  # no exit handlers: they could print after the line or wait for a dead peer


def _fail(error, workdir):
  """Ends with one line naming `error`; its full trace goes to WORKDIR/error.log (but for a ConfigError)."""
  message = (str(error).splitlines() or [""])[0]
  if isinstance(error, config_lib.ConfigError):  # the message says it all: no trace
    _end(f"effjax: error: {message}", 1)
  message = f"{type(error).__name__}: {message}"
  try:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "error.log")
    with open(path, "a") as f:
      f.write("".join(traceback.format_exception(error)))
    message += f" (full trace in {path})"
  except OSError:  # no usable workdir: the message is all there is
    pass
  _end(f"effjax: error: {message}", 1)


def _last_checkpoint_step(workdir):
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  except OSError:
    steps = []
  return max(steps) if steps else "none"


def main(argv):
  workdir = _WORKDIR.value
  with preemption.Sigterm(defer=_NUM_PROCESSES.value > 1):  # one process: a signal so far stops it now
    try:
      if len(argv) > 1:
        raise config_lib.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
      if os.path.exists(workdir) and not os.path.isdir(workdir):
        _end(f"effjax: error: --workdir {workdir} is a file, not a directory", 1)
      _run(workdir)
    except preemption.Terminated as e:
      _end(f"effjax: stopped: {e}", 0)
    except Exception as e:
      _fail(e, workdir)


def _check_coordinator():
  """One line (instead of a crash inside jax.distributed) for a bad --coordinator_address or a bound port."""
  import socket
  address = _COORDINATOR.value or ""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    _end(f"effjax: error: --coordinator_address {address!r} is not host:port (needed with --num_processes "
         f"{_NUM_PROCESSES.value})", 2)
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    _end(f"effjax: error: --process_id {_PROCESS_ID.value} is not in [0, {_NUM_PROCESSES.value})", 2)
  if _PROCESS_ID.value == 0:  # process 0 serves the coordinator on that port
    with socket.socket() as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the coordinator's server does: TIME_WAIT is fine
      try:
        s.bind(("", int(port)))
      except OSError as e:
        _end(f"effjax: error: process 0 cannot serve --coordinator_address {address}: port {port}: {e.strerror}", 2)


class _OrbaxErrorsToFile(logging.Filter):
  """orbax logs each stage of a failed save at ERROR with its trace (326 stderr lines for one full disk), and the
  failure also reaches the trainer, which ends with one line: those records go to WORKDIR/error.log instead."""

  def __init__(self, path):
    super().__init__()
    self.path = path

  def filter(self, record):
    if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    try:
      with open(self.path, "a") as f:
        f.write(logging.Formatter("%(asctime)s %(pathname)s:%(lineno)d %(message)s").format(record) + "\n")
    except OSError:  # the disk that is full
      pass
    return False


def _run(workdir):
  if not flags.FLAGS["verbosity"].present:  # keep orbax's INFO chatter out of the console
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(_OrbaxErrorsToFile(os.path.join(workdir, "error.log")))
  import jax
  watchdog = None
  if _NUM_PROCESSES.value > 1:
    if jax.config.jax_platforms in (None, "", "cpu") and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk through gloo
    _check_coordinator()
    if "jax_enable_preemption_service" in jax.config.values:  # its C++ SIGTERM handler takes the signal from
      jax.config.update("jax_enable_preemption_service", False)  # effjax's until the trainer reinstalls that
    joined = threading.Timer(_CONNECT_TIMEOUT.value, _end, (  # before jax's own timeout, which aborts the process
        f"effjax: error: not all {_NUM_PROCESSES.value} processes joined {_COORDINATOR.value} within "
        f"--connect_timeout={_CONNECT_TIMEOUT.value} s; start every process with the same --coordinator_address "
        f"and --num_processes", 3))
    joined.daemon = True
    joined.start()
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               initialization_timeout=_CONNECT_TIMEOUT.value + 60,
                               heartbeat_timeout_seconds=int(max(100, 3 * _PEER_TIMEOUT.value)))
    joined.cancel()
    from effjax import peers

    def lost(peer):
      _end(f"effjax: error: process {peer} of {_NUM_PROCESSES.value} is gone (killed, crashed or unreachable); "
           f"ending the job. Last checkpoint: step {_last_checkpoint_step(workdir)}; rerun to resume", 3)
    watchdog = peers.Watchdog(jax.process_index(), jax.process_count(), _COORDINATOR.value.rsplit(":", 1)[0],
                              _PEER_TIMEOUT.value, lost)
  from effjax import train
  try:
    result = train.train_and_evaluate(_CONFIG.value, workdir)
    preemption.ignore_signals_until_exit()
  except preemption.Terminated as e:
    if e.agreed and watchdog is not None:  # every process stops here: leave the coordination service together
      jax.distributed.shutdown()  # (a peer still in it aborts when process 0, which serves it, ends first)
      watchdog.close()  # only now: a peer killed meanwhile still ends this one with its one line
    raise
  if watchdog is not None:
    watchdog.close()
  if jax.process_index() == 0:
    summary = ", ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("eval/"))
    print(f"finished at step {result['step']}{' (preempted, checkpoint saved)' if result['preempted'] else ''}: "
          f"{summary}", flush=True)
    if "eval/accuracy" in result:
      print(f"test accuracy: {100 * result['eval/accuracy']:.2f}%", flush=True)


def _parse_flags(argv):
  """absl's flag parsing, which runs the config file once and applies the --config.* overrides: a failure there (a
  bad flag value, a failing config file, an override that names no key) ends in one line, not a traceback."""
  try:
    parsed = flags.FLAGS(argv)
    flags.FLAGS["config"].value.get("model_name")  # ml_collections defers an unreadable file's error to first use
    return parsed
  except preemption.Terminated:
    raise
  except Exception as e:
    _end(f"effjax: error: {config_overrides.flag_error(e, argv)}", 2)


def run():
  """Entry point: absl parses the flags (_parse_flags), then main()."""
  signal.pthread_sigmask(signal.SIG_BLOCK, preemption.SIGNALS)  # the mask and a pending signal survive the re-exec
  runtime.reexec_with_allocator()
  try:
    with preemption.Sigterm(defer=True):  # from the first moment until main() knows the number of processes
      signal.pthread_sigmask(signal.SIG_UNBLOCK, preemption.SIGNALS)
      try:
        app.run(main, flags_parser=_parse_flags)
      except preemption.Terminated as e:
        _end(f"effjax: stopped: {e}", 0)
  finally:  # app.run ends in SystemExit
    preemption.ignore_signals_until_exit()


if __name__ == "__main__":
  run()
