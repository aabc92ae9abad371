"""Watch the ranks of this host until the job ends; fail fast; forward signals.

`Supervisor.run()` blocks on one event queue fed by the rank waiter threads (`RankExited`), the
launcher's signal handlers (`SignalReceived`) and, in multi-host jobs, the control channel
(`RemoteAbort`). It never sleeps or polls. The first non-zero exit terminates every other rank
(SIGTERM to each process group, SIGKILL after the grace period); ranks the launcher stopped are
recorded as terminated and can never be the root cause. SIGTERM, SIGINT, SIGHUP, SIGUSR1 and
SIGUSR2 are forwarded to every rank; the first three also stop the job (a second SIGINT kills at
once, as users expect of Ctrl-C twice).

A hang (`HangDeclared`, from the hang monitor) is a failure acted on before anything is
killed: `on_hang` takes every rank's stack and names the culprit, then every rank is stopped
as for a failure and the outcome carries the report (exit 124). `on_hang` may defer (return
None: a host of a multi-host job whose ranks single no culprit out waits one more window for
the host that holds it); the verdict is then judged again, finally, when the window ends. A
`RemoteAbort` with exit 124 (a hang declared by another host) first has this host's stacks
taken (`on_remote_hang`).
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from launcher.hangs.verdict import Hung

from launcher.errors import EXIT_HANG, StopRequested
from launcher.events import (
    Events,
    HangDeclared,
    HangReport,
    Outcome,
    RankExited,
    RemoteAbort,
    RunState,
    SignalReceived,
)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# After SIGKILL a rank in uninterruptible sleep (D state) may never be reaped; do not hang on it.
KILL_WAIT_S = 10.0


class Ranks(Protocol):
    """What the supervisor needs of a process set (procs.ProcessSet in production)."""

    def started(self) -> list[int]:
        """Every rank started; each posts exactly one `RankExited`, however early it exits."""

    def signal(self, sig: int, ranks: list[int] | None = None) -> None:
        """Send `sig` to the process groups of `ranks`; None: of every rank ever started."""


@contextmanager
def forwarding_signals(events: Events, *, linger: bool = False) -> Iterator[None]:
    """Turn the forwarded signals into events for as long as the block runs.

    With `linger`, the block's end does not restore the old handlers but ignores these
    signals from then on: the ranks are gone, and a stop signal that arrives while the
    launcher writes its report or waits at the exit barrier (every host of a stopped job gets
    one, some after the job already ended) must not kill it before it reports.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        events.put(SignalReceived(signum))  # SimpleQueue.put is safe in a signal handler

    previous = {sig: signal.signal(sig, handler) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, _late if linger else old)


