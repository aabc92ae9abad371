"""OutputPump and Tail with real pipes: whole prefixed lines, raw bytes, files, tails."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import logs
from launcher.logs import OutputPump, Tail, line_batches

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pump() -> Iterator[OutputPump]:
    p = OutputPump()
    p.start()
    yield p
    p.stop(5.0)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "console"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    yield fd, path
    os.close(fd)


def feed(pump: OutputPump, pieces: list[bytes], **kw: object) -> threading.Event:
    """A pipe whose writer sends `pieces` then closes; returns the pump's EOF event."""
    read_fd, write_fd = os.pipe()
    done = pump.add(read_fd, **kw)  # type: ignore[arg-type]
    for piece in pieces:
        os.write(write_fd, piece)
    os.close(write_fd)
    return done


def test_lines_are_prefixed_whole_even_when_split_across_reads(
    pump: OutputPump, console: tuple[int, Path]
) -> None:
    fd, path = console
    done = feed(pump, [b"hel", b"lo\nwor", b"ld\n\nlast"], prefix=b"[h:1] ", console=fd)
    assert done.wait(5)
    # The partial last line is completed so the next line starts clean; the empty line stays.
    assert path.read_bytes() == b"[h:1] hello\n[h:1] world\n[h:1] \n[h:1] last\n"


def test_bytes_are_never_decoded(pump: OutputPump, console: tuple[int, Path]) -> None:
    fd, path = console
    raw = b"\xff\xfe\x80 not utf-8 \xc3\x28\r\n"
    assert feed(pump, [raw], prefix=b"[r] ", console=fd).wait(5)
    assert path.read_bytes() == b"[r] " + raw


def test_without_prefix_output_passes_through_unchanged(
    pump: OutputPump, console: tuple[int, Path]
) -> None:
    fd, path = console
    pieces = [b"progress 1%\r", b"progress 100%\r\n", b"\xff partial"]
    assert feed(pump, pieces, prefix=b"", console=fd).wait(5)
    assert path.read_bytes() == b"".join(pieces)


def test_log_file_and_tail_get_the_raw_bytes_even_when_the_console_is_filtered(
    pump: OutputPump, tmp_path: Path
) -> None:
    log = (tmp_path / "stdout.log").open("ab")
    tail = Tail(limit=8)
    done = feed(pump, [b"one\n", b"two\npartial"], prefix=b"[x] ", console=None, log_file=log)
    assert done.wait(5)
    assert (tmp_path / "stdout.log").read_bytes() == b"one\ntwo\npartial"
    assert log.closed  # the pump closes the file at EOF
    done = feed(pump, [b"0123456789", b"abcdef"], prefix=b"", console=None, tail=tail)
    assert done.wait(5)
    assert tail.text() == "89abcdef"


def test_lines_of_many_streams_never_interleave(
    pump: OutputPump, console: tuple[int, Path]
) -> None:
    fd, path = console
    n = 20_000
    writers = []
    events = []
    for s in range(4):
        read_fd, write_fd = os.pipe()
        events.append(pump.add(read_fd, prefix=f"[{s}] ".encode(), console=fd))

        def write(s: int = s, write_fd: int = write_fd) -> None:
            data = b"".join(
                f"stream {s} line {i} ".encode() + b"y" * (i % 71) + b"\n" for i in range(n)
            )
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view[:4999]) :]
            os.close(write_fd)

        writers.append(threading.Thread(target=write))
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert all(e.wait(10) for e in events)
    seen = {s: 0 for s in range(4)}
    for line in path.read_bytes().split(b"\n")[:-1]:
        prefix, _, rest = line.partition(b"] ")
        s = int(prefix[1:])
        i = seen[s]
        assert rest == f"stream {s} line {i} ".encode() + b"y" * (i % 71), line[:60]
        seen[s] += 1
    assert seen == {s: n for s in range(4)}


def test_a_line_without_end_is_not_held_without_bound(
    pump: OutputPump, console: tuple[int, Path]
) -> None:
    fd, path = console
    read_fd, write_fd = os.pipe()
    done = pump.add(read_fd, prefix=b"[p] ", console=fd)
    chunk = b"=" * 65536
    total = 0
    while total <= logs.MAX_LINE:
        total += os.write(write_fd, chunk)
    deadline = time.monotonic() + 10
    while path.stat().st_size == 0:  # written before the line (or the stream) ended
        assert time.monotonic() < deadline, "a line longer than MAX_LINE was held back"
        time.sleep(0.01)
    os.close(write_fd)
    assert done.wait(5)
    data = path.read_bytes()
    assert data.replace(b"[p] ", b"").replace(b"\n", b"") == b"=" * total
    assert all(line.startswith(b"[p] ") for line in data.split(b"\n")[:-1])


