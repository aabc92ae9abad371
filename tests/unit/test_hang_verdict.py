"""The hang verdict (`launcher.hangs.verdict`): a fake clock, samples built by hand, no sleeps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest

from launcher.hangs.stacks import Frame, RankStack
from launcher.hangs.verdict import (
    NS,
    Hung,
    Policy,
    RankProgress,
    Tracker,
    parse_setting,
    rebase,
    suspects,
)

S = NS  # one second, in the tracker's nanoseconds


class Job:
    """A fake job: ranks whose progress the test moves, sampled on a fake clock."""

    def __init__(self, policy: Policy, ranks: int = 2, start: int = 1000 * S) -> None:
        self.now = start
        self.ranks = {r: RankProgress(r) for r in range(ranks)}
        self.tracker = Tracker(policy)

    def attach(self, *ranks: int) -> None:
        for r in ranks or tuple(self.ranks):
            old = self.ranks[r]
            self.ranks[r] = RankProgress(r, old.count, old.last_ns, self.now, pid=100 + r)

    def tick(self, *ranks: int) -> None:
        for r in ranks or tuple(self.ranks):
            old = self.ranks[r]
            attached = old.attached_ns or self.now
            self.ranks[r] = RankProgress(r, old.count + 1, self.now, attached, pid=old.pid)

    def enter(self, rank: int, name: str = "save") -> None:
        old = self.ranks[rank]
        self.ranks[rank] = RankProgress(
            rank, old.count, old.last_ns, old.attached_ns, 1, self.now, name, old.pid
        )

    def exit(self, rank: int) -> None:
        """The rank's interpreter begins to shut down (its first exit hook ran)."""
        old = self.ranks[rank]
        self.ranks[rank] = replace(old, exiting_ns=self.now)

    def leave(self, rank: int) -> None:
        old = self.ranks[rank]
        self.ranks[rank] = RankProgress(rank, old.count + 1, self.now, old.attached_ns)

    def advance(self, seconds: float, every: float = 0.5) -> Hung | None:
        """Let `seconds` pass, sampling every `every` seconds; the first verdict, if any."""
        end = self.now + int(seconds * S)
        while self.now < end:
            self.now = min(end, self.now + int(every * S))
            self.tracker = self.tracker.observe(tuple(self.ranks.values()), self.now)
            verdict = self.tracker.check(self.now)
            if verdict is not None:
                return verdict
        return None

    def steps(self, n: int, interval: float, ranks: Iterable[int] = ()) -> Hung | None:
        """`n` steps of `interval` seconds, every rank (or `ranks`) progressing after each."""
        for _ in range(n):
            verdict = self.advance(interval)
            if verdict is not None:
                return verdict
            self.tick(*ranks)
        return None


# --- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"), [("auto", None), ("AUTO", None), ("0", 0.0), ("30", 30.0), (" 2.5 ", 2.5)]
)
def test_the_setting_is_auto_off_or_seconds(raw: str, value: float | None) -> None:
    assert parse_setting(raw) == value


@pytest.mark.parametrize("raw", ["", "-1", "nan", "inf", "ten", "30s"])
def test_a_bad_setting_says_what_is_accepted(raw: str) -> None:
    with pytest.raises(ValueError, match="auto"):
        parse_setting(raw)


def test_policy_bounds() -> None:
    assert Policy.from_setting(None).automatic and Policy.from_setting(0).off
    assert Policy(window_s=30).describe() == "30 s"
    assert (
        Policy().describe() == "automatic (at least 300 s)"
        and Policy(window_s=0).describe() == "off"
    )
    for bad in (
        {"window_s": -1.0},
        {"window_s": float("inf")},
        {"floor_s": 0.0},
        {"factor": 0.5},
        {"warmup": 0},
        {"section_limit_s": float("nan")},
    ):
        with pytest.raises(ValueError):
            Policy(**bad)


# --- a fixed window --------------------------------------------------------------------------


def test_a_fixed_window_declares_a_job_without_progress_hung_after_the_window() -> None:
    job = Job(Policy(window_s=60))
    job.attach()
    job.tick()
    assert job.advance(60) is None  # exactly the window: not yet
    verdict = job.advance(1)
    assert verdict is not None
    assert 60 < verdict.quiet_s <= 61 and verdict.window_s == 60 and not verdict.automatic


