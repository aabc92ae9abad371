"""The hang verdict: pure functions of progress samples and a clock (no I/O, no sleeping).

A job is **hung** when no rank has made progress for longer than the window: the newest sign
of life of any rank (a progress event, a rank attaching its progress file, a rank seen inside
a section) is older than the window. A slow job that keeps making progress is therefore
never hung, however slow; one rank progressing is enough.

The window (`Policy`, from `--hang-timeout`):

* **fixed** (`window_s > 0`): armed as soon as one rank has attached its progress file (it
  called `collectives.init`, or the stdlib writer); so a rank that never reaches its first
  collective is found too.
* **automatic** (`window_s is None`, the default): learned from the job's own pace, so armed
  only once the job has reported progress `warmup` times over (5 quiet periods: a quiet
  period is the time between two samples that saw new progress). A job that never reports
  progress (it uses neither `collectives` nor `progress()`), or only rarely, is not judged
  before its pace is known. The window is then `max(floor_s, factor x the longest quiet
  period seen)`, the first period excepted (it holds start-up: data loading, compilation).
  With the defaults, max(300 s, 5 x the longest gap): the factor 5 is
  nvidia-resiliency-ext's safety factor, and 300 s stays below NCCL's 10-minute collective
  timeout, so the launcher names the culprit before torch's watchdog ends the waiting ranks
  with an error that names none. A job whose pace is slower (epoch-level collectives) gets
  a longer window; it never gets a shorter one than the gaps it has already shown.
* **off** (`window_s == 0`).

Sections (`collectives.section`, `collectives.save`) pause the timing for the whole job while
any rank is inside one (the other ranks usually wait for it in a collective); leaving one is
progress. A section is still bounded: a rank inside one for longer than `section_limit_s`
(default one hour) makes the job hung, with that rank as the suspect.

A rank that has begun to shut down (`contract.P_EXITING_NS`, set from the interpreter's first
exit hook) has done its work: its teardown is not timed as a stall, and a job whose every
attached rank is exiting is not judged, except that an exit which lasts longer than
`section_limit_s` is a hang too (the `Monitor` drops the samples of processes that are gone,
so a rank that exited long ago is never judged).

Times are nanoseconds of one monotonic clock (CLOCK_MONOTONIC, which every process of a host
shares). A sample from another host must be rebased onto this host's clock first (`rebase`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stacks are taken only after a verdict: a launch does not import them
    from launcher.hangs.stacks import RankStack

NS = 1_000_000_000
DEFAULT_WINDOW_S = 300.0
AUTO_FACTOR = 5.0
WARMUP_QUIET_PERIODS = 5
SECTION_LIMIT_S = 3600.0
AUTO = "auto"


def parse_setting(raw: str) -> float | None:
    """The text of `--hang-timeout` (`LAUNCHER_HANG_TIMEOUT`, `launcher_hang_timeout`):
    "auto" (any case) gives None (the automatic window), a number of seconds >= 0 gives that
    number (0: off). Raises `ValueError` whose message completes "<source> <key>: ...".
    """
    text = raw.strip()
    if text.lower() == AUTO:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{raw!r} is neither 'auto' nor a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{raw!r} must be 'auto', 0 (off) or a positive number of seconds")
    return value


@dataclass(frozen=True, slots=True)
class Policy:
    """When a job counts as hung. Raises `ValueError` for values outside their bounds."""

    window_s: float | None = None  # None: automatic; 0: off; > 0: that many seconds
    floor_s: float = DEFAULT_WINDOW_S  # the automatic window's minimum
    factor: float = AUTO_FACTOR  # automatic: window = factor x the longest quiet period
    warmup: int = WARMUP_QUIET_PERIODS  # automatic: quiet periods seen before it is armed
    section_limit_s: float = SECTION_LIMIT_S  # the longest a rank may stay in one section

    def __post_init__(self) -> None:
        if self.window_s is not None and not (math.isfinite(self.window_s) and self.window_s >= 0):
            raise ValueError(f"hang window {self.window_s!r} must be None, 0 or > 0 seconds")
        if not (math.isfinite(self.floor_s) and self.floor_s > 0):
            raise ValueError(f"automatic window floor {self.floor_s!r} must be > 0 seconds")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"automatic window factor {self.factor!r} must be >= 1")
        if self.warmup < 1:
            raise ValueError(f"warm-up {self.warmup!r} must be >= 1 quiet period")
        if not (math.isfinite(self.section_limit_s) and self.section_limit_s > 0):
            raise ValueError(f"section limit {self.section_limit_s!r} must be > 0 seconds")

    @classmethod
    def from_setting(cls, value: float | None) -> Policy:
        """The policy for a `parse_setting` result: None automatic, 0 off, else fixed."""
        return cls(window_s=value)

    @property
    def off(self) -> bool:
        return self.window_s == 0

    @property
    def automatic(self) -> bool:
        return self.window_s is None

    def describe(self) -> str:
        """For `launcher plan` and logs: "off", "automatic (at least 300 s)" or "30 s"."""
        if self.window_s is None:
            return f"automatic (at least {self.floor_s:g} s)"
        return "off" if self.window_s == 0 else f"{self.window_s:g} s"


@dataclass(frozen=True, slots=True)
class RankProgress:
    """One sample of one rank's progress file (`launcher.contract`'s layout, decoded)."""

    rank: int
    count: int = 0  # progress events so far
    last_ns: int = 0  # when the last one happened (0: never)
    attached_ns: int = 0  # when the rank attached its file (0: not yet)
    section_depth: int = 0  # > 0: inside a section
    section_since_ns: int = 0
    section: str = ""  # the open section's name
    pid: int = 0  # the process that attached: the one whose stack to take
    stack_signal: int = 0  # the signal that makes it dump its stacks (0: none registered)
    exiting_ns: int = 0  # when it began to shut down, its work done (0: still working)

    @property
    def attached(self) -> bool:
        return self.attached_ns != 0

    @property
    def in_section(self) -> bool:
        """Inside a section that pauses the job's timing (a rank that is exiting pauses
        nothing: a section it never left is over)."""
        return self.section_depth > 0 and not self.exiting_ns

    @property
    def exiting(self) -> bool:
        return self.exiting_ns != 0

    @property
    def alive_ns(self) -> int:
        """The rank's newest sign of life: its last progress, its attach or its exit."""
        return max(self.last_ns, self.attached_ns, self.exiting_ns)


