"""The leader's side of the control channel: meet the hosts, announce the plan, decide the result.

See `follower` for the protocol's flow and `messages` for its messages. The leader accepts
connections on the control port; a connection counts as a host only after a valid HELLO from an
expected host name (the frames are already authenticated under the job token and bound to this
connection's challenge), which must arrive within `HELLO_TIMEOUT_S` of the connect. Rogue
connections (garbage, wrong token, oversized or replayed frames, silence) lose only themselves:
at most `MAX_PENDING` may be unauthenticated at once, and a new one evicts the oldest, so a
flood of idle connections can delay a real host by one retry but never lock it out. Refusals are
logged through `Refusals`: the first one in detail, then at most one summary line every
`REFUSAL_LOG_EVERY_S` with counts by kind and by peer address, so a flood of thousands costs a
few lines.

Until every host has arrived the membership is open: a host whose connection drops (or falls
silent) before the plan is simply missing again and may reconnect. Once the last host is in, the
membership is frozen: from then on a lost host aborts the job.

A hang (exit 124) is the one failure that is not aborted at once: every host must take its
ranks' stacks while they still hang, before any host's teardown breaks their collective. The
leader holds the job: HOLD to every follower that has not taken its stacks yet, then wait (at
most `HOLD_TIMEOUT_S` from the HOLD) for each one's HELD or its loss, then ABORT everyone. The
hang is the leader's own verdict (`hang`) or a follower's FAILED with code 124.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.control import wire
from launcher.control.connection import Connection
from launcher.control.follower import HOLD_TIMEOUT_S, STOP_LINGER_S, Member, Peer, stop_reason
from launcher.control.messages import (
    Abort,
    Done,
    Failed,
    Heartbeat,
    Held,
    Hello,
    Hold,
    Message,
    Plan,
    PreflightReport,
    PreflightVerdict,
    Restart,
    Result,
    SshdReady,
    Stacks,
    StacksWanted,
    exhaustive,
)
from launcher.errors import (
    EXIT_FAILURE,
    EXIT_HANG,
    JobAborted,
    PeersUnreachable,
    signal_exit_code,
    signal_name,
)
from launcher.events import PeerMessage, RemoteAbort

log = logging.getLogger("launcher")

PROGRESS_EVERY_S = 5.0
HELLO_TIMEOUT_S = 10.0  # an unauthenticated connection must say HELLO within this, in total
MAX_PENDING = 64  # unauthenticated connections at once; a new one evicts the oldest
REFUSAL_LOG_EVERY_S = 5.0  # after the first refusal, at most one summary line per this
SUMMARY_PEERS = 5  # peer addresses named in a summary line; the rest are counted


class Refusals:
    """The leader's log of refused control connections, rate-limited.

    `record(kind, peer, detail)` logs `detail` at once when nothing was logged for
    `every` seconds; otherwise it only counts. `flush()` (every heartbeat tick, and at close)
    logs one summary of what was counted once `every` seconds have passed since the last
    line (always, with `force`): how many, by kind and by peer address. Thread-safe.
    """

    def __init__(
        self, every: float = REFUSAL_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None  # when the last line was logged
        self._kinds: collections.Counter[str] = collections.Counter()
        self._peers: collections.Counter[str] = collections.Counter()

    def record(self, kind: str, peer: str, detail: str) -> None:
        now = self._clock()
        with self._lock:
            if self._last is None or (now - self._last >= self._every and not self._kinds):
                self._last = now
                log.warning("%s", detail)
                return
            self._kinds[kind] += 1
            self._peers[peer] += 1
        self.flush()

    def flush(self, *, force: bool = False) -> None:
        now = self._clock()
        with self._lock:
            if not self._kinds:
                return
            if not force and self._last is not None and now - self._last < self._every:
                return
            since = now - self._last if self._last is not None else 0.0
            kinds, peers = self._kinds, self._peers
            self._kinds, self._peers = collections.Counter(), collections.Counter()
            self._last = now
        top = peers.most_common(SUMMARY_PEERS)
        others = len(peers) - len(top)
        log.warning(
            "refused %d more control connection(s) in %.1f s: %s; from %s%s",
            kinds.total(),
            since,
            ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()),
            ", ".join(f"{peer} ({n})" for peer, n in top),
            f" and {others} other address(es)" if others else "",
        )


@dataclass
class Leader(Member):
    """The first distribution host: hosts the control port and decides the job's result."""

    expected: tuple[str, ...] = ()  # every host of the world in node order, this one included
    port: int = 0
    bind: str = ""  # the address to listen on: "" for every interface, IPv6 too
    _server: socket.socket | None = None
    _conns: dict[str, Connection] = field(default_factory=dict)
    _hellos: dict[str, Peer] = field(default_factory=dict)
    _seen: dict[str, float] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _unauth: dict[Connection, None] = field(default_factory=dict)  # oldest first
    _frozen: bool = False  # every host arrived: from now on a lost host aborts the job
    _refusals: Refusals = field(default_factory=Refusals)
    _started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    # A hang's hold: the followers whose stacks are awaited, and until when; None: no hold.
    _holding: set[str] | None = None
    _hold_until: float = 0.0
    _hold_ended: bool = False
    # `launcher stacks` requests: id -> host -> text, filled by the followers' answers.
    _requests: dict[int, dict[str, str]] = field(default_factory=dict)
    _next_request: int = 1

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def start(self) -> int:
        """Listen on the control port; the port. On `bind` when set (e.g. 127.0.0.1: only this
        machine can connect), else on every interface, IPv6 too where available.

        Raises OSError when the port is taken. Heartbeats to joined hosts start at once, so a
        follower waiting for the plan knows the leader is alive.
        """
        if self.bind:
            family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
            server = socket.create_server((self.bind, self.port), family=family, backlog=256)
        elif socket.has_dualstack_ipv6():
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
            peer = str(addr[0]).removeprefix("::ffff:")  # an IPv4 peer on the dual-stack socket
            conn = Connection(sock, self.key, self._on_message, self._on_close, peer=peer)
            conn.deadline = time.monotonic() + HELLO_TIMEOUT_S
            with self._lock:
                evict = next(iter(self._unauth)) if len(self._unauth) >= MAX_PENDING else None
                if evict is not None:
                    del self._unauth[evict]
                self._unauth[conn] = None
            if evict is not None:
                self._refusals.record(
                    "evicted",
                    evict.peer,
                    f"more than {MAX_PENDING} control connections without a hello: dropped the"
                    f" oldest, from {evict.peer} (a flood, or hosts of another job?)",
                )
                evict.close("evicted: too many connections without a hello")
            conn.start()

    def wait_for_peers(self, deadline: float, my_slots: int, my_addr: str = "") -> list[Peer]:
        """Block until every expected host said HELLO; the peers in node order.

        Freezes the membership on success. Raises `PeersUnreachable` at the deadline, after
        telling the hosts that did come (ABORT with exit code 3); `JobAborted` when a host
        failed meanwhile (e.g. a follower stopped by a signal: the others were told); `Stopped`
        as soon as a signal is posted to `interrupt` (the caller then calls `stopped`).
        """
        followers = [h for h in self.expected if h != self.host]
        last_progress = time.monotonic()
        while True:
            with self._lock:
                missing = [h for h in followers if h not in self._hellos]
                if not missing and not self.decision.decided:
                    self._frozen = True
                    peers = dict(self._hellos)
                    break
            if self.decision.decided:
                raise JobAborted(
                    self.decision.reason, exit_code=self.decision.exit_code or EXIT_FAILURE
                )
            now = time.monotonic()
            if now >= deadline:
                error = PeersUnreachable(missing, now - self._started, what="hosts")
                self.decision.decide(error.exit_code, str(error))
                self._broadcast(Abort(error.exit_code, str(error)))
                raise error
            if now - last_progress >= PROGRESS_EVERY_S:
                log.info("waiting for %d host(s): %s", len(missing), ", ".join(missing))
                last_progress = now
            self.interrupt.wait(min(deadline - now, PROGRESS_EVERY_S))
        me = Peer(self.host, my_slots, my_addr or self._my_addr())
        return [me if h == self.host else peers[h] for h in self.expected]

    def _my_addr(self) -> str:
        with self._lock:
            addrs = [p.addr for p in self._hellos.values() if p.addr]
        return addrs[0] if addrs else "127.0.0.1"

    def announce(self, plan: Plan) -> None:
        """Send the plan to every follower; from now on their silence counts."""
        now = time.monotonic()
        with self._lock:
            # A host that joined long ago has said nothing since its HELLO but heartbeats.
            self._seen = {h: max(t, now) for h, t in self._seen.items()}
        self._broadcast(plan)

    def _broadcast(self, message: Message, *, pending_too: bool = False) -> None:
        """To every joined host; with `pending_too`, also to connections that proved they hold
        the job key (their challenge authenticated) but have not said HELLO yet."""
        with self._lock:
            conns = list(self._conns.values())
            if pending_too:
                conns += [c for c in self._unauth if c.bound]
        for conn in conns:
            conn.send(message)

    def _on_message(self, conn: Connection, message: Message) -> None:
        if isinstance(message, Hello):
            self._hello(conn, message)
            return
        if conn in self._unauth:
            conn.error_kind = "no hello"
            conn.close(f"{message.TYPE!r} before hello")
            return
        host = conn.peer
        with self._lock:
            self._seen[host] = time.monotonic()
        match message:
            case Failed(code=code, reason=reason, signal=signal) if (
                code == EXIT_HANG and not signal
            ):
                # A follower's hang verdict; its stacks are taken. Hold the others.
                if self._hold(reason, exclude=host):
                    log.error("host %s declared a hang: %s", host, reason)
                    self.events.put(RemoteAbort(reason, code))
                else:
                    self._held(host)
                self.interrupt.nudge()
            case Held():
                self._held(host)
            case Stacks(id=request, text=text):
                with self._changed:
                    if request in self._requests:
                        self._requests[request][host] = text
                        self._changed.notify_all()
            case Failed(code=code, reason=reason, signal=signal):
                if self.decision.decide(code, reason):
                    log.error("host %s failed: %s", host, reason)
                    # Hosts not yet joined are told too: they would wait out the peer timeout.
                    self._broadcast(Abort(code, reason, host, signal), pending_too=True)
                    self.events.put(RemoteAbort(reason, code, signal))
                self.interrupt.nudge()
            case Done():
                with self._changed:
                    self._done.add(host)
                    self._changed.notify_all()
            case Heartbeat():
                pass
            case SshdReady() | PreflightReport():  # whoever drives that phase reads it
                self.events.put(PeerMessage(host, message))
            case (
                Plan()
                | Abort()
                | Result()
                | Hold()
                | StacksWanted()
                | PreflightVerdict()
                | Restart()
            ):  # the leader's words
                raise wire.FrameError(f"host {host} sent {message.TYPE!r}", "unexpected")
            case _:
                exhaustive(message)

    def _hello_problem(self, conn: Connection, hello: Hello) -> str:
        """Why `hello` cannot make `conn` a host of the job ("" when it can); under the lock.
        The message itself is valid already (`messages.decode`: a host name, slots 1..N)."""
        if conn not in self._unauth:
            return "not a new connection"
        if hello.host not in self.expected or hello.host == self.host:
            return "not a host of this job"
        if hello.host in self._conns:
            return "already joined"
        if self._frozen:
            return "the job has started"
        return ""

    def _hello(self, conn: Connection, hello: Hello) -> None:
        with self._lock:
            problem = self._hello_problem(conn, hello)
        if problem:
            detail = f"refused a hello from {conn.peer} ({problem}): {hello!r:.200}"
            self._refusals.record("invalid hello", conn.peer, detail)
            conn.error_kind = "refused"  # logged already
            conn.close(f"invalid hello: {problem}")
            return
        host, slots = hello.host, hello.slots
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
        self.interrupt.nudge()
        log.info("host %s joined with %d slot(s)", host, slots)

    def _on_close(self, conn: Connection, why: str) -> None:
        host = conn.peer
        with self._changed:
            if conn in self._unauth:
                del self._unauth[conn]
                pending = True
            elif self._conns.get(host) is conn:
                del self._conns[host]
                pending = False
                done, frozen = host in self._done, self._frozen
                if not frozen:
                    del self._hellos[host]
                    self._seen.pop(host, None)
                if self._holding is not None:
                    self._holding.discard(host)  # a lost host's stacks are not waited for
                self._changed.notify_all()
            else:
                return  # refused or evicted: already logged
        if pending:
            self._refused(conn, why)
            return
        self.interrupt.nudge()
        if self._stop.is_set() or done or self.decision.decided:  # over: nothing to wait for
            return
        if frozen:
            self._lost(host, why)
        else:
            log.warning("host %s left before the job started (%s); waiting for it", host, why)

    def _refused(self, conn: Connection, why: str) -> None:
        """A connection ended before a valid HELLO: one more refusal for the summary."""
        if self._stop.is_set() or conn.error_kind == "refused":  # job over, or logged already
            return
        kind = conn.error_kind or ("silent" if why.startswith("timed out") else "no hello")
        self._refusals.record(
            kind, conn.peer, f"dropped a control connection from {conn.peer}: {why}"
        )

    def _lost(self, host: str, why: str) -> None:
        reason = f"host {host} was lost ({why})"
        if self.decision.decide(EXIT_FAILURE, reason):
            log.error("%s: aborting the job", reason)
            self._broadcast(Abort(EXIT_FAILURE, reason))
            self.events.put(RemoteAbort(reason, EXIT_FAILURE))

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self._refusals.flush()
            self._broadcast(Heartbeat())
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

    def broadcast(self, message: PreflightVerdict) -> None:
        """Send a phase's message (the preflight's verdict) to every joined host."""
        self._broadcast(message)

    def failed(self, exit_code: int, reason: str, signal: str = "") -> None:
        """This host's ranks failed, or it was stopped by `signal`: abort every follower with
        this root cause (clipped to `wire.MAX_TEXT` bytes on the wire; the local decision
        keeps it whole)."""
        if self.decision.decide(exit_code, reason):
            host = self.host if signal else ""
            self._broadcast(Abort(exit_code, reason, host, signal))

    def restart(self, attempt: int) -> None:
        """Whole-job restarts: tell every follower that the job restarts as `attempt` (they
        meet again once their ranks are gone). The caller then closes this leader, with a
        linger, and meets again on the same control port."""
        self._broadcast(Restart(attempt))

    def hang(self, reason: str) -> None:
        """This host declared the hang: HOLD every follower, wait for their stacks, ABORT."""
        self._hold(reason, exclude="")
        self._release()

    def held(self) -> None:
        """A follower declared the hang (its HOLD went out on arrival): this host's stacks are
        taken too; wait for the other followers', then ABORT everyone."""
        self._release()

    def _hold(self, reason: str, *, exclude: str) -> bool:
        """Decide the job's result as this hang; if it is the first decision, HOLD every joined
        follower but `exclude` (which took its stacks already). The decision and the start of
        the hold are one step under the lock: a `_release` that finds the job decided as a hang
        always finds its hold too. False when the job was decided before."""
        with self._changed:
            if not self.decision.decide(EXIT_HANG, reason):
                return False
            self._holding = {h for h in self._conns if h != exclude}
            self._hold_until = time.monotonic() + HOLD_TIMEOUT_S
            conns = [self._conns[h] for h in sorted(self._holding)]
        for conn in conns:
            conn.send(Hold(reason))
        return True

    def gather_stacks(self, timeout: float) -> dict[str, str]:
        """Every joined follower's ranks' stacks as text (host -> text), asked for now; a
        follower that does not answer within `timeout` seconds (or is lost) gets a line saying
        so. Blocks; safe from any thread, several requests at once included."""
        with self._changed:
            request, self._next_request = self._next_request, self._next_request + 1
            answers = self._requests[request] = {}
            hosts = sorted(self._conns)
            conns = [self._conns[h] for h in hosts]
        for conn in conns:
            conn.send(StacksWanted(request))
        deadline = time.monotonic() + timeout
        with self._changed:
            while (missing := [h for h in hosts if h not in answers and h in self._conns]) and (
                left := deadline - time.monotonic()
            ) > 0:
                self._changed.wait(left)
            del self._requests[request]
        for host in hosts:
            if host not in answers:
                why = f"no answer within {timeout:g} s" if host in missing else "lost"
                answers[host] = f"# {host}: no stacks ({why})"
        return {h: answers[h] for h in hosts}

    def _held(self, host: str) -> None:
        with self._changed:
            if self._holding is not None:
                self._holding.discard(host)
                self._changed.notify_all()

    def _release(self) -> None:
        """Wait for the hold to end (every HELD, or its deadline), then ABORT every follower
        with the job's result, once. Returns at once when no hold is under way (the job was
        decided by another failure, whose ABORT went out already)."""
        with self._changed:
            if self._holding is None or self._hold_ended:
                return
            while self._holding and (left := self._hold_until - time.monotonic()) > 0:
                self._changed.wait(left)
            late = sorted(self._holding)
            self._hold_ended = True
        if late:
            log.warning(
                "no stacks from %s within %g s of the hang's hold: not waiting for them",
                ", ".join(late),
                HOLD_TIMEOUT_S,
            )
        self._broadcast(Abort(self.decision.exit_code or EXIT_HANG, self.decision.reason))

    def stopped(self, signum: int) -> None:
        """Stopped while meeting: ABORT {128+N, reason, host, signal} to every connected host
        (joined or not yet), then close, waiting at most `STOP_LINGER_S` for them to leave."""
        code, reason = signal_exit_code(signum), stop_reason(signum, self.host)
        if self.decision.decide(code, reason):
            log.error("%s: telling the other hosts", reason)
            self._broadcast(Abort(code, reason, self.host, signal_name(signum)), pending_too=True)
        self.close(linger=STOP_LINGER_S)

    def conclude(self) -> tuple[int, str]:
        """The leader alone saw the whole job end well (MPI: mpirun's exit covers every host):
        send RESULT without waiting for DONE. Returns the job's (code, reason)."""
        if self.decision.decide(0, ""):
            self._broadcast(Result(0))
        return self.decision.exit_code, self.decision.reason

    def barrier(self) -> tuple[int, str]:
        """After local success: wait for every follower's DONE (or a failure), then RESULT."""
        followers = {h for h in self.expected if h != self.host}
        with self._changed:
            while not self.decision.decided and not followers <= self._done:
                self._changed.wait(self.heartbeat_every)
        if self.decision.decide(0, ""):
            self._broadcast(Result(0))
        return self.decision.exit_code, self.decision.reason

    def close(self, linger: float = 0.0) -> None:
        """Stop listening and close every connection. With `linger`, first let each peer read
        what it was sent: wait (at most `linger` seconds in all) for the peers to close."""
        self._stop.set()
        if self._server is not None:
            # close() alone does not wake a thread blocked in accept() on Linux; shutdown does.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            conns = [*self._conns.values(), *self._unauth]
        if linger > 0:
            peers = [c for c in conns if c.bound]  # a rogue without the key is told nothing
            for conn in peers:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + linger
            for conn in peers:
                conn.wait_closed(max(end - time.monotonic(), 0.0))
        for conn in conns:
            conn.close("job over")
        self._refusals.flush(force=True)
