"""The attempt loop of whole-job restarts: the layer above the supervisor (DESIGN.md decision 16).

Each attempt, on every host: meet (a multi-host job meets afresh, on the same control port, so
every attempt has new connections, a new run id and a new master port, and nothing said in
attempt k is accepted in attempt k+1; one host takes a fresh free port), build the plan with
the attempt's rank environment (`TORCHELASTIC_RESTART_COUNT=k`, `TORCHELASTIC_MAX_RESTARTS=N`,
`LAUNCHER_CHECKPOINT_DIR`), run it through `app.execute` (every rank and everything it left is
gone when that returns), and agree on its result as a job without restarts does.

After a failed attempt only the leader decides (`policy.decide`, on what it saw: the root
cause, a stop signal anywhere, its own ranks' progress and the checkpoint folder's latest
step). It tells the followers with RESTART {attempt} and meets again; a follower waits for that
word after its own ranks are gone (`Follower.next_attempt`) and takes the attempt number from
the next PLAN, so the counter is the leader's alone. No host says HELLO for attempt k+1 before
its attempt-k ranks are gone, and the leader sends the PLAN only when every host said HELLO: no
process of attempt k runs when any rank of attempt k+1 starts. On a GPU host each host first
waits, bounded, for the GPUs' memory to be released (`gpumem`).

Every attempt's rank logs and error files are kept: attempt 0's where a job without restarts
puts them, attempt k's in an `attempt-k` folder beside them. When the last attempt fails,
output/failure starts with its root cause and ends with every attempt's (`policy.history_text`);
the exit code is the last root cause's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import contract, plan
from launcher.app import RunOptions, execute, finish
from launcher.containment import Containment
from launcher.errors import LauncherError, StopRequested
from launcher.events import Events, RemoteAbort
from launcher.plan import JobSpec, World
from launcher.restarts import gpumem
from launcher.restarts.policy import AttemptEnd, decide, history_text
from launcher.supervise import raising_signals

if TYPE_CHECKING:
    from launcher.control.follower import Member

log = logging.getLogger("launcher")

ATTEMPT_DIR = "attempt-{}"
LINGER_S = 2.0  # the leader's RESTART is read before its connections close (see Leader.close)


@dataclass(frozen=True, slots=True)
class Met:
    """One attempt's meeting: the world, this host's member (None on one host), and the
    attempt the leader's PLAN named (on one host, or on the leader: the one asked for)."""

    world: World
    member: Member | None
    attempt: int

    @classmethod
    def of(cls, world: World, member: Member | None, asked: int) -> Met:
        """The meeting just held for attempt `asked`: a follower takes the attempt from the
        leader's PLAN (the leader's count is the job's), the leader and one host keep `asked`."""
        announced = getattr(member, "plan", None)
        return cls(world, member, announced.attempt if announced is not None else asked)


# attempt -> the meeting of that attempt; the events queue is the attempt's supervisor's.
Meet = Callable[[int, Events], Met]


@dataclass(frozen=True, slots=True)
class Job:
    """What every attempt of one host shares."""

    spec: JobSpec  # attempt 0's error folder set
    options: RunOptions  # attempt 0's log folder; output_dir None (written here, at the end)
    max_restarts: int
    checkpoint_dir: Path
    host: str
    output_dir: Path | None
    environ: Mapping[str, str]
    verdict_timeout_s: float  # a follower's longest wait for the leader's word after an attempt
    probe: gpumem.MemoryProbe = field(default_factory=gpumem.NvmlMemory)


@dataclass(frozen=True, slots=True)
class _Ended:
    """One attempt's end on this host."""

    code: int
    headline: str
    text: str  # output/failure's text for this attempt ("" on success)
    stopped: bool  # a stop signal from outside, here or on another host
    progress: int | None
    duration_s: float


