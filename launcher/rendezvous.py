"""Hosts meet, agree on the world, watch each other, and leave together (DESIGN.md decision 3).

The leader's launcher listens on the control port; every other launcher connects, says HELLO
(host, slots) and gets the PLAN (node order, slots, ports, run id) the moment the last host has
arrived. From the HELLO on both sides exchange heartbeats; a silent or disconnected peer is lost
after the heartbeat timeout. Before the PLAN a lost connection is not a failure: the follower
reconnects (the leader forgets it until then), so a leader that is slow, restarting or flooded
costs a retry, not the job. The leader owns the peer deadline: a follower that has joined waits
for its verdict (PLAN, or ABORT with exit code 3 naming the hosts that never came) as long as
the leader is heard.

FAILED (a follower's ranks failed, with the root cause) makes the leader ABORT every host with
that same cause; a lost follower or a failing leader does the same; a lost leader aborts each
follower on its own. On success followers report DONE and wait at the exit barrier for the
leader's RESULT, so no host leaves while others still train.

Aborts reach the local supervisor as `supervise.RemoteAbort` events on its queue.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

from launcher.channel import Connection, Decision, Message
from launcher.errors import EXIT_FAILURE, JobAborted, PeersUnreachable
from launcher.supervise import RemoteAbort

log = logging.getLogger("launcher")

PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    slots: int
    addr: str  # the leader's address as this peer reached it (its MASTER_ADDR)


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A message of a kind the channel itself does not handle (a backend's, e.g. the MPI
    backend's sshd report), posted on the events queue for whoever drives the backend."""

    host: str  # who sent it: the follower's host name, or the leader's as a follower knows it
    message: Message


def message_code(message: Message, default: int) -> int:
    """The exit code a message carries, when it is a plausible one (1..255), else `default`."""
    code = message.get("code")
    return code if type(code) is int and 0 <= code <= 255 else default


@dataclass
class Member:
    key: bytes
    host: str
    heartbeat_timeout_s: float
    events: queue.SimpleQueue[object]
    decision: Decision = field(default_factory=Decision)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def heartbeat_every(self) -> float:
        return max(self.heartbeat_timeout_s / 4, 0.05)

    def failed(self, exit_code: int, reason: str) -> None:
        """This host stopped the job (a rank failed, or a stop signal): tell the others."""
        raise NotImplementedError

    def barrier(self) -> tuple[int, str]:
        """After local success: wait until the whole job's result is known; (code, reason)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _abort_locally(self, exit_code: int, reason: str) -> None:
        if self.decision.decide(exit_code, reason):
            log.error("aborting the job: %s", reason)
            self.events.put(RemoteAbort(reason, exit_code))


def resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """(family, sockaddr) for `host`, IPv4 and IPv6; raises OSError while it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in infos]