def rebase(sample: RankProgress, their_now_ns: int, our_now_ns: int) -> RankProgress:
    """A sample taken on another host (at `their_now_ns` of its clock) on this host's clock
    (`our_now_ns` when it arrived): every time keeps its age. Zero stays zero (never)."""
    shift = our_now_ns - their_now_ns

    def move(t: int) -> int:
        return t + shift if t else 0

    return replace(
        sample,
        last_ns=move(sample.last_ns),
        attached_ns=move(sample.attached_ns),
        section_since_ns=move(sample.section_since_ns),
    )


@dataclass(frozen=True, slots=True)
class Hung:
    """The verdict: no progress for `quiet_s` seconds, longer than the window."""

    quiet_s: float  # seconds since the job's last sign of life
    window_s: float  # the window in force
    automatic: bool
    at_ns: int  # when the verdict was reached
    ranks: tuple[RankProgress, ...]  # the last sample of every rank
    overrun: tuple[int, ...] = ()  # ranks that stayed in a section past the section limit
    section_limit_s: float = SECTION_LIMIT_S


@dataclass(frozen=True, slots=True)
class Tracker:
    """What the verdict needs to remember between samples. Immutable: `observe` returns the
    next state, `check` decides; both are pure functions of their arguments."""

    policy: Policy
    ranks: tuple[RankProgress, ...] = ()
    progress_ns: int = 0  # the job's last progress event (0: none yet)
    alive_ns: int = 0  # the job's last sign of life: progress, an attach, a section seen
    section_seen_ns: int = 0  # the last sample that found a rank inside a section
    quiet_periods: int = 0  # quiet periods that ended in new progress (sections excepted)
    longest_quiet_ns: int = 0  # the longest of them, the first (start-up) excepted

    def observe(self, ranks: Sequence[RankProgress], now_ns: int) -> Tracker:
        """The state after sampling every rank at `now_ns`."""
        progress_ns = max((r.last_ns for r in ranks if r.count > 0), default=self.progress_ns)
        progress_ns = max(progress_ns, self.progress_ns)
        in_section = any(r.in_section for r in ranks)
        section_seen = now_ns if in_section else self.section_seen_ns
        periods, longest = self.quiet_periods, self.longest_quiet_ns
        if progress_ns > self.progress_ns and self.progress_ns > 0:
            # A quiet period ended. Measured between the newest progress of two samples, so
            # at the sampling resolution, never shorter than it was. A period with a section
            # in it says nothing about the job's pace (the section paused the timing).
            paused = in_section or self.section_seen_ns >= self.progress_ns
            if not paused:
                periods += 1
                if periods > 1:
                    longest = max(longest, progress_ns - self.progress_ns)
        alive = max(
            self.alive_ns,
            progress_ns,
            section_seen,
            max((r.attached_ns for r in ranks), default=0),
            max((r.exiting_ns for r in ranks), default=0),
        )
        return replace(
            self,
            ranks=tuple(ranks),
            progress_ns=progress_ns,
            alive_ns=alive,
            section_seen_ns=section_seen,
            quiet_periods=periods,
            longest_quiet_ns=longest,
        )

    def window_s(self) -> float:
        """The window in force now (0 when off)."""
        policy = self.policy
        if policy.window_s is not None:
            return policy.window_s
        return max(policy.floor_s, policy.factor * self.longest_quiet_ns / NS)

    def armed(self) -> bool:
        """Whether the job can be judged yet (see the module docstring)."""
        if self.policy.off:
            return False
        if self.policy.automatic:
            return self.quiet_periods >= self.policy.warmup
        return self.alive_ns > 0

    def check(self, now_ns: int) -> Hung | None:
        """The verdict at `now_ns` given the last sample, or None while the job is not hung."""
        if not self.armed():
            return None
        limit_ns = self.policy.section_limit_s * NS
        overrun = tuple(
            r.rank
            for r in self.ranks
            if (r.in_section and r.section_since_ns and now_ns - r.section_since_ns > limit_ns)
            or (r.exiting and now_ns - r.exiting_ns > limit_ns)
        )
        window = self.window_s()
        if overrun:
            return self._hung(now_ns, window, overrun)
        if any(r.in_section for r in self.ranks):
            return None
        attached = [r for r in self.ranks if r.attached]
        if not self.ranks or (attached and all(r.exiting for r in attached)):
            return None  # the work is done; only each exit's own bound (the limit) applies
        if now_ns - self.alive_ns > window * NS:
            return self._hung(now_ns, window, ())
        return None

    def _hung(self, now_ns: int, window: float, overrun: tuple[int, ...]) -> Hung:
        return Hung(
            quiet_s=(now_ns - self.alive_ns) / NS,
            window_s=window,
            automatic=self.policy.automatic,
            at_ns=now_ns,
            ranks=self.ranks,
            overrun=overrun,
            section_limit_s=self.policy.section_limit_s,
        )