def run(job: Job, meet: Meet, scope: Containment) -> int:
    """Run attempts until one succeeds or the leader stops restarting; the job's exit code.

    Writes output/success or output/failure (when `job.output_dir` is set). Raises what
    `meet` raises (`PeersUnreachable`, exit 3, when a host does not come back for the next
    attempt; `MeetStopped` for a stop signal while meeting) and `SpawnError` for a program
    that cannot start.
    """
    baseline = gpumem.Baseline.take(job.probe)
    ends: list[AttemptEnd] = []
    attempt = 0
    while True:
        events: Events = queue.SimpleQueue()
        # After the first attempt the stop signals are the supervisor's leftovers (ignored):
        # a stop while waiting or meeting again must end the job at once.
        try:
            with raising_signals(job.host) if attempt else contextlib.nullcontext():
                if attempt:
                    baseline.wait_released(job.probe)
                met = meet(attempt, events)
        except LauncherError as e:  # a host did not come back, or a stop while meeting again
            if ends and job.output_dir is not None:
                text = f"{e}\n\n{history_text(tuple(ends))}"
                finish(job.output_dir, e.exit_code, text)  # `cli` keeps it (never overwrites)
            raise
        attempt = met.attempt
        before = contract.latest_checkpoint_step(job.checkpoint_dir)
        try:
            ended = _attempt(job, met, attempt, scope, events)
        except StopRequested as e:  # after the meeting, before the ranks ran
            if met.member is not None:
                met.member.stopped(e.signum)  # the other hosts learn it now
            raise
        if ended.code == 0:
            _close(met.member)
            tries = f" after {attempt + 1} attempts" if attempt else ""
            log.info("job succeeded%s in %.2f s", tries, ended.duration_s)
            if job.output_dir is not None:
                finish(job.output_dir, 0, "")
            return 0
        after = contract.latest_checkpoint_step(job.checkpoint_dir)
        progressed = bool(ended.progress) or after != before
        end = AttemptEnd(attempt, ended.code, ended.headline, ended.stopped, progressed)
        ends.append(end)
        log.error("attempt %d failed (exit %d): %s", attempt, ended.code, ended.headline)
        try:
            # A stop while waiting for the leader's word ends this host now (and tells the
            # leader), rather than after the wait: the supervisor's handlers are gone by now.
            with raising_signals(job.host):
                following = _next_from_leader(job, met, ended)
        except StopRequested as e:
            if met.member is not None:
                met.member.stopped(e.signum)
            if job.output_dir is not None:
                finish(job.output_dir, e.exit_code, f"{e}\n\n{history_text(tuple(ends))}")
            raise
        if following is not None:
            attempt = following
            continue
        if met.member is None or _leads(met.member):
            verdict = decide(tuple(ends), job.max_restarts)
            if verdict.retry:
                log.warning("%s", verdict.why)
                _restart(met.member, attempt + 1)
                attempt += 1
                continue
            log.error("%s", verdict.why)
            why = verdict.why
        else:
            why = "the leader did not restart the job"
        _close(met.member)
        text = f"{ended.text.rstrip()}\n\n{history_text(tuple(ends))}{why}\n"
        if job.output_dir is not None:
            finish(job.output_dir, ended.code, text)
        log.error("job failed (exit %d): %s", ended.code, ended.headline)
        return ended.code


def _attempt(job: Job, met: Met, attempt: int, scope: Containment, events: Events) -> _Ended:
    """Run this host's ranks of `attempt`; with other hosts, agree on the attempt's result."""
    spec = attempt_spec(job.spec, attempt, job.max_restarts, job.checkpoint_dir)
    launch = plan.build(spec, met.world, job.environ, os.cpu_count() or 1)
    options = job.options
    if attempt and options.log_dir is not None:
        options = replace(options, log_dir=options.log_dir / ATTEMPT_DIR.format(attempt))
    member = met.member
    if attempt:
        log.info("attempt %d (restart %d of %d)", attempt, attempt, job.max_restarts)
    result = execute(
        launch,
        options,
        scope,
        events=events,
        on_stop=member.failed if member else None,
        peers=member,
    )
    outcome = result.outcome
    stopped = outcome.stop_signal is not None or bool(outcome.remote and outcome.remote.signal)
    if result.exit_code or member is None:
        return _Ended(
            result.exit_code,
            result.headline,
            result.failure_text,
            stopped,
            result.progress,
            outcome.duration_s,
        )
    code, reason = member.barrier()  # this host's ranks succeeded: the job's result
    # A host stopped while this one waited: its FAILED left a RemoteAbort behind, unread.
    stopped = any(isinstance(e, RemoteAbort) and e.signal for e in _drain(events))
    return _Ended(code, reason, f"{reason}\n", stopped, result.progress, outcome.duration_s)


def attempt_spec(spec: JobSpec, attempt: int, max_restarts: int, checkpoints: Path) -> JobSpec:
    """The job as attempt `attempt` runs it: the restart variables and the checkpoint folder
    for every rank (whatever the backend), and, after the first, its own error folder."""
    error_dir = spec.error_dir
    if attempt and error_dir:
        error_dir = f"{error_dir}/{ATTEMPT_DIR.format(attempt)}"
        Path(error_dir).mkdir(mode=0o700, exist_ok=True)
    env = {
        **spec.env,
        contract.RESTART_COUNT: str(attempt),
        contract.MAX_RESTARTS: str(max_restarts),
        contract.CHECKPOINT_DIR: str(checkpoints),
    }
    return replace(
        spec, env=env, error_dir=error_dir, max_restarts=max_restarts, restart_count=attempt
    )


def _next_from_leader(job: Job, met: Met, ended: _Ended) -> int | None:
    """On a follower: the attempt the leader restarts the job as, or None (the leader does
    not restart it, or this host was stopped: it leaves). None on the leader and on one host."""
    member = met.member
    if member is None or _leads(member):
        return None
    from launcher.control.follower import Follower  # noqa: PLC0415 - multi-host jobs only

    assert isinstance(member, Follower)
    following = None if ended.stopped else member.next_attempt(job.verdict_timeout_s)
    member.close()
    if following is not None:
        log.warning("the leader restarts the job: attempt %d", following)
    return following


def _leads(member: Member) -> bool:
    from launcher.control.leader import Leader  # noqa: PLC0415 - multi-host jobs only

    return isinstance(member, Leader)


def _restart(member: Member | None, attempt: int) -> None:
    """The leader's word to every follower, read before this meeting ends."""
    if member is None:
        return
    from launcher.control.leader import Leader  # noqa: PLC0415 - multi-host jobs only

    assert isinstance(member, Leader)
    member.restart(attempt)
    member.close(linger=LINGER_S)


def _close(member: Member | None) -> None:
    if member is not None:
        member.close()


def _drain(events: Events) -> list[object]:
    drained: list[object] = []
    with contextlib.suppress(queue.Empty):
        while True:
            drained.append(events.get_nowait())
    return drained
