"""`launcher stacks` across hosts: the leader's local socket that answers with every host's stacks.

The leader of a multi-host job that is watched for hangs listens on a Unix socket,
`registry_dir()/<launcher pid>.sock` (in the 0700 folder the running jobs are announced in, so
only their owner can connect; the path is short, whatever the log dir's length). A client
(`ask`) connects and reads until the end of the stream; the server writes what `provide`
returns (this host's stacks, then every follower's, asked for over the control channel) and
closes. Nothing is read from the client: the one request is the connection itself.

Failure behaviour: a server that cannot bind logs at debug level and is absent (`launcher
stacks` falls back to this host's ranks); a `provide` that raises answers with the reason; a
client that finds no server, or none that answers within its timeout, gets None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("launcher")

SUFFIX = ".sock"
GATHER_TIMEOUT_S = 12.0  # the followers' answers: two stack methods of 5 s each, and margin
ASK_TIMEOUT_S = GATHER_TIMEOUT_S + 8.0  # the client: the leader's own stacks run alongside


def socket_path(registry: Path, pid: int) -> Path:
    """Where the launcher `pid` answers `launcher stacks` for every host."""
    return registry / f"{pid}{SUFFIX}"


class StacksServer:
    """Answers each connection with `provide()`, one thread per request; `close` always."""

    def __init__(self, path: Path, provide: Callable[[], str]) -> None:
        self.path = path
        self._provide = provide
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        """Listen; False (logged at debug level) when the socket cannot be created."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a launcher of the same pid that died before it cleaned up
            old = os.umask(0o177)  # 0600 from the start: no window where others may connect
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            sock.listen(4)
        except OSError as e:
            sock.close()
            log.debug("launcher stacks cannot ask this job for every host: %s", e)
            return False
        self._sock = sock
        threading.Thread(target=self._serve, daemon=True, name="stacks-server").start()
        return True

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._answer, args=(conn,), daemon=True, name="stacks-answer"
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                text = self._provide()
            except Exception as e:  # the client gets the reason instead of silence
                text = f"# could not take the stacks: {e}\n"
            with contextlib.suppress(OSError):
                conn.sendall(text.encode("utf-8", "replace"))

    def close(self) -> None:
        """Stop answering and remove the socket. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def ask(path: Path, timeout: float) -> str | None:
    """What the server at `path` answers (every host's stacks), or None when none answers
    within `timeout` seconds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            return None
    return b"".join(chunks).decode("utf-8", "replace")