def test_stop_drains_and_closes_streams_whose_writer_is_still_open(
    console: tuple[int, Path],
) -> None:
    fd, path = console
    pump = OutputPump()
    pump.start()
    read_fd, write_fd = os.pipe()
    done = pump.add(read_fd, prefix=b"[s] ", console=fd)
    os.write(write_fd, b"kept\nhalf")
    pump.stop(5.0)
    assert done.is_set()
    assert path.read_bytes() == b"[s] kept\n[s] half\n"
    with pytest.raises(BrokenPipeError):
        os.write(write_fd, b"x")  # the pump closed its end
    os.close(write_fd)


def test_tail_keeps_the_last_bytes_and_decodes_leniently() -> None:
    tail = Tail(limit=10)
    for piece in (b"abc", b"defgh", b"ijklmnop", b"\xff!"):
        tail.add(piece)
    assert tail.text() == "ijklmnop\ufffd!"  # the last 10 bytes
    assert Tail().text() == ""


@pytest.mark.parametrize("limit", [1, 10, 4096])
def test_line_batches_end_at_line_ends_and_respect_the_limit(limit: int) -> None:
    lines = [b"x" * n + b"\n" for n in (0, 3, 9, 20, 2, 5000, 1, 1)]
    batches = line_batches(lines, limit)
    assert b"".join(batches) == b"".join(lines)
    for batch in batches:
        assert batch.endswith(b"\n")
        assert len(batch) <= limit or batch.count(b"\n") == 1  # only a lone long line exceeds
    assert line_batches([], limit) == []


def test_pipe_writes_are_atomic_batches() -> None:
    assert logs.PIPE_BUF >= 512  # POSIX minimum; 4096 on Linux


# --- a non-blocking console -----------------------------------------------------------------

SLOW_READER_S = 0.5


def full_nonblocking_pipe() -> tuple[int, int, bytes]:
    """(read fd, write fd, what fills it): a pipe in non-blocking mode that takes no more."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    filled = bytearray()
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += b"f" * os.write(write_fd, b"f" * 65536)
    return read_fd, write_fd, bytes(filled)


def read_all(read_fd: int, into: bytearray, start: threading.Event) -> None:
    start.wait(SLOW_READER_S)  # the slow reader: it takes nothing for a while
    while chunk := os.read(read_fd, 65536):
        into += chunk


def test_a_full_nonblocking_console_is_waited_for_without_burning_cpu() -> None:
    read_fd, write_fd, filled = full_nonblocking_pipe()
    received = bytearray()
    reader = threading.Thread(target=read_all, args=(read_fd, received, threading.Event()))
    reader.start()
    payload = bytes(range(256)) * 1024
    try:
        cpu = time.process_time()
        logs._write_all(write_fd, payload)
        cpu = time.process_time() - cpu
    finally:
        os.close(write_fd)
        reader.join(10.0)
        os.close(read_fd)
    assert bytes(received) == filled + payload  # every byte, in order, once the reader reads
    # Spinning on EAGAIN costs a whole core while the reader sleeps; waiting costs next to none.
    assert cpu < SLOW_READER_S / 5, f"{cpu:.3f} s of CPU while the reader slept"


def test_a_console_nobody_reads_costs_one_bounded_wait_then_none() -> None:
    read_fd, write_fd, filled = full_nonblocking_pipe()
    try:
        began = time.monotonic()
        logs._write_all(write_fd, b"lost\n", stall_s=0.2)  # waits 0.2 s, then gives up
        waited = time.monotonic() - began
        began = time.monotonic()
        logs._write_all(write_fd, b"lost too\n", stall_s=5.0)  # stalled: no second wait
        again = time.monotonic() - began
        assert 0.15 < waited < 5.0 and again < 1.0
        assert os.read(read_fd, len(filled) + 100) == filled  # the pipe holds what filled it
        logs._write_all(write_fd, b"back\n", stall_s=5.0)  # room again: written, stall cleared
        assert write_fd not in logs._STALLED
        assert os.read(read_fd, 100) == b"back\n"
    finally:
        os.close(write_fd)
        os.close(read_fd)
