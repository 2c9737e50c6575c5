"""SIGTERM handling. Outside the training loop a SIGTERM stops the program at once (`Terminated`, turned
into one line by the entry point); inside the loop it only sets `requested`, and the loop saves a
checkpoint after the current step and stops."""
import contextlib
import signal


class Terminated(Exception):
  """SIGTERM arrived outside the training loop (nothing new to save)."""


class Sigterm:
  """Context manager installing the SIGTERM handler (main thread only; elsewhere it does nothing)."""

  def __init__(self):
    self.requested, self.in_loop, self.previous = False, False, None

  def __enter__(self):
    try:
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread (e.g. inside a notebook kernel thread)
      self.previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if not self.in_loop:
      raise Terminated("SIGTERM before the training loop started; nothing new to save")

  @contextlib.contextmanager
  def loop(self):
    """Inside: a SIGTERM only sets `requested`."""
    self.in_loop = True
    try:
      yield
    finally:
      self.in_loop = False

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
