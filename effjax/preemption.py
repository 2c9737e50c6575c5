"""SIGTERM and SIGINT (Ctrl-C) handling. Inside the training loop either signal only sets `requested`, and the
loop saves a checkpoint after the current step and stops. Outside it, with one process, either signal stops the
program (`Terminated`, turned into one line by the entry point).

With several processes the stop is agreed: at every step each process publishes whether it was signalled,
all meet at a barrier of the coordination service, and all stop at that same step if any was signalled, so
that every process saves the same step (a process saving alone would wait for its peers forever). The
barrier is a host-side RPC: it does not wait for the devices. A signal during the start-up of a multi-process
run (joining, model init, restore, compilation) also only sets `requested` (with a one-line notice): the
processes agree at one more barrier when they enter the training loop and all stop there together. Stopping
the signalled process at once would take the coordination service (process 0) or a member (any other) away
from live peers, whose JAX client then aborts them. The barrier is safe: up to the loop every process runs the
same collectives in the same order whatever its flag, so none waits in a collective the others skip.
"""
import contextlib
import os
import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # a peer that is alive but this far behind is not a preemption matter
_ending = False  # set by ignore_signals_until_exit


def ignore_signals_until_exit():
  """For the command line once its run is over (finished, or stopped and saved): SIGTERM and SIGINT are ignored
  until the process ends, and a Sigterm exited from now on leaves them so. A further signal, e.g. a peer's own
  SIGINT after an agreed stop, would otherwise turn the clean exit into a kill: CPython resets its handlers to the
  default while it shuts down, and that shutdown waits for the peers."""
  global _ending
  _ending = True
  for sig in SIGNALS:
    signal.signal(sig, signal.SIG_IGN)


class Terminated(BaseException):
  """A signal arrived outside the training loop (nothing new to save). A BaseException, like KeyboardInterrupt:
  no `except Exception` (e.g. one that sets aside an unreadable checkpoint) may swallow it. `agreed`: every
  process of a multi-process run stops with it (so they may leave the coordination service together)."""

  def __init__(self, message, agreed=False):
    super().__init__(message)
    self.agreed = agreed


def _client():
  """The coordination service client of a multi-process run (None before jax.distributed.initialize)."""
  distributed = sys.modules.get("jax._src.distributed")  # not imported: jax.distributed is not initialised
  return None if distributed is None else distributed.global_state.client


class Sigterm:
  """Context manager installing the SIGTERM/SIGINT handler (main thread only; elsewhere it does nothing).

  defer: whether a signal outside the loop only sets `requested` (stopping at the loop's start) instead of
  stopping at once; a SIGINT after a signal then stops at once. None: as an enclosing Sigterm says, else whether
  jax.distributed is initialised. A nested Sigterm (the entry point's, then the trainer's) takes over the
  enclosing one's `requested`; entering one that does not defer after a signal raises Terminated."""

  def __init__(self, defer=None):
    self.requested, self.in_loop, self.previous, self.name, self.defer = False, False, {}, None, defer
    self.stopped = False  # the training loop stopped for a signal (here or inside): further signals change nothing

  def __enter__(self):
    outer = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(outer, Sigterm):
      self.requested, self.name = outer.requested, outer.name
      self.defer = outer.defer if self.defer is None else self.defer
    elif self.defer is None:
      self.defer = _client() is not None
    if self.requested and not self.defer:
      raise Terminated(self._stopped())
    for sig in SIGNALS:
      try:
        self.previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread (e.g. inside a notebook kernel thread)
        pass
    return self

  def _stopped(self, agreed=False):
    every = " (all processes stop)" if agreed else ""
    return f"{self.name} before the training loop started{every}; nothing new to save"

  def _handle(self, signum, frame):
    del frame
    if self.stopped:
      return
    first, self.requested, self.name = not self.requested, True, signal.Signals(signum).name
    if self.in_loop:
      return
    if not self.defer:
      raise Terminated(self._stopped())
    if first:  # os.write: a handler writing to sys.stderr while the main thread does raises "reentrant call"
      os.write(2, f"effjax: {self.name} during start-up; the run stops before its training loop (Ctrl-C again: at "
               f"once)\n".encode())
    elif signum == signal.SIGINT:  # the user insists; a peer may then end with an error of its own
      raise Terminated("a second signal (SIGINT) during start-up; this process stops at once, without its peers")

  @contextlib.contextmanager
  def loop(self):
    """Inside: a signal only sets `requested`. On entry the run stops (Terminated) if a signal came before:
    with several processes, if any process was signalled (agreed at a barrier); with one, also a signal whose
    exception was swallowed on the way (e.g. one that arrived inside a callback during compilation)."""
    if self.agreed("start"):
      several = _client() is not None
      raise Terminated(self._stopped(several), agreed=several)
    self.in_loop = True
    try:
      yield
    finally:
      self.in_loop = False
      self.stopped = self.requested  # the loop stopped for a signal (and saved): further signals change nothing

  def agreed(self, key):
    """Whether the run stops at `key` (a step, or "start" on entering the loop): this process's flag, or with
    several processes whether any process's flag is set at the barrier `key`."""
    import jax
    if jax.process_count() == 1:
      return self.requested
    client = _client()
    if self.requested:
      client.key_value_set(f"effjax/stop/{key}/{jax.process_index()}", self.name)
    client.wait_at_barrier(f"effjax/step/{key}", _BARRIER_TIMEOUT_MS)
    stops = client.key_value_dir_get(f"effjax/stop/{key}/")
    if stops and not self.requested:
      self.requested, self.name = True, "a peer's " + stops[0][1]
    return bool(stops)

  def __exit__(self, *exc):
    if _ending:
      return
    outer = getattr(self.previous.get(signal.SIGTERM), "__self__", None)
    if self.stopped and isinstance(outer, Sigterm):  # the run stopped in this one's loop: so in the enclosing one
      outer.requested, outer.name, outer.stopped = True, self.name, True
    for sig, previous in self.previous.items():
      if previous is not None:  # None: the previous handler was not installed from Python
        signal.signal(sig, previous)
