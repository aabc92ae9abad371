"""One authenticated connection of the control channel, and the job decision both ends share.

`Connection` owns a socket. Its reader thread first sends this end's challenge (a fresh nonce,
see `wire`), then parses frames (`wire.FrameReader`), decodes each into a typed message
(`messages.decode`) and hands it to a callback; `send` (thread-safe) encodes one. Until the
peer's challenge has arrived, messages sent are queued (a heartbeat is dropped: it means nothing
yet), then go out in order, bound to the peer's nonce. A message too large for a frame is
dropped with an error line: it never closes the connection. Any protocol error, EOF, socket
error or a missed `deadline` (an overall limit for the peer to be heard, e.g. the leader's HELLO
timeout; a per-recv timeout would let a peer that trickles one byte at a time hold the
connection forever) ends the connection exactly once, through `on_close`; `error_kind` then says
what kind of protocol error it was, if any. A frame that is not a valid message is a protocol
error like any other, and so is a valid message the owner refuses: its `on_message` raises
`wire.FrameError` (e.g. a PLAN sent by a follower). `Decision` is the job's final result as this
host knows it: set once (first writer wins), waited on by the exit barrier.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from launcher.control import messages, wire
from launcher.control.messages import Heartbeat, Message

log = logging.getLogger("launcher")

MAX_QUEUED = 64  # messages sent before the peer's challenge; beyond that the peer is broken


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
        self._nonce = wire.new_nonce()  # what the peer's frames must be bound to
        self._on_message = on_message
        self._on_close = on_close
        # A time.monotonic() by which the reader must have delivered whatever the owner waits
        # for; the owner sets it back to None (from a callback, i.e. on the reader thread).
        self.deadline: float | None = None
        self.error_kind = ""  # the wire.FrameError kind that ended the connection, if one did
        self._send_lock = threading.Lock()
        self._writer: wire.FrameWriter | None = None  # once the peer's challenge is in
        self._queued: list[Message] = []
        self._close_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"conn-{peer}")

    def start(self) -> None:
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def bound(self) -> bool:
        """The peer proved it holds the job key (its challenge authenticated)."""
        return self._writer is not None

    def send(self, message: Message) -> bool:
        """Send one message (or queue it until the peer's challenge); False when the connection
        is (or just became) unusable, or when the message cannot be encoded: then it is dropped
        with an error line and the connection lives on."""
        with self._send_lock:
            if self._writer is not None:
                sent, why = self._send_locked(message)
            elif isinstance(message, Heartbeat):
                return not self.closed
            elif len(self._queued) < MAX_QUEUED:
                self._queued.append(message)
                return not self.closed
            else:
                sent, why = False, "no challenge from the peer"
        if why:
            self.close(why)
        return sent

    def _send_locked(self, message: Message) -> tuple[bool, str]:
        """Encode and send, under the send lock: (sent, why the connection must close or "")."""
        assert self._writer is not None
        try:
            frame = self._writer.encode(messages.encode(message))
        except ValueError as e:  # too large (a plan for too many hosts): lose it, not the peer
            log.error("control message %r to %s not sent: %s", message.TYPE, self.peer, e)
            return False, ""
        try:
            self.sock.sendall(frame)
        except OSError as e:
            return False, f"send failed: {e}"
        return True, ""

    def _bind(self, peer_nonce: str) -> None:
        """The peer's challenge arrived: send what was queued, bound to its nonce."""
        why = ""
        with self._send_lock:
            self._writer = wire.FrameWriter(self._key, peer_nonce)
            queued, self._queued = self._queued, []
            for message in queued:
                _, why = self._send_locked(message)
                if why:
                    break
        if why:
            self.close(why)

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

    def finish(self, timeout: float) -> None:
        """Close after what was sent has reached the peer: stop sending, wait (at most
        `timeout` seconds) for the peer to close its side, then close. For the last words of
        a host that is leaving (an ABORT, a FAILED): closing at once with unread bytes would
        reset the connection and could lose them."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        if threading.current_thread() is not self._thread:  # the reader sees the peer's EOF
            self._closed.wait(timeout)
        self.close("job over")

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def _read(self) -> None:
        reader = wire.FrameReader(self._key, self._nonce)
        opened = False
        why = "connection closed by peer"
        try:
            self.sock.sendall(wire.challenge(self._nonce, self._key))
            while not self._closed.is_set():
                self._apply_deadline()
                data = self.sock.recv(65536)
                if not data:
                    break
                for raw in reader.feed(data):
                    if not opened:  # the peer's challenge: FrameReader delivers it first
                        opened = True
                        self._bind(str(raw["nonce"]))
                    else:  # a later "challenge" is no message: decode refuses it (no re-bind)
                        self._on_message(self, messages.decode(raw))
        except wire.FrameError as e:
            self.error_kind = e.kind
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