@dataclass(frozen=True, slots=True)
class Suspect:
    """A rank to blame, with every reason it is one."""

    rank: int
    reasons: tuple[str, ...]


def suspects(hung: Hung, stacks: Mapping[int, RankStack]) -> tuple[Suspect, ...]:
    """The ranks to blame for `hung`, most likely first; empty when nothing singles one out.

    * a rank that stayed in a section past the limit (then only those);
    * the ranks with the least progress, when not every rank has the same;
    * the ranks that never attached their progress file, when others did;
    * the ranks whose stack is outside any collective, when not every rank's is;
    * when every stack waits in a collective: the ranks in a different one than the most.

    Ranks with more reasons come first, then less progress, then lower rank. A job of one
    rank has that rank as its suspect. Ranks without a stack are judged on progress alone.
    """
    counts = {r.rank: r.count for r in hung.ranks}
    reasons: dict[int, list[str]] = {}
    if hung.overrun:
        by_rank = {r.rank: r for r in hung.ranks}
        for rank in hung.overrun:
            sample = by_rank[rank]
            if sample.exiting:
                held = (hung.at_ns - sample.exiting_ns) / NS
                reasons[rank] = [
                    f"shutting down for {held:.0f} s, over the {hung.section_limit_s:g} s limit"
                ]
                continue
            held = (hung.at_ns - sample.section_since_ns) / NS
            reasons[rank] = [
                f"in section {sample.section or '?'!r} for {held:.0f} s, "
                f"over the {hung.section_limit_s:g} s limit"
            ]
        return _ordered(reasons, counts)
    if len(set(counts.values())) > 1:
        least, most = min(counts.values()), max(counts.values())
        for rank, count in counts.items():
            if count == least:
                reasons.setdefault(rank, []).append(f"least progress: {least}, others up to {most}")
    attached = {r.rank for r in hung.ranks if r.attached}
    if attached and len(attached) < len(counts):
        for rank in sorted(set(counts) - attached):
            reasons.setdefault(rank, []).append("never attached (did not reach collectives.init)")
    known = {rank: s for rank, s in stacks.items() if s.ok and rank in counts}
    outside = [rank for rank, s in known.items() if not s.in_collective]
    if outside and len(outside) < len(counts):
        for rank in outside:
            reasons.setdefault(rank, []).append("stack outside any collective")
    elif known and not outside:
        ops = Counter(s.op or "?" for s in known.values())
        if len(ops) > 1:
            common, n = ops.most_common(1)[0]
            for rank, s in known.items():
                if (s.op or "?") != common:
                    reasons.setdefault(rank, []).append(
                        f"waits in {s.op or '?'} while {n} rank(s) wait in {common}"
                    )
    if not reasons and len(counts) == 1:
        reasons[next(iter(counts))] = ["the only rank"]
    return _ordered(reasons, counts)


def _ordered(reasons: Mapping[int, list[str]], counts: Mapping[int, int]) -> tuple[Suspect, ...]:
    order = sorted(reasons, key=lambda r: (-len(reasons[r]), counts.get(r, 0), r))
    return tuple(Suspect(rank, tuple(reasons[rank])) for rank in order)
