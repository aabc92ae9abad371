"""One authenticated connection of the control channel, and the job decision both ends share.

`Connection` owns a socket: a reader thread parses frames (`wire.FrameReader`) and hands each
message to a callback; `send` is thread-safe. Any protocol error, EOF, socket error or a missed
`deadline` (an overall limit for the peer to be heard, e.g. the leader's HELLO timeout; a
per-recv timeout would let a peer that trickles one byte at a time hold the connection forever)
ends the connection exactly once, through `on_close`. `Decision` is the job's final result as
this host knows it: set once (first writer wins), waited on by the exit barrier.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from launcher import wire

log = logging.getLogger("launcher")

Message = dict[str, Any]


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        key: bytes,
        on_message: Callable[[Connection, Message], None],
        on_close: Callable[[Connection, str], None],
        *,
        peer: str,
    ) -> None:
        self.sock = sock
        self.peer = peer  # a host name once authenticated, else the address
        self._key = key
        self._on_message = on_message
        self._on_close = on_close
        # A time.monotonic() by which the reader must have delivered whatever the owner waits
        # for; the owner sets it back to None (from a callback, i.e. on the reader thread).
        self.deadline: float | None = None
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"conn-{peer}")

    def start(self) -> None:
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, message: Message) -> bool:
        """Send one message; False when the connection is (or just became) unusable."""
        frame = wire.encode(message, self._key)
        try:
            with self._send_lock:
                self.sock.sendall(frame)
        except OSError as e:
            self.close(f"send failed: {e}")
            return False
        return True

    def close(self, why: str) -> None:
        """Close once (any thread); `on_close(self, why)` runs only for the first call."""
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_close(self, why)

    def _read(self) -> None:
        reader = wire.FrameReader(self._key)
        why = "connection closed by peer"
        try:
            while not self._closed.is_set():
                self._apply_deadline()
                data = self.sock.recv(65536)
                if not data:
                    break
                for message in reader.feed(data):
                    self._on_message(self, message)
        except wire.FrameError as e:
            why = f"protocol error: {e}"
        except TimeoutError:
            why = "timed out waiting for the peer"
        except OSError as e:
            why = f"connection error: {e}"
        except Exception as e:  # a message the owner could not handle: lose this peer only
            log.warning("control message from %s not understood: %r", self.peer, e)
            why = f"protocol error: {type(e).__name__}"
        self.close(why)

    def _apply_deadline(self) -> None:
        if self.deadline is None:
            if self.sock.gettimeout() is not None:
                self.sock.settimeout(None)
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)


class Decision:
    """The job's result (exit code, root cause), decided once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.exit_code = 0
        self.reason = ""

    def decide(self, exit_code: int, reason: str) -> bool:
        """Record the result; False if it was already decided (the first cause wins)."""
        with self._lock:
            if self._event.is_set():
                return False
            self.exit_code, self.reason = exit_code, reason
            self._event.set()
            return True

    @property
    def decided(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)
