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
follower on its own. A hang (FAILED with code 124, or the leader's own verdict) is held first:
the leader sends HOLD, every host takes its ranks' stacks and answers HELD, and only then the
ABORT goes out (`leader`'s docstring; `Member.hang`, `Member.held`). On success followers
report DONE and wait at the exit barrier for the leader's RESULT, so no host leaves while others
still train. `launcher stacks` on the leader's host asks every follower for its ranks' stacks
(STACKS?, answered by STACKS: `Leader.gather_stacks`).

Every message is one of the frozen types of `messages` (the protocol in full: fields, bounds,
what `decode` refuses); a message a role does not expect from its peer (a PLAN from a
follower, a HELLO from the leader) is a protocol error that ends that connection. Aborts reach
the local supervisor as `supervise.RemoteAbort` events on its queue. Free text (root causes) is
clipped to `wire.MAX_TEXT` bytes with a marker when a message is built.

Stop signals while the hosts meet: the thread that waits in `meet` waits on an `Interrupt`,
which a signal handler may post to (`Interrupt.post` is reentrant). The wait then raises
`Stopped`, and the member tells the others before leaving (`Member.stopped`): the leader sends
ABORT {code 128+N, reason, host, signal} to every connected host, a follower sends FAILED with
the same fields to the leader, which aborts everyone else; `meet` raises `MeetStopped`. So no
host waits out the peer timeout for one that was stopped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher import net
from launcher.control import wire
from launcher.control.connection import Connection, Decision
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
    StopRequested,
    signal_exit_code,
    signal_name,
)
from launcher.events import Events, PeerMessage, RemoteAbort

log = logging.getLogger("launcher")

PROGRESS_EVERY_S = 5.0
STOP_LINGER_S = 2.0  # a stopped host waits at most this for its last words to be read
CONNECT_TIMEOUT_S = 2.0  # one connect attempt; a stop signal is seen between attempts
# A hang's hold: how long the leader waits for every host's stacks after it sent HOLD (taking
# them is bounded by two methods of `hangs.job.STACK_TIMEOUT_S` each), and how long a follower
# waits for the ABORT that releases it. A host that does not answer in time is not waited for.
HOLD_TIMEOUT_S = 12.0
RELEASE_WAIT_S = HOLD_TIMEOUT_S + 3.0


class Stopped(Exception):
    """Raised out of a member's wait when a stop signal was posted to its `Interrupt`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class MeetStopped(StopRequested):
    """This launcher was stopped by signal `signum` while the hosts were meeting; the other
    hosts have been told (as far as they could be reached). Exit code 128+N; the message is
    the root cause every host reports (`stop_reason`)."""

    def __init__(self, signum: int, host: str) -> None:
        super().__init__(signum, host)
        self.message = stop_reason(signum, host)
        self.args = (self.message,)
        self.host = host


def stop_reason(signum: int, host: str) -> str:
    """The root cause a stop signal during the meeting gives, on every host."""
    return f"the job was stopped by {signal_name(signum)} on {host} while the hosts were meeting"


class Interrupt:
    """Wakes the thread waiting in `meet` when a stop signal arrives, or when its state changes.

    `post(signum)` may be called from a signal handler (or any thread): it only assigns an
    attribute and puts on a `queue.SimpleQueue`, whose `put` is reentrant; it takes no lock the
    interrupted thread could hold. The first signal posted is the one reported. `wait` returns
    after a `nudge` or the timeout, and raises `Stopped` once a signal was posted, whether it
    came before or during the wait.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.signum: int | None = None

    def post(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self._queue.put(signum)

    def nudge(self) -> None:
        """Something the waiter watches changed: let it look again."""
        self._queue.put(None)

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    def wait(self, timeout: float) -> None:
        self.check()
        with contextlib.suppress(queue.Empty):
            self._queue.get(timeout=max(timeout, 0.0))
        self.check()


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    slots: int
    addr: str  # the leader's address as this peer reached it (its MASTER_ADDR)


@dataclass
class Member:
    key: bytes
    host: str
    heartbeat_timeout_s: float
    events: Events
    decision: Decision = field(default_factory=Decision)
    # What the thread in `meet` waits on; the caller's signal handler posts to it.
    interrupt: Interrupt = field(default_factory=Interrupt)
    # This host's ranks' stacks as `launcher stacks` prints them, taken now without stopping
    # anything; set while the ranks run with hang detection on (`app.execute`), else None.
    local_stacks: Callable[[], str] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def heartbeat_every(self) -> float:
        return max(self.heartbeat_timeout_s / 4, 0.05)

    def failed(self, exit_code: int, reason: str, signal: str = "") -> None:
        """This host stopped the job (a rank failed, or a stop signal named by `signal`):
        tell the others."""
        raise NotImplementedError

    def hang(self, reason: str) -> None:
        """This host declared a hang (`reason`: the culprit line) and took its ranks' stacks.
        Tell the others, then block until every host has taken its own stacks (the hold), at
        most `RELEASE_WAIT_S`: only then may any rank be stopped. Decides the job's result
        (124, `reason`) unless it was already decided."""
        raise NotImplementedError

    def held(self) -> None:
        """Another host's hang verdict reached this host, which took its ranks' stacks: block
        until every host has (at most `RELEASE_WAIT_S`); then the ranks may be stopped."""
        raise NotImplementedError

    def gather_stacks(self, timeout: float) -> dict[str, str]:
        """Every other host's ranks' stacks, as text by host: only the leader can ask them
        (`Leader.gather_stacks`); a follower has no one to ask and returns {}."""
        return {}

    def stopped(self, signum: int) -> None:
        """This host was stopped by `signum` while meeting: tell the others, then close.

        Decides the job's result (128+N, `stop_reason`) unless it was already decided. Blocks
        at most `STOP_LINGER_S` for the words to be read."""
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
        self.interrupt.nudge()


@dataclass
class Follower(Member):
    """Every other distribution host: joins the leader, follows its plan and its result."""

    leader: str = ""
    port: int = 0
    _conn: Connection | None = None
    _plan: Plan | None = None
    _dropped: str = ""  # why the current connection ended before the plan
    _wake: threading.Lock = field(default_factory=threading.Lock)
    _seen: float = field(default_factory=time.monotonic)
    _evidence: bool = False  # this host's stacks are taken: a HOLD is answered at once
    _released: threading.Event = field(default_factory=threading.Event)  # ABORT, RESULT, lost
    # Whole-job restarts: the leader's word once this attempt ended (RESTART, RESULT, or the
    # connection's end), and the attempt a RESTART named.
    _verdict: threading.Event = field(default_factory=threading.Event)
    _restart: int | None = None

    def join(self, deadline: float, slots: int) -> tuple[Plan, str]:
        """Connect (retrying until `deadline`), say HELLO, return (PLAN, leader address).

        Raises `PeersUnreachable` when the leader cannot be reached by the deadline, and
        `JobAborted` (with the leader's exit code: 3 when hosts never came) when the leader
        refuses the job. Once connected it waits for the leader's verdict past `deadline`,
        for as long as the leader's heartbeats arrive. Raises `Stopped` as soon as a signal is
        posted to `interrupt` (the caller then calls `stopped`).
        """
        start = time.monotonic()
        beating = False
        while True:
            sock, addr = self._connect(deadline, start)
            conn = Connection(sock, self.key, self._on_message, self._on_close, peer=self.leader)
            with self._wake:
                self._conn, self._dropped, self._seen = conn, "", time.monotonic()
            conn.start()
            conn.send(Hello(self.host, slots))  # goes out after the leader's challenge
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
            self.interrupt.wait(min(0.2, max(deadline - time.monotonic(), 0)))

    def _await_plan(self) -> str:
        """Wait for PLAN, ABORT or the end of this connection; why it ended ("" if it did not)."""
        last_progress = time.monotonic()
        while self._plan is None and not self.decision.decided and not self._dropped:
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                log.info("joined %s; waiting for the other hosts", self.leader)
                last_progress = time.monotonic()
            self.interrupt.wait(PROGRESS_EVERY_S)
        return self._dropped

    def _connect(self, deadline: float, start: float) -> tuple[socket.socket, str]:
        delay, last_progress, why = 0.05, start, ""
        while True:
            try:
                for family, sockaddr in net.resolve(self.leader, self.port):
                    self.interrupt.check()
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        left = deadline - time.monotonic()
                        sock.settimeout(max(0.5, min(CONNECT_TIMEOUT_S, left)))
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
            self.interrupt.wait(min(delay, max(deadline - now, 0)))
            delay = min(delay * 2, 1.0)

    def _on_message(self, conn: Connection, message: Message) -> None:
        self._seen = time.monotonic()
        match message:
            case Plan():
                with self._wake:
                    self._plan = message
                self.interrupt.nudge()
            case Abort(code=code, reason=reason):
                self._abort_locally(code, reason)
                self._released.set()
            case Result(code=code):
                self.decision.decide(code, "")
                self._released.set()
                self._verdict.set()
            case Hold(reason=reason):
                if self._evidence:  # declared here, or held already: the stacks are taken
                    conn.send(Held())
                else:  # the supervisor takes the stacks, then calls `held`
                    self._abort_locally(EXIT_HANG, reason)
            case StacksWanted(id=request):
                threading.Thread(
                    target=self._send_stacks,
                    args=(conn, request),
                    daemon=True,
                    name="control-stacks",
                ).start()  # taking them takes a while: the heartbeats must go on meanwhile
            case Restart(attempt=attempt):
                self._restart = attempt
                self._verdict.set()
            case Heartbeat():
                pass
            case PreflightVerdict():  # the preflight (launcher.preflight.gather) reads it
                self.events.put(PeerMessage(self.leader, message))
            case (
                Hello() | Failed() | Done() | SshdReady() | Held() | Stacks() | PreflightReport()
            ):  # a follower's words
                raise wire.FrameError(f"the leader sent {message.TYPE!r}", "unexpected")
            case _:
                exhaustive(message)

    def _on_close(self, conn: Connection, why: str) -> None:
        with self._wake:
            if conn is self._conn and self._plan is not None:
                self._verdict.set()  # no RESTART can come any more: the attempt was the last
            if conn is not self._conn or self._stop.is_set():
                return
            if self._plan is None:  # not a failure yet: join() reconnects
                self._dropped = why or "closed"
                self.interrupt.nudge()
                return
        self._abort_locally(EXIT_FAILURE, f"lost the leader {self.leader} ({why})")
        self._released.set()

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            conn = self._conn
            if conn is None or conn.closed:
                continue
            conn.send(Heartbeat())
            if time.monotonic() - self._seen > self.heartbeat_timeout_s:
                conn.close(f"no heartbeat for {self.heartbeat_timeout_s:g} s")

    @property
    def plan(self) -> Plan | None:
        """The PLAN as the leader sent it (backend extras included); None before it arrived."""
        return self._plan

    def send(self, message: SshdReady | PreflightReport) -> bool:
        """Send a backend message to the leader (it arrives there as a `PeerMessage`)."""
        conn = self._conn
        return conn is not None and conn.send(message)

    def failed(self, exit_code: int, reason: str, signal: str = "") -> None:
        """This host's ranks failed, or it was stopped by `signal`: tell the leader, which
        aborts everyone else (and, with restarts, does not restart a stopped job). `reason` is
        clipped to `wire.MAX_TEXT` bytes on the wire (the local decision keeps it whole)."""
        if self.decision.decide(exit_code, reason) and self._conn is not None:
            host = self.host if signal else ""
            self._conn.send(Failed(exit_code, reason, host=host, signal=signal))

    def next_attempt(self, timeout: float) -> int | None:
        """Whole-job restarts, after this host's part of a failed attempt ended: the attempt
        the leader restarts the job as (its RESTART), or None when it does not (its RESULT,
        the connection's end, or `timeout` seconds of nothing: the leader is gone)."""
        self._verdict.wait(timeout)
        return self._restart

    def hang(self, reason: str) -> None:
        """FAILED {124, reason} to the leader, which holds every other host while it takes its
        stacks; or HELD, when the leader's HOLD came first. Then wait for the ABORT."""
        self._evidence = True
        conn = self._conn
        if conn is not None:
            conn.send(
                Failed(EXIT_HANG, reason) if self.decision.decide(EXIT_HANG, reason) else Held()
            )
        self._await_release()

    def held(self) -> None:
        """HELD to the leader, then wait for the ABORT."""
        self._evidence = True
        conn = self._conn
        if conn is not None:
            conn.send(Held())
        self._await_release()

    def _send_stacks(self, conn: Connection, request: int) -> None:
        source = self.local_stacks
        if source is None:
            text = f"# {self.host}: no stacks (its ranks are not running, or hang detection is off)"
        else:
            try:
                text = source()
            except Exception as e:  # the leader gets the reason instead of silence
                text = f"# {self.host}: could not take the stacks: {e}"
        conn.send(Stacks(request, text))

    def _await_release(self) -> None:
        if not self._released.wait(RELEASE_WAIT_S):
            log.warning(
                "the leader did not end the hang's hold within %.0f s: stopping this host's ranks",
                RELEASE_WAIT_S,
            )

    def stopped(self, signum: int) -> None:
        """Stopped while meeting: FAILED {128+N, reason, host, signal} to the leader (which
        aborts every other host), then wait (at most `STOP_LINGER_S`) for the leader to close
        the connection, so the words are read before this host leaves; then close."""
        code, reason = signal_exit_code(signum), stop_reason(signum, self.host)
        self._stop.set()  # from now on a closed connection is this host leaving, not a loss
        conn = self._conn
        if self.decision.decide(code, reason) and conn is not None and not conn.closed:
            log.error("%s: telling the leader", reason)
            conn.send(Failed(code, reason, host=self.host, signal=signal_name(signum)))
            conn.finish(STOP_LINGER_S)
        self.close()

    def barrier(self) -> tuple[int, str]:
        """After local success: report DONE and wait for the job's result."""
        if self._conn is not None and not self.decision.decided:
            self._conn.send(Done())
        self.decision.wait()
        return self.decision.exit_code, self.decision.reason

    def close(self) -> None:
        self._stop.set()
        if self._conn is not None:
            self._conn.close("job over")
