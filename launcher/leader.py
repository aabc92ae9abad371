"""The leader's side of the control channel: meet the hosts, announce the plan, decide the result.

See `rendezvous` for the protocol. The leader accepts connections on the control port; a
connection counts as a host only after a valid HELLO from an expected host name (the frames are
already authenticated under the job token). Rogue connections (garbage, wrong token, oversized
frames, silence) lose only themselves; at most `MAX_PENDING` may be unauthenticated at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from launcher.channel import Connection, Message
from launcher.errors import EXIT_FAILURE, PeersUnreachable
from launcher.rendezvous import Member, Peer
from launcher.supervise import RemoteAbort

log = logging.getLogger("launcher")

PROGRESS_EVERY_S = 5.0
HELLO_TIMEOUT_S = 10.0  # an unauthenticated connection must say HELLO within this
MAX_PENDING = 64  # unauthenticated connections at once; more are closed on accept


@dataclass
class Leader(Member):
    """The first distribution host: hosts the control port and decides the job's result."""

    expected: tuple[str, ...] = ()  # every host of the world in node order, this one included
    port: int = 0
    _server: socket.socket | None = None
    _conns: dict[str, Connection] = field(default_factory=dict)
    _hellos: dict[str, Peer] = field(default_factory=dict)
    _seen: dict[str, float] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _unauth: set[Connection] = field(default_factory=set)
    _started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def start(self) -> int:
        """Listen on the control port (all interfaces, IPv6 too where available)."""
        if socket.has_dualstack_ipv6():
            server = socket.create_server(
                ("", self.port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=256
            )
        else:
            server = socket.create_server(("", self.port), backlog=256)
        self._server = server
        self.port = int(server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="control-accept").start()
        return self.port

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                sock, addr = self._server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HELLO_TIMEOUT_S)
            conn = Connection(sock, self.key, self._on_message, self._on_close, peer=addr[0])
            with self._lock:
                crowded = len(self._unauth) >= MAX_PENDING
                if not crowded:
                    self._unauth.add(conn)
            if crowded:
                sock.close()
                log.warning("refused a control connection from %s: too many pending", addr[0])
                continue
            conn.start()

    def wait_for_peers(self, deadline: float, my_slots: int, my_addr: str = "") -> list[Peer]:
        """Block until every expected host said HELLO; the peers in node order.

        Raises `PeersUnreachable` at the deadline, after telling the hosts that did come.
        """
        followers = [h for h in self.expected if h != self.host]
        last_progress = time.monotonic()
        with self._lock:
            while missing := [h for h in followers if h not in self._hellos]:
                now = time.monotonic()
                if now >= deadline:
                    break
                if now - last_progress >= PROGRESS_EVERY_S:
                    log.info("waiting for %d host(s): %s", len(missing), ", ".join(missing))
                    last_progress = now
                self._changed.wait(min(deadline - now, PROGRESS_EVERY_S))
            else:
                missing = []
            peers = dict(self._hellos)
        if missing:
            error = PeersUnreachable(missing, time.monotonic() - self._started, what="hosts")
            self.decision.decide(error.exit_code, str(error))
            self._broadcast({"type": "abort", "reason": str(error), "code": error.exit_code})
            raise error
        me = Peer(self.host, my_slots, my_addr or self._my_addr())
        return [me if h == self.host else peers[h] for h in self.expected]

    def _my_addr(self) -> str:
        with self._lock:
            addrs = [p.addr for p in self._hellos.values() if p.addr]
        return addrs[0] if addrs else "127.0.0.1"

    def announce(self, plan: Message) -> None:
        """Send the plan to every follower and start watching their heartbeats."""
        self._broadcast({"type": "plan", **plan})
        threading.Thread(target=self._heartbeats, daemon=True, name="control-heartbeat").start()

    def _broadcast(self, message: Message) -> None:
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.send(message)

    def _on_message(self, conn: Connection, message: Message) -> None:
        kind = message["type"]
        if kind == "hello":
            self._hello(conn, message)
            return
        host = conn.peer
        if conn in self._unauth:
            conn.close(f"{kind} before hello")
            return
        with self._lock:
            self._seen[host] = time.monotonic()
        if kind == "failed":
            reason, code = str(message.get("reason", "")), int(message.get("code", 1))
            if self.decision.decide(code, reason):
                log.error("host %s failed: %s", host, reason)
                self._broadcast({"type": "abort", "reason": reason, "code": code})
                self.events.put(RemoteAbort(reason, code))
        elif kind == "done":
            with self._changed:
                self._done.add(host)
                self._changed.notify_all()

    def _hello(self, conn: Connection, message: Message) -> None:
        host = message.get("host")
        slots = message.get("slots")
        with self._lock:
            valid = conn in self._unauth and (
                isinstance(host, str)
                and host in self.expected
                and host != self.host
                and host not in self._conns
                and isinstance(slots, int)
                and slots >= 1
            )
        if not valid:
            log.warning("refused a hello from %s: %r", conn.peer, message)
            conn.close("invalid hello")
            return
        assert isinstance(host, str) and isinstance(slots, int)
        conn.peer = host
        conn.sock.settimeout(None)
        addr = conn.sock.getsockname()[0]
        addr = addr.removeprefix("::ffff:")
        with self._changed:
            self._unauth.discard(conn)
            self._conns[host] = conn
            self._hellos[host] = Peer(host, slots, addr)
            self._seen[host] = time.monotonic()
            self._changed.notify_all()
        log.info("host %s joined with %d slot(s)", host, slots)

    def _on_close(self, conn: Connection, why: str) -> None:
        host = conn.peer
        with self._changed:
            if conn in self._unauth:
                self._unauth.discard(conn)
                log.warning("dropped a control connection from %s: %s", host, why)
                return
            if self._conns.get(host) is not conn:
                return
            del self._conns[host]
            done = host in self._done
            self._changed.notify_all()
        if not done and not self._stop.is_set():
            self._lost(host, why)

    def _lost(self, host: str, why: str) -> None:
        reason = f"host {host} was lost ({why})"
        if self.decision.decide(EXIT_FAILURE, reason):
            log.error("%s: aborting the job", reason)
            self._broadcast({"type": "abort", "reason": reason, "code": EXIT_FAILURE})
            self.events.put(RemoteAbort(reason, EXIT_FAILURE))

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self._broadcast({"type": "heartbeat"})
            now = time.monotonic()
            with self._lock:
                silent = [
                    h
                    for h, t in self._seen.items()
                    if now - t > self.heartbeat_timeout_s and h not in self._done
                ]
            for host in silent:
                self._lost(host, f"no heartbeat for {self.heartbeat_timeout_s:.0f} s")

    def failed(self, exit_code: int, reason: str) -> None:
        """This host's ranks failed: abort every follower with this root cause."""
        if self.decision.decide(exit_code, reason):
            self._broadcast({"type": "abort", "reason": reason, "code": exit_code})

    def barrier(self) -> tuple[int, str]:
        """After local success: wait for every follower's DONE (or a failure), then RESULT."""
        followers = {h for h in self.expected if h != self.host}
        with self._changed:
            while not self.decision.decided and not followers <= self._done:
                self._changed.wait(self.heartbeat_every)
        if self.decision.decide(0, ""):
            self._broadcast({"type": "result", "code": 0})
        return self.decision.exit_code, self.decision.reason

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.close("job over")
