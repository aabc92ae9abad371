"""The supervisor's decisions, driven by scripted event sequences and a fake set of ranks.

`FakeRanks` answers signals the way real ranks would (by queueing the `RankExited` the signal
causes) according to how each rank is scripted to behave; the clock is a fake that jumps, so
the grace period and the unkillable-rank deadline are reached without waiting.
"""

from __future__ import annotations

import os
import queue
import signal
from collections.abc import Iterable

import pytest

from launcher import report
from launcher.events import Events, RankExited, RemoteAbort, RunState, SignalReceived
from launcher.supervise import Supervisor, forwarding_signals

TERM, KILL, INT = signal.SIGTERM, signal.SIGKILL, signal.SIGINT


class FakeRanks:
    """Ranks 0..n-1. `obeys[r]` are the signals that end rank r (default: TERM, INT, HUP,
    KILL); an ended rank's exit is queued, as a waiter thread would."""

    def __init__(
        self,
        events: Events,
        n: int,
        obeys: dict[int, Iterable[int]] | None = None,
    ) -> None:
        self.events = events
        self.n = n
        self.alive = set(range(n))
        self.obeys = {
            r: set((obeys or {}).get(r, (TERM, INT, signal.SIGHUP, KILL))) for r in range(n)
        }
        self.sent: list[tuple[int, tuple[int, ...] | None]] = []
        self.at = 100.0

    def started(self) -> list[int]:
        return list(range(self.n))  # asked once, before the scripted exits are read

    def signal(self, sig: int, ranks: list[int] | None = None) -> None:
        self.sent.append((sig, None if ranks is None else tuple(ranks)))
        for rank in sorted(self.alive if ranks is None else set(ranks) & self.alive):
            if sig in self.obeys[rank]:
                self.exit(rank, -sig)

    def exit(self, rank: int, returncode: int) -> None:
        self.alive.discard(rank)
        self.at += 1
        self.events.put(RankExited(rank, returncode, self.at))


