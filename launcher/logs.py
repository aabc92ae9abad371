"""Carry every rank's output to the launcher's stdout/stderr, whole, and keep what reports need.

One thread (`OutputPump`) multiplexes every rank pipe with a selector and is the only writer of
rank output to the console, so lines never interleave mid-line. Bytes are never decoded:
non-UTF-8 output survives. With a prefix (multi-rank jobs) each complete line is written as
`prefix + line`, in writes of whole lines of at most PIPE_BUF bytes (atomic on a pipe, so even
the launcher's own log lines cannot cut a rank's line); a partial last line is completed with a
newline at EOF so the next rank's line starts clean; a line longer than `MAX_LINE` without a
newline is written in pieces. Without a prefix (the single-process `train`) bytes pass through
unchanged, partial lines and carriage returns included. Each stream also feeds an optional
per-rank log file and a bounded tail that the failure report reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import selectors
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO

TAIL_BYTES = 64 * 1024
_CHUNK = 64 * 1024
PIPE_BUF = select.PIPE_BUF  # writes up to this size are atomic on a pipe (4096 on Linux)
MAX_LINE = 1024 * 1024  # a longer line is written in pieces (see OutputPump._echo)
# A full non-blocking console that takes nothing for this long loses the rest of a write
# (see `_write_all`); consoles in that state, shared by every pump (set ops are atomic).
CONSOLE_STALL_S = 30.0
_STALLED: set[int] = set()


class Tail:
    """The last `limit` bytes written to a stream (thread-safe for one writer, many readers)."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= self._limit:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Stream:
    fd: int
    prefix: bytes
    console: int | None  # fd to echo to, or None when this rank is filtered out
    log_file: BinaryIO | None
    tail: Tail | None
    pending: bytearray = field(default_factory=bytearray)
    closed: threading.Event = field(default_factory=threading.Event)


class OutputPump:
    """Reads rank pipes until EOF and writes them out. Start once; `add` any time."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[_Stream] = []
        self._streams: list[_Stream] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(
        self,
        fd: int,
        *,
        prefix: bytes,
        console: int | None,
        log_file: BinaryIO | None = None,
        tail: Tail | None = None,
    ) -> threading.Event:
        """Pump `fd` (which the pump now owns and closes). Returns an event set at its EOF."""
        stream = _Stream(fd, prefix, console, log_file, tail)
        with self._lock:
            self._incoming.append(stream)
        self._wake()
        return stream.closed

    def stop(self, timeout: float) -> None:
        """Drain what is readable, close every pipe and end the thread (bounded by `timeout`)."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    for stream in self._incoming:
                        os.set_blocking(stream.fd, False)
                        self._selector.register(stream.fd, selectors.EVENT_READ, stream)
                        self._streams.append(stream)
                    self._incoming.clear()
                    stopping = self._stopping
                if stopping:
                    self._drain_all()
                    return
                for key, _ in self._selector.select():
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    else:
                        self._read(key.data)
        finally:
            for stream in self._streams:
                self._close(stream)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _drain_all(self) -> None:
        for stream in list(self._streams):
            while not stream.closed.is_set() and self._read(stream):
                pass

    def _read(self, stream: _Stream) -> bool:
        """Read one chunk; False at EOF or when nothing is readable."""
        try:
            data = os.read(stream.fd, _CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close(stream)
            return False
        if stream.log_file is not None:
            stream.log_file.write(data)
        if stream.tail is not None:
            stream.tail.add(data)
        if stream.console is not None:
            self._echo(stream, data)
        return True

    def _echo(self, stream: _Stream, data: bytes) -> None:
        if not stream.prefix:
            _write_all(stream.console, data)
            return
        stream.pending += data
        end = stream.pending.rfind(b"\n")
        if end < 0:
            if len(stream.pending) > MAX_LINE:
                # A line this long (a `\r` progress bar that never ends its line) is written
                # in pieces rather than held in memory without bound.
                _write_lines(stream.console, [stream.prefix + bytes(stream.pending) + b"\n"])
                stream.pending.clear()
            return
        block = bytes(stream.pending[: end + 1])
        del stream.pending[: end + 1]
        lines = block.split(b"\n")[:-1]
        _write_lines(stream.console, [stream.prefix + line + b"\n" for line in lines])

    def _close(self, stream: _Stream) -> None:
        if stream.closed.is_set():
            return
        if stream.pending and stream.console is not None:
            _write_lines(stream.console, [stream.prefix + bytes(stream.pending) + b"\n"])
            stream.pending.clear()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(stream.fd)
        os.close(stream.fd)
        if stream.log_file is not None:
            stream.log_file.close()
        stream.closed.set()


def line_batches(lines: list[bytes], limit: int = PIPE_BUF) -> list[bytes]:
    """`lines` joined into writes of at most `limit` bytes, each ending at a line end.

    A pipe write of at most PIPE_BUF bytes is atomic, so another writer to the same console
    (the launcher's own log lines) can land between two rank lines but never inside one.
    A single line longer than `limit` is a write of its own.
    """
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > limit:
            batches.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        batches.append(b"".join(current))
    return batches


def _write_lines(fd: int | None, lines: list[bytes]) -> None:
    for batch in line_batches(lines):
        _write_all(fd, batch)


def _write_all(fd: int | None, data: bytes, stall_s: float = CONSOLE_STALL_S) -> None:
    """Write all of `data` to the console `fd` (None: nowhere), or as much as it takes.

    A console in non-blocking mode (someone above us set O_NONBLOCK on a shared pipe) that is
    full is waited for with `poll` until its reader makes room, never spun on. If it makes no
    room for `stall_s`, the rest of this write is dropped and the console marked stalled:
    later writes to it are tried once without waiting, until one goes through. The pump must
    go on draining the ranks' pipes and feeding the log files and failure tails even when
    nobody reads the console. A console that went away (a closed pipe) drops the write.
    """
    if fd is None:
        return
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            if fd in _STALLED or not _writable(fd, stall_s):
                _STALLED.add(fd)
                return
            continue
        except OSError:
            return  # the console went away (closed pipe): keep draining ranks regardless
        _STALLED.discard(fd)
        view = view[written:]


def _writable(fd: int, timeout_s: float) -> bool:
    """Wait until `fd` takes a write, or fails (the next write then says how); False when
    `timeout_s` passed first."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(math.ceil(timeout_s * 1000)))