@dataclass
class Follower(Member):
    """Every other distribution host: joins the leader, follows its plan and its result."""

    leader: str = ""
    port: int = 0
    _conn: Connection | None = None
    _plan: Message | None = None
    _dropped: str = ""  # why the current connection ended before the plan
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _seen: float = field(default_factory=time.monotonic)

    def join(self, deadline: float, slots: int) -> tuple[Message, str]:
        """Connect (retrying until `deadline`), say HELLO, return (PLAN, leader address).

        Raises `PeersUnreachable` when the leader cannot be reached by the deadline, and
        `JobAborted` (with the leader's exit code: 3 when hosts never came) when the leader
        refuses the job. Once connected it waits for the leader's verdict past `deadline`,
        for as long as the leader's heartbeats arrive.
        """
        start = time.monotonic()
        beating = False
        while True:
            sock, addr = self._connect(deadline, start)
            conn = Connection(sock, self.key, self._on_message, self._on_close, peer=self.leader)
            with self._wake:
                self._conn, self._dropped, self._seen = conn, "", time.monotonic()
            conn.start()
            conn.send({"type": "hello", "host": self.host, "slots": slots})
            if not beating:
                threading.Thread(target=self._heartbeats, daemon=True, name="control-hb").start()
                beating = True
            why = self._await_plan()
            if self._plan is not None:
                return self._plan, addr
            if self.decision.decided:
                error = JobAborted(
                    self.decision.reason, exit_code=self.decision.exit_code or EXIT_FAILURE
                )
                raise error
            if time.monotonic() >= deadline:
                raise PeersUnreachable([self.leader], time.monotonic() - start, what="the leader")
            log.warning("lost the leader %s before the plan (%s); reconnecting", self.leader, why)
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def _await_plan(self) -> str:
        """Wait for PLAN, ABORT or the end of this connection; why it ended ("" if it did not)."""
        last_progress = time.monotonic()
        with self._wake:
            while self._plan is None and not self.decision.decided and not self._dropped:
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    log.info("joined %s; waiting for the other hosts", self.leader)
                    last_progress = time.monotonic()
                self._wake.wait(PROGRESS_EVERY_S)
            return self._dropped

    def _connect(self, deadline: float, start: float) -> tuple[socket.socket, str]:
        delay, last_progress, why = 0.05, start, ""
        while True:
            try:
                for family, sockaddr in resolve(self.leader, self.port):
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                        sock.connect(sockaddr)
                    except OSError as e:
                        sock.close()
                        why = str(e)
                        continue
                    sock.settimeout(None)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return sock, sockaddr[0]
            except OSError as e:
                why = f"cannot resolve {self.leader}: {e}"
            now = time.monotonic()
            if now >= deadline:
                raise PeersUnreachable([self.leader], now - start, what="the leader")
            if now - last_progress >= PROGRESS_EVERY_S:
                log.info("waiting for the leader %s:%d (%s)", self.leader, self.port, why)
                last_progress = now
            time.sleep(min(delay, max(deadline - now, 0)))
            delay = min(delay * 2, 1.0)

    def _on_message(self, conn: Connection, message: Message) -> None:
        self._seen = time.monotonic()
        kind = message["type"]
        if kind == "plan":
            with self._wake:
                self._plan = message
                self._wake.notify_all()
        elif kind == "abort":
            code = message_code(message, EXIT_FAILURE) or EXIT_FAILURE
            self._abort_locally(code, str(message.get("reason", "")))
            with self._wake:
                self._wake.notify_all()
        elif kind == "result":
            self.decision.decide(message_code(message, 0), str(message.get("reason", "")))
        elif kind != "heartbeat":
            self.events.put(PeerMessage(self.leader, message))

    def _on_close(self, conn: Connection, why: str) -> None:
        with self._wake:
            if conn is not self._conn or self._stop.is_set():
                return
            if self._plan is None:  # not a failure yet: join() reconnects
                self._dropped = why or "closed"
                self._wake.notify_all()
                return
        self._abort_locally(EXIT_FAILURE, f"lost the leader {self.leader} ({why})")

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            conn = self._conn
            if conn is None or conn.closed:
                continue
            conn.send({"type": "heartbeat"})
            if time.monotonic() - self._seen > self.heartbeat_timeout_s:
                conn.close(f"no heartbeat for {self.heartbeat_timeout_s:g} s")

    @property
    def plan(self) -> Message:
        """The PLAN as the leader sent it (backend entries included); {} before it arrived."""
        return dict(self._plan or {})

    def send(self, message: Message) -> bool:
        """Send a backend message to the leader (it arrives there as a `PeerMessage`)."""
        conn = self._conn
        return conn is not None and conn.send(message)

    def failed(self, exit_code: int, reason: str) -> None:
        """This host's ranks failed: tell the leader, which aborts everyone else."""
        if self.decision.decide(exit_code, reason) and self._conn is not None:
            self._conn.send({"type": "failed", "code": exit_code, "reason": reason})

    def barrier(self) -> tuple[int, str]:
        """After local success: report DONE and wait for the job's result."""
        if self._conn is not None and not self.decision.decided:
            self._conn.send({"type": "done"})
        self.decision.wait()
        return self.decision.exit_code, self.decision.reason

    def close(self) -> None:
        self._stop.set()
        if self._conn is not None:
            self._conn.close("job over")
