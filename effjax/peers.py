"""Peer watchdog for multi-process runs: a dead peer ends the job within seconds, with one line.

Without it a survivor waits in its next collective until gloo or JAX's coordination service gives up
(about a minute) and then aborts with a C++ stack. Here process 0 listens on a TCP port (sent to the
others with a JAX broadcast) and every other process keeps one connection to it, over which both sides
send a heartbeat every `timeout / 4` seconds. A peer is lost when
  - its connection closes without a goodbye: a killed or crashed process, noticed at once; or
  - no heartbeat arrived for `timeout` seconds: a hung process or an unreachable host.
Process 0 forwards "process p is lost" to the others, so every survivor calls `on_lost(p)` (which ends
the process). A process that ends normally says goodbye first.
"""
import socket
import threading
import time


class Watchdog:
  """Starts watching at construction (a collective: every process must construct it)."""

  def __init__(self, process_index, process_count, coordinator_host, timeout, on_lost):
    import numpy as np
    from jax.experimental import multihost_utils
    self.index, self.count, self.timeout, self.on_lost = process_index, process_count, timeout, on_lost
    self.peers, self.lock, self.closing = {}, threading.Lock(), False
    server = None
    if process_index == 0:
      server = socket.create_server(("", 0))
      port = server.getsockname()[1]
    else:
      port = 0
    port = int(multihost_utils.broadcast_one_to_all(np.int32(port)))
    if server is not None:
      for _ in range(process_count - 1):
        conn, _ = server.accept()
        peer = int(conn.makefile("rb").readline())
        self._add(peer, conn)
      server.close()
    else:
      conn = socket.create_connection((coordinator_host, port), timeout=timeout)
      conn.sendall(f"{process_index}\n".encode())
      self._add(0, conn)
    threading.Thread(target=self._beat, daemon=True, name="effjax-heartbeat").start()

  def _add(self, peer, conn):
    conn.settimeout(self.timeout)
    self.peers[peer] = conn
    threading.Thread(target=self._listen, args=(peer, conn), daemon=True, name=f"effjax-peer-{peer}").start()

  def _beat(self):
    while not self.closing:
      self._send_all(b"h")
      time.sleep(self.timeout / 4)

  def _send_all(self, message, skip=None):
    with self.lock:
      for peer, conn in list(self.peers.items()):
        if peer != skip:
          try:
            conn.sendall(message)
          except OSError:
            pass  # its listener reports it

  def _listen(self, peer, conn):
    """Reads one-byte messages: h(eartbeat), b(ye), or l<p>\\n (process 0: process p is lost)."""
    reader = conn.makefile("rb")
    try:
      while True:
        kind = reader.read(1)
        if kind == b"b" or self.closing:
          return
        if kind == b"l":
          self._lost(int(reader.readline()))
          return
        if kind != b"h":  # b"": the connection closed without a goodbye
          break
    except OSError:  # socket.timeout: no heartbeat for `timeout` seconds
      pass
    self._lost(peer)

  def _lost(self, peer):
    if self.closing:
      return
    if self.index == 0:
      self._send_all(f"l{peer}\n".encode(), skip=peer)
    self.on_lost(peer)

  def close(self):
    """Says goodbye (a normal end: the peers do not treat the closing connection as a failure)."""
    self.closing = True
    self._send_all(b"b")
    with self.lock:
      for conn in self.peers.values():
        conn.close()