def test_a_fixed_window_waits_for_a_rank_to_attach_then_counts_from_the_attach() -> None:
    job = Job(Policy(window_s=60))
    assert job.advance(3600) is None  # nobody attached: a script without collectives
    job.attach(0)  # rank 0 reached collectives.init; rank 1 never does
    verdict = job.advance(61)
    assert verdict is not None and 60 < verdict.quiet_s <= 61
    found = suspects(verdict, {})
    assert [(s.rank, s.reasons) for s in found] == [
        (1, ("never attached (did not reach collectives.init)",))
    ]


def test_a_slow_job_that_keeps_progressing_is_never_hung() -> None:
    job = Job(Policy(window_s=60))
    job.attach()
    job.tick()
    assert job.steps(500, interval=59) is None  # 8 hours of 59-second steps


def test_one_progressing_rank_is_enough() -> None:
    job = Job(Policy(window_s=60), ranks=4)
    job.attach()
    assert job.steps(100, interval=30, ranks=[2]) is None


def test_off_never_judges() -> None:
    job = Job(Policy(window_s=0))
    job.attach()
    job.tick()
    assert job.advance(10 * 24 * 3600, every=3600) is None
    assert not job.tracker.armed()


# --- the automatic window -------------------------------------------------------------------


def test_automatic_is_not_armed_before_the_job_has_shown_its_pace() -> None:
    job = Job(Policy())
    job.attach()
    job.tick()  # joining counts as progress, but one event shows no pace
    assert job.advance(24 * 3600, every=60) is None
    assert not job.tracker.armed()


def test_automatic_uses_the_floor_for_a_fast_job() -> None:
    job = Job(Policy())
    job.attach()
    assert job.steps(20, interval=1.0) is None  # a 1-second step
    assert job.tracker.armed() and job.tracker.window_s() == 300
    verdict = job.advance(400)
    assert verdict is not None and verdict.automatic
    assert 300 < verdict.quiet_s <= 300.5 and verdict.window_s == 300


def test_automatic_learns_a_slow_pace_and_never_judges_it() -> None:
    job = Job(Policy())
    job.attach()
    job.tick()
    # Progress every 20 minutes (an epoch-level all_reduce): longer than the floor.
    assert job.steps(30, interval=1200, ranks=[0]) is None
    assert job.tracker.window_s() == pytest.approx(5 * 1200, abs=1)
    verdict = job.advance(7000, every=10)
    assert verdict is not None and verdict.quiet_s > 5 * 1200


def test_automatic_does_not_learn_from_the_start_up_period() -> None:
    job = Job(Policy())
    job.attach()
    job.tick()
    assert job.steps(1, interval=3000) is None  # compilation before the first step
    assert job.steps(10, interval=2) is None
    assert job.tracker.window_s() == 300  # not 5 x 3000


def test_automatic_window_is_never_shorter_than_the_gaps_already_seen() -> None:
    job = Job(Policy())
    job.attach()
    job.tick()
    assert job.steps(6, interval=2) is None
    assert job.steps(1, interval=100) is None  # one slow evaluation
    assert job.steps(50, interval=2) is None
    assert job.tracker.window_s() == pytest.approx(500, abs=1)


# --- sections --------------------------------------------------------------------------------


def test_a_section_pauses_the_timing_and_leaving_it_restarts_it() -> None:
    job = Job(Policy(window_s=60))
    job.attach()
    job.tick()
    job.enter(0, "save")
    assert job.advance(1800) is None  # a 30-minute checkpoint write, others waiting
    job.leave(0)
    assert job.advance(60) is None
    assert job.advance(1) is not None


def test_a_section_does_not_teach_the_automatic_window() -> None:
    job = Job(Policy())
    job.attach()
    job.tick()
    assert job.steps(10, interval=2) is None
    job.enter(0, "save")
    assert job.advance(2000, every=5) is None
    job.leave(0)
    assert job.steps(10, interval=2) is None
    assert job.tracker.window_s() == 300


def test_a_rank_stuck_in_a_section_is_hung_after_the_section_limit() -> None:
    job = Job(Policy(window_s=60, section_limit_s=3600))
    job.attach()
    job.tick()
    job.enter(1, "save")
    verdict = job.advance(4000, every=10)
    assert verdict is not None and verdict.overrun == (1,)
    found = suspects(verdict, {})
    assert [s.rank for s in found] == [1]
    assert found[0].reasons[0].startswith("in section 'save' for 36")
    assert found[0].reasons[0].endswith(" s, over the 3600 s limit")