@contextmanager
def raising_signals(host: str = "") -> Iterator[None]:
    """Turn the first stop signal into `StopRequested` in the main thread, for the phases
    before the ranks run (install, meeting, sshd): the exception unwinds whatever waits, each
    phase stops its own helper on the way out, and `cli` writes output/failure and exits
    128+N. Later stop signals are ignored, so that the clean-up cannot be interrupted.
    `forwarding_signals` takes over (nested) while the ranks run.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in STOPPING:
            signal.signal(sig, _late)
        raise StopRequested(signum, host)

    previous = {sig: signal.signal(sig, handler) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _late(signum: int, frame: FrameType | None) -> None:
    """A signal after the ranks ended: the result is already decided; finish reporting it."""


@dataclass
class Supervisor:
    ranks: Ranks
    events: Events
    grace_s: float
    on_event: Callable[[object], None] | None = None
    # Called once when this host decides to stop the job (root-cause rank, or stop signal), so
    # the control channel can tell the other hosts at once, before the local teardown ends.
    on_stop: Callable[[int | None, int | None], None] | None = None
    clock: Callable[[], float] = time.monotonic
    fail_fast: bool = True  # False: a failure is recorded but the others run on (local clusters)
    # (verdict, final) -> the hang's report, taken before any rank is stopped; None: defer
    # (only when not final). Unset: a `HangDeclared` is ignored.
    on_hang: Callable[[Hung, bool], HangReport | None] | None = None
    # Another host declared a hang: take this host's evidence; returns the report's details.
    on_remote_hang: Callable[[], str] | None = None
    _deferred: tuple[float, Hung] | None = None  # a verdict to judge again (when, verdict)
    _pending: set[int] = field(default_factory=set)
    _terminated: set[int] = field(default_factory=set)
    _stopping_since: float | None = None
    _killed: bool = False

    def run(self) -> Outcome:
        start = self.clock()
        # Every rank started, not those still running: a rank that exited before this line
        # has its exit waiting in the queue, and must be read like any other.
        self._pending = set(self.ranks.started())
        exits: dict[int, RankExited] = {}
        state = RunState.SUCCEEDED
        root: int | None = None
        stop_signal: int | None = None
        remote: RemoteAbort | None = None
        hang: HangReport | None = None
        while self._pending:
            event = self._next_event()
            if event is None:
                continue
            if self.on_event is not None:
                self.on_event(event)
            if isinstance(event, RankExited):
                self._pending.discard(event.rank)
                exits[event.rank] = event
                failed = event.returncode != 0 and event.rank not in self._terminated
                if failed and state is RunState.SUCCEEDED:
                    state, root = RunState.FAILED, event.rank
                    if self.fail_fast:
                        self._stop(signal.SIGTERM)
                    if self.on_stop is not None:
                        self.on_stop(root, None)
            elif isinstance(event, SignalReceived):
                stops = event.signum in STOPPING
                # A stop reaches every group (see _stop); others only ranks still running.
                self.ranks.signal(event.signum, None if stops else sorted(self._pending))
                if stops:
                    if stop_signal is not None and event.signum == signal.SIGINT:
                        self._kill()  # Ctrl-C twice: no more grace
                    if state is RunState.SUCCEEDED:
                        state, stop_signal = RunState.INTERRUPTED, event.signum
                        if self.on_stop is not None:
                            self.on_stop(None, event.signum)
                    self._stop(None)
            elif isinstance(event, RemoteAbort):
                if state is RunState.SUCCEEDED:
                    state, remote = RunState.ABORTED, event
                    self._deferred = None
                    if event.exit_code == EXIT_HANG and self.on_remote_hang is not None:
                        hang = HangReport(event.reason, self.on_remote_hang())
                self._stop(signal.SIGTERM)
            elif (
                isinstance(event, HangDeclared)
                and state is RunState.SUCCEEDED
                and self.on_hang is not None
            ):
                final = self._deferred is not None and self._deferred[1] is event.verdict
                self._deferred = None
                found = self.on_hang(event.verdict, final)
                if found is None:  # judged again one window later, unless told first
                    self._deferred = (self.clock() + event.verdict.window_s, event.verdict)
                else:
                    state, hang = RunState.HUNG, found
                    self._stop(signal.SIGTERM)
        return Outcome(
            state=state,
            exits=exits,
            root_cause=root,
            terminated=frozenset(self._terminated),
            stop_signal=stop_signal,
            remote=remote,
            duration_s=self.clock() - start,
            hang=hang,
        )

    def _next_event(self) -> object | None:
        if self._stopping_since is None and self._deferred is not None:
            at, verdict = self._deferred
            try:
                return self.events.get(timeout=max(at - self.clock(), 0.0))
            except queue.Empty:
                return HangDeclared(verdict)  # the deferred verdict, judged finally
        if self._stopping_since is None:
            return self.events.get()
        limit = self.grace_s if not self._killed else self.grace_s + KILL_WAIT_S
        remaining = self._stopping_since + limit - self.clock()
        if remaining <= 0:
            if self._killed:
                self._pending.clear()  # unkillable ranks: report, do not hang
                return None
            self._kill()
            return None
        try:
            return self.events.get(timeout=remaining)
        except queue.Empty:
            return None

    def _stop(self, sig: int | None) -> None:
        """Begin stopping every pending rank (sig None: the signal was already forwarded).

        The signal goes to every rank's process group, not only to the ranks still running: a
        rank that already exited (the failed one, typically) may have left children in its
        group, and they must stop within the same grace period, not after it.
        """
        if sig is not None:
            self.ranks.signal(sig, None)
        self._terminated |= self._pending
        if self._stopping_since is None:
            self._stopping_since = self.clock()

    def _kill(self) -> None:
        self.ranks.signal(signal.SIGKILL, None)
        self._killed = True
        if self._stopping_since is None:
            self._stopping_since = self.clock()
