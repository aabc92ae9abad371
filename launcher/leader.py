"""The leader's side of the control channel: meet the hosts, announce the plan, decide the result.

See `rendezvous` for the protocol. The leader accepts connections on the control port; a
connection counts as a host only after a valid HELLO from an expected host name (the frames are
already authenticated under the job token), which must arrive within `HELLO_TIMEOUT_S` of the
connect. Rogue connections (garbage, wrong token, oversized frames, silence) lose only
themselves: at most `MAX_PENDING` may be unauthenticated at once, and a new one evicts the
oldest, so a flood of idle connections can delay a real host by one retry but never lock it out.

Until every host has arrived the membership is open: a host whose connection drops (or falls
silent) before the plan is simply missing again and may reconnect. Once the last host is in, the
membership is frozen: from then on a lost host aborts the job.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from launcher.channel import Connection, Message
from launcher.errors import EXIT_FAILURE, PeersUnreachable
from launcher.rendezvous import Member, Peer, PeerMessage, message_code
from launcher.supervise import RemoteAbort

log = logging.getLogger("launcher")

PROGRESS_EVERY_S = 5.0
HELLO_TIMEOUT_S = 10.0  # an unauthenticated connection must say HELLO within this, in total
MAX_PENDING = 64  # unauthenticated connections at once; a new one evicts the oldest
REFUSAL_LOG_EVERY_S = 1.0  # a flood is summarised, not logged connection by connection


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
    _unauth: dict[Connection, None] = field(default_factory=dict)  # oldest first
    _frozen: bool = False  # every host arrived: from now on a lost host aborts the job
    _evicted: int = 0
    _evicted_logged: float = 0.0
    _started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def start(self) -> int:
        """Listen on the control port (all interfaces, IPv6 too where available); the port.

        Raises OSError when the port is taken. Heartbeats to joined hosts start at once, so a
        follower waiting for the plan knows the leader is alive.
        """
        if socket.has_dualstack_ipv6():
            server = socket.create_server(
                ("", self.port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=256
            )
        else:
            server = socket.create_server(("", self.port), backlog=256)
        self._server = server
        self.port = int(server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="control-accept").start()
        threading.Thread(target=self._heartbeats, daemon=True, name="control-heartbeat").start()
        return self.port

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                sock, addr = self._server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, self.key, self._on_message, self._on_close, peer=addr[0])
            conn.deadline = time.monotonic() + HELLO_TIMEOUT_S
            with self._lock:
                evict = next(iter(self._unauth)) if len(self._unauth) >= MAX_PENDING else None
                if evict is not None:
                    del self._unauth[evict]
                self._unauth[conn] = None
            if evict is not None:
                self._log_eviction(evict)
                evict.close("evicted: too many connections without a hello")
            conn.start()

    def _log_eviction(self, conn: Connection) -> None:
        self._evicted += 1
        now = time.monotonic()
        if now - self._evicted_logged >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "more than %d control connections without a hello: dropped %d, the latest from"
                " %s (a flood, or hosts of another job?)",
                MAX_PENDING,
                self._evicted,
                conn.peer,
            )
            self._evicted, self._evicted_logged = 0, now

    def wait_for_peers(self, deadline: float, my_slots: int, my_addr: str = "") -> list[Peer]:
        """Block until every expected host said HELLO; the peers in node order.

        Freezes the membership on success. Raises `PeersUnreachable` at the deadline, after
        telling the hosts that did come (ABORT with exit code 3).
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
                self._frozen = True
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
        """Send the plan to every follower; from now on their silence counts."""
        now = time.monotonic()
        with self._lock:
            # A host that joined long ago has said nothing since its HELLO but heartbeats.
            self._seen = {h: max(t, now) for h, t in self._seen.items()}
        self._broadcast({"type": "plan", **plan})

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
        if conn in self._unauth:
            conn.close(f"{kind!r:.40} before hello")
            return
        host = conn.peer
        with self._lock:
            self._seen[host] = time.monotonic()
        if kind == "failed":
            reason, code = str(message.get("reason", "")), message_code(message, EXIT_FAILURE)
            if self.decision.decide(code, reason):
                log.error("host %s failed: %s", host, reason)
                self._broadcast({"type": "abort", "reason": reason, "code": code})
                self.events.put(RemoteAbort(reason, code))
        elif kind == "done":
            with self._changed:
                self._done.add(host)
                self._changed.notify_all()
        elif kind != "heartbeat":
            self.events.put(PeerMessage(host, message))

    def _hello(self, conn: Connection, message: Message) -> None:
        host = message.get("host")
        slots = message.get("slots")
        with self._lock:
            problem = (
                "not a new connection"
                if conn not in self._unauth
                else "not a host of this job"
                if not isinstance(host, str) or host not in self.expected or host == self.host
                else "already joined"
                if host in self._conns
                else "bad slot count"
                if type(slots) is not int or slots < 1
                else "the job has started"
                if self._frozen
                else ""
            )
        if problem:
            log.warning("refused a hello from %s (%s): %.200r", conn.peer, problem, message)
            conn.close(f"invalid hello: {problem}")
            return
        assert isinstance(host, str) and isinstance(slots, int)
        conn.peer = host
        conn.deadline = None
        addr = conn.sock.getsockname()[0]
        addr = addr.removeprefix("::ffff:")
        with self._changed:
            self._unauth.pop(conn, None)
            self._conns[host] = conn
            self._hellos[host] = Peer(host, slots, addr)
            self._seen[host] = time.monotonic()
            self._changed.notify_all()
        log.info("host %s joined with %d slot(s)", host, slots)

    def _on_close(self, conn: Connection, why: str) -> None:
        host = conn.peer
        with self._changed:
            if conn in self._unauth:
                del self._unauth[conn]
                log.warning("dropped a control connection from %s: %s", host, why)
                return
            if self._conns.get(host) is not conn:
                return  # refused or evicted: already logged
            del self._conns[host]
            done, frozen = host in self._done, self._frozen
            if not frozen:
                del self._hellos[host]
                self._seen.pop(host, None)
            self._changed.notify_all()
        if self._stop.is_set() or done:
            return
        if frozen:
            self._lost(host, why)
        else:
            log.warning("host %s left before the job started (%s); waiting for it", host, why)

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
                    conn
                    for h, conn in self._conns.items()
                    if now - self._seen.get(h, now) > self.heartbeat_timeout_s
                    and h not in self._done
                ]
            for conn in silent:  # before the plan: missing again; after: lost
                conn.close(f"no heartbeat for {self.heartbeat_timeout_s:g} s")

    def failed(self, exit_code: int, reason: str) -> None:
        """This host's ranks failed: abort every follower with this root cause."""
        if self.decision.decide(exit_code, reason):
            self._broadcast({"type": "abort", "reason": reason, "code": exit_code})

    def conclude(self) -> tuple[int, str]:
        """The leader alone saw the whole job end well (MPI: mpirun's exit covers every host):
        send RESULT without waiting for DONE. Returns the job's (code, reason)."""
        if self.decision.decide(0, ""):
            self._broadcast({"type": "result", "code": 0})
        return self.decision.exit_code, self.decision.reason

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
            # close() alone does not wake a thread blocked in accept() on Linux; shutdown does.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            conns = [*self._conns.values(), *self._unauth]
        for conn in conns:
            conn.close("job over")