def test_a_slow_shutdown_is_not_a_hang_once_every_rank_has_done_its_work() -> None:
    job = Job(Policy(window_s=2))
    job.attach()
    job.tick()
    job.exit(0)
    job.exit(1)
    assert job.advance(60) is None  # a teardown of a minute (a process group, CUDA) is no hang


def test_a_rank_that_is_done_neither_pauses_nor_hides_a_stall_of_the_others() -> None:
    job = Job(Policy(window_s=2), ranks=3)
    job.attach()
    job.tick()
    job.enter(0, "save")
    job.exit(0)  # it died inside its section: that section is over
    verdict = job.advance(5)
    assert verdict is not None and 2 <= verdict.quiet_s <= 3


def test_an_exit_that_outlives_the_section_limit_is_a_hang() -> None:
    job = Job(Policy(window_s=60, section_limit_s=600))
    job.attach()
    job.tick()
    job.exit(0)
    job.exit(1)
    verdict = job.advance(700, every=10)
    assert verdict is not None and verdict.overrun == (0, 1)
    found = suspects(verdict, {})
    assert found[0].reasons[0].startswith("shutting down for 61")
    assert found[0].reasons[0].endswith(" s, over the 600 s limit")


# --- suspects --------------------------------------------------------------------------------

C10D = "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"


def stack(rank: int, *frames: tuple[str, str, int]) -> RankStack:
    return RankStack(rank, 100 + rank, "py-spy", "", tuple(Frame(f, p, n) for f, p, n in frames))


def waiting(rank: int, op: str = "all_reduce") -> RankStack:
    return stack(rank, (op, C10D, 3252), ("step", "train.py", 40), ("<module>", "train.py", 90))


def hung(*counts: int) -> Hung:
    ranks = tuple(RankProgress(r, c, 5 * S, 1 * S) for r, c in enumerate(counts))
    return Hung(quiet_s=61, window_s=60, automatic=False, at_ns=66 * S, ranks=ranks)


def test_the_rank_with_least_progress_and_a_stack_outside_collectives_is_first() -> None:
    stalled = stack(1, ("load_batch", "data.py", 12), ("<module>", "train.py", 88))
    found = suspects(hung(5, 4, 5, 5), {0: waiting(0), 1: stalled, 2: waiting(2), 3: waiting(3)})
    assert [s.rank for s in found] == [1]
    assert found[0].reasons == ("least progress: 4, others up to 5", "stack outside any collective")


def test_least_progress_alone_when_no_stack_could_be_taken() -> None:
    found = suspects(hung(7, 7, 6, 7), {})
    assert [(s.rank, s.reasons) for s in found] == [(2, ("least progress: 6, others up to 7",))]


def test_a_stack_outside_collectives_alone_when_progress_is_equal() -> None:
    spinning = stack(0, ("spin", "train.py", 7), ("<module>", "train.py", 9))
    found = suspects(hung(3, 3, 3), {0: spinning, 1: waiting(1), 2: waiting(2)})
    assert [s.rank for s in found] == [0]


def test_the_odd_collective_out_when_every_rank_waits() -> None:
    found = suspects(hung(3, 3, 3), {0: waiting(0), 1: waiting(1, "broadcast"), 2: waiting(2)})
    assert [(s.rank, s.reasons) for s in found] == [
        (1, ("waits in broadcast while 2 rank(s) wait in all_reduce",))
    ]


def test_no_single_suspect_when_nothing_tells_the_ranks_apart() -> None:
    assert suspects(hung(3, 3), {0: waiting(0), 1: waiting(1)}) == ()
    everyone_outside = {r: stack(r, ("spin", "a.py", 1)) for r in range(2)}
    assert suspects(hung(3, 3), everyone_outside) == ()


def test_a_job_of_one_rank_blames_it() -> None:
    assert [s.rank for s in suspects(hung(9), {})] == [0]


def test_rebase_keeps_every_age() -> None:
    sample = RankProgress(3, 7, last_ns=90 * S, attached_ns=10 * S)
    moved = rebase(sample, their_now_ns=100 * S, our_now_ns=5000 * S)
    assert moved.last_ns == 4990 * S and moved.attached_ns == 4910 * S
    assert moved.section_since_ns == 0 and moved.count == 7
