"""SIGTERM and SIGINT (Ctrl-C) handling. Outside the training loop either signal stops the program
(`Terminated`, turned into one line by the entry point); inside the loop it only sets `requested`, and the
loop saves a checkpoint after the current step and stops.

With several processes the stop is agreed: at every step each process publishes whether it was signalled,
all meet at a barrier of the coordination service, and all stop at that same step if any was signalled, so
that every process saves the same step (a process saving alone would wait for its peers forever). The
barrier is a host-side RPC: it does not wait for the devices.
"""
import contextlib
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # a peer that is alive but this far behind is not a preemption matter


class Terminated(BaseException):
  """A signal arrived outside the training loop (nothing new to save). A BaseException, like KeyboardInterrupt:
  no `except Exception` (e.g. one that sets aside an unreadable checkpoint) may swallow it."""


class Sigterm:
  """Context manager installing the SIGTERM/SIGINT handler (main thread only; elsewhere it does nothing)."""

  def __init__(self):
    self.requested, self.in_loop, self.previous, self.name = False, False, {}, None

  def __enter__(self):
    for sig in SIGNALS:
      try:
        self.previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread (e.g. inside a notebook kernel thread)
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested, self.name = True, signal.Signals(signum).name
    if not self.in_loop:
      raise Terminated(f"{self.name} before the training loop started; nothing new to save")

  @contextlib.contextmanager
  def loop(self):
    """Inside: a signal only sets `requested`. A signal whose exception was swallowed on the way (e.g. one
    that arrived inside a callback during compilation) stops the program on entry."""
    if self.requested:
      raise Terminated(f"{self.name} before the training loop started; nothing new to save")
    self.in_loop = True
    try:
      yield
    finally:
      self.in_loop = False

  def agreed(self, step):
    """Whether the run stops after `step`: this process's flag, or with several processes, any process's."""
    import jax
    if jax.process_count() == 1:
      return self.requested
    from jax._src import distributed
    client = distributed.global_state.client
    if self.requested:
      client.key_value_set(f"effjax/stop/{step}/{jax.process_index()}", self.name)
    client.wait_at_barrier(f"effjax/step/{step}", _BARRIER_TIMEOUT_MS)
    stop = bool(client.key_value_dir_get(f"effjax/stop/{step}/"))
    if stop and not self.requested:
      self.requested, self.name = True, "a peer's " + client.key_value_dir_get(f"effjax/stop/{step}/")[0][1]
    return stop

  def __exit__(self, *exc):
    for sig, previous in self.previous.items():
      if previous is not None:  # None: the previous handler was not installed from Python
        signal.signal(sig, previous)