class JumpingClock:
    """Each reading is `step` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def supervisor(ranks: FakeRanks, grace: float = 30.0, **kw: object) -> Supervisor:
    return Supervisor(ranks, ranks.events, grace, **kw)  # type: ignore[arg-type]


def setup(n: int, **obeys: Iterable[int]) -> FakeRanks:
    """`n` ranks; `r0=(KILL,)` scripts which signals end rank 0."""
    events: Events = queue.SimpleQueue()
    return FakeRanks(events, n, {int(k[1:]): v for k, v in obeys.items()})


def test_all_ranks_succeed() -> None:
    ranks = setup(2)
    ranks.exit(1, 0)
    ranks.exit(0, 0)
    outcome = supervisor(ranks).run()
    assert outcome.state is RunState.SUCCEEDED
    assert (outcome.root_cause, outcome.terminated, ranks.sent) == (None, frozenset(), [])
    assert sorted(outcome.exits) == [0, 1]
    assert report.exit_code(outcome) == 0


def test_first_failure_terminates_every_other_rank() -> None:
    ranks = setup(3)
    ranks.exit(1, 3)
    outcome = supervisor(ranks).run()
    assert outcome.state is RunState.FAILED
    assert outcome.root_cause == 1
    assert outcome.terminated == {0, 2}
    # SIGTERM to every group, the failed rank's too (its children may still run).
    assert ranks.sent == [(TERM, None)]
    assert {r: e.returncode for r, e in outcome.exits.items()} == {0: -TERM, 1: 3, 2: -TERM}
    assert report.exit_code(outcome) == 3


def test_a_terminated_rank_is_never_the_root_cause() -> None:
    # Rank 0 catches SIGTERM and exits 1 (what torch's elastic handler does): still terminated.
    ranks = setup(2, r0=())
    ranks.exit(1, 7)

    def rank_0_fails_as_it_is_stopped(event: object) -> None:
        if isinstance(event, RankExited) and event.rank == 1:
            ranks.exit(0, 1)

    outcome = supervisor(ranks, on_event=rank_0_fails_as_it_is_stopped).run()
    assert (outcome.root_cause, outcome.terminated) == (1, frozenset({0}))
    assert report.exit_code(outcome) == 7


def test_the_earliest_failure_stays_the_root_cause() -> None:
    ranks = setup(3, r0=(), r2=())  # 0 and 2 ignore SIGTERM but fail on their own
    ranks.exit(2, 4)
    ranks.exit(0, 5)
    ranks.exit(1, 6)
    outcome = supervisor(ranks).run()
    assert outcome.root_cause == 2
    assert report.exit_code(outcome) == 4


def test_a_rank_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    ranks = setup(2, r0=(KILL,))
    ranks.exit(1, 2)
    outcome = supervisor(ranks, grace=0.2).run()  # the real clock: a short real wait
    assert ranks.sent == [(TERM, None), (KILL, None)]
    assert outcome.exits[0].returncode == -KILL
    assert outcome.terminated == {0}
    assert outcome.duration_s >= 0.2  # not before the grace period was over


def test_sigkill_is_not_sent_while_ranks_obey_within_the_grace_period() -> None:
    ranks = setup(4)
    ranks.exit(3, 1)
    outcome = supervisor(ranks, grace=1e9).run()
    assert [sig for sig, _ in ranks.sent] == [TERM]
    assert outcome.terminated == {0, 1, 2}


def test_an_unkillable_rank_does_not_hang_the_launcher() -> None:
    ranks = setup(2, r0=())  # in D state: not even SIGKILL ends it
    ranks.exit(1, 1)
    outcome = supervisor(ranks, grace=1.0, clock=JumpingClock(step=1000.0)).run()
    assert [sig for sig, _ in ranks.sent] == [TERM, KILL]
    assert outcome.state is RunState.FAILED
    assert 0 not in outcome.exits
    assert report.exit_code(outcome) == 1


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2])
def test_user_signals_are_forwarded_and_the_job_carries_on(sig: int) -> None:
    ranks = setup(3)
    ranks.exit(2, 0)
    ranks.events.put(SignalReceived(sig))

    def finish_after_the_signal(event: object) -> None:
        if isinstance(event, SignalReceived):
            ranks.exit(0, 0)
            ranks.exit(1, 0)

    outcome = supervisor(ranks, on_event=finish_after_the_signal).run()
    assert ranks.sent == [(sig, (0, 1))]  # the ranks still running
    assert outcome.state is RunState.SUCCEEDED


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_is_forwarded_and_stops_the_job(sig: int) -> None:
    ranks = setup(2)
    ranks.events.put(SignalReceived(sig))
    stops: list[tuple[int | None, int | None]] = []
    outcome = supervisor(ranks, on_stop=lambda r, s: stops.append((r, s))).run()
    assert ranks.sent == [(sig, None)]
    assert outcome.state is RunState.INTERRUPTED
    assert (outcome.stop_signal, outcome.root_cause) == (sig, None)
    assert outcome.terminated == {0, 1}
    assert stops == [(None, sig)]
    assert report.exit_code(outcome) == 128 + sig


def test_ctrl_c_twice_kills_at_once() -> None:
    ranks = setup(2, r0=(KILL,), r1=(KILL,))
    ranks.events.put(SignalReceived(INT))
    ranks.events.put(SignalReceived(INT))
    outcome = supervisor(ranks, grace=1e9).run()
    assert ranks.sent == [(INT, None), (INT, None), (KILL, None)]
    assert report.exit_code(outcome) == 130


def test_a_failure_after_a_stop_signal_does_not_change_the_result() -> None:
    ranks = setup(2, r0=(), r1=())
    ranks.events.put(SignalReceived(TERM))
    ranks.exit(0, 3)
    ranks.exit(1, 0)
    outcome = supervisor(ranks).run()
    assert (outcome.state, outcome.root_cause) == (RunState.INTERRUPTED, None)
    assert report.exit_code(outcome) == 143


def test_on_stop_is_told_the_root_cause_once() -> None:
    ranks = setup(3, r0=(), r2=())
    ranks.exit(1, 9)
    ranks.exit(0, 8)
    ranks.exit(2, 0)
    stops: list[tuple[int | None, int | None]] = []
    seen: list[object] = []
    sup = supervisor(ranks, on_stop=lambda r, s: stops.append((r, s)), on_event=seen.append)
    sup.run()
    assert stops == [(1, None)]
    assert [e.rank for e in seen if isinstance(e, RankExited)] == [1, 0, 2]


def test_remote_abort_stops_this_host() -> None:
    ranks = setup(2)
    ranks.events.put(RemoteAbort("rank 5 on algo-2 exited with code 3", 3))
    outcome = supervisor(ranks).run()
    assert outcome.state is RunState.ABORTED
    assert ranks.sent == [(TERM, None)]
    assert outcome.root_cause is None and outcome.terminated == {0, 1}
    assert report.exit_code(outcome) == 3


def test_without_fail_fast_the_other_ranks_run_on() -> None:
    ranks = setup(2)
    ranks.exit(0, 2)
    ranks.exit(1, 0)
    outcome = supervisor(ranks, fail_fast=False).run()
    assert ranks.sent == []
    assert (outcome.state, outcome.root_cause, outcome.terminated) == (
        RunState.FAILED,
        0,
        frozenset(),
    )


def test_forwarding_signals_turns_signals_into_events_and_restores_handlers() -> None:
    events: Events = queue.SimpleQueue()
    before = signal.getsignal(signal.SIGUSR2)
    with forwarding_signals(events):
        os.kill(os.getpid(), signal.SIGUSR2)
        assert events.get(timeout=5) == SignalReceived(signal.SIGUSR2)
    assert signal.getsignal(signal.SIGUSR2) is before


def test_lingering_forwarding_ignores_stop_signals_after_the_block() -> None:
    # A SIGTERM that reaches a launcher after its ranks ended must not kill it before it reports.
    events: Events = queue.SimpleQueue()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a known start, whatever ran before
        with forwarding_signals(events, linger=True):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process with the default
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert events.empty()
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def test_exits_queued_before_the_supervisor_starts_are_read() -> None:
    """Every rank exited (non-zero) before `run` began: the job failed, it did not succeed."""
    ranks = setup(2)
    ranks.exit(0, 1)
    ranks.exit(1, 1)
    ranks.alive.clear()
    outcome = supervisor(ranks).run()
    assert outcome.state is RunState.FAILED
    assert outcome.root_cause == 0
    assert set(outcome.exits) == {0, 1}
