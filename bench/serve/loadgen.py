"""A closed-loop HTTP load generator: N keep-alive connections, each sending its next request
as soon as the previous answer arrived. The same code drives every stack in a run.

It is a single-threaded epoll loop over raw sockets with one pre-built request, so its own
cost per request is small and identical for every server; its CPU time is reported so that
runs can be compared fairly. A server that closes the connection is reconnected to.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured in its measurement window."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cpu_us_per_request: float
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_request(host: str, path: str, body: bytes, content_type: str, accept: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Conn:
    __slots__ = ("buf", "close", "need", "request", "sent_at", "sock", "status")

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.request = request
        self.buf = bytearray()
        self.need = -1
        self.sent_at = 0
        self.status = 0
        self.close = False


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _parse_head(conn: _Conn) -> bool:
    end = conn.buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
    conn.status = int(head[0].split(" ", 2)[1])
    length = 0
    conn.close = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            conn.close = True
    conn.need = end + 4 + length
    return True


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1e6


def prewarm(
    host: str, port: int, request: bytes | Sequence[bytes], *, concurrency: int, seconds: float
) -> None:
    """Drive the server for `seconds` and keep nothing: what every server gets before the
    first measured round (its workers warm, its caches full)."""
    run(host, port, request, concurrency=concurrency, warmup_s=seconds, measure_s=0.001)


def run(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    *,
    concurrency: int,
    warmup_s: float,
    measure_s: float,
) -> LoadResult:
    """Drive the server for warmup_s + measure_s seconds; measure the last measure_s.

    With several requests, connection i always sends request i modulo their count (for
    example one model each of a multi-model endpoint)."""
    selector = selectors.DefaultSelector()
    variants = [request] if isinstance(request, bytes) else list(request)
    conns = []
    for index in range(concurrency):
        conn = _Conn(_connect(host, port), variants[index % len(variants)])
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        conns.append(conn)
    start = time.perf_counter_ns()
    window_start = start + int(warmup_s * 1e9)
    window_end = window_start + int(measure_s * 1e9)
    latencies: list[int] = []
    statuses: dict[int, int] = {}
    errors = 0
    cpu_start = 0.0
    cpu_started = False
    for conn in conns:
        conn.sent_at = time.perf_counter_ns()
        conn.sock.sendall(conn.request)
    outstanding = len(conns)
    while outstanding:
        for key, _ in selector.select(timeout=5.0):
            conn = key.data
            chunk = conn.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection mid-request")
            conn.buf += chunk
            if conn.need < 0 and not _parse_head(conn):
                continue
            if len(conn.buf) < conn.need:
                continue
            now = time.perf_counter_ns()
            if not cpu_started and now >= window_start:
                cpu_start, cpu_started = time.process_time(), True
            if window_start <= now <= window_end:
                latencies.append(now - conn.sent_at)
                statuses[conn.status] = statuses.get(conn.status, 0) + 1
                if conn.status != 200:
                    errors += 1
            del conn.buf[: conn.need]
            conn.need = -1
            if conn.close:
                selector.unregister(conn.sock)
                conn.sock.close()
                conn.sock = _connect(host, port)
                selector.register(conn.sock, selectors.EVENT_READ, conn)
            if now >= window_end:
                outstanding -= 1
                continue
            conn.sent_at = time.perf_counter_ns()
            conn.sock.sendall(conn.request)
    cpu = time.process_time() - cpu_start
    for conn in conns:
        selector.unregister(conn.sock)
        conn.sock.close()
    selector.close()
    latencies.sort()
    done = len(latencies)
    return LoadResult(
        requests=done - errors,
        errors=errors,
        seconds=measure_s,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        client_cpu_us_per_request=cpu / done * 1e6 if done else float("nan"),
        statuses=statuses,
    )
