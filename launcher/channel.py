"""One authenticated connection of the control channel, and the job decision both ends share.

`Connection` owns a socket: a reader thread parses frames (`wire.FrameReader`) and hands each
message to a callback; `send` is thread-safe. Any protocol error, EOF or socket error ends the
connection once, through `on_close`. `Decision` is the job's final result as this host knows it:
set once (first writer wins), waited on by the exit barrier.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
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
        self._send_lock = threading.Lock()
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
                data = self.sock.recv(65536)
                if not data:
                    break
                for message in reader.feed(data):
                    self._on_message(self, message)
        except wire.FrameError as e:
            why = f"protocol error: {e}"
        except TimeoutError:
            why = "timed out waiting for data"
        except OSError as e:
            why = f"connection error: {e}"
        self.close(why)


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
