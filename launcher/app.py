"""Run a launch plan on this host and turn its outcome into a result (the pipeline's back half).

`execute` owns the order that matters: signal forwarding before the first rank starts, every
rank and everything it left gone before the report is written, the report before the exit.
(The watchdog and the rest of the containment are set up by the command before any thread:
`commands.contained`.)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from launcher import procs as processes
from launcher import report
from launcher.containment import Containment
from launcher.errors import exit_code_for_rank, signal_exit_code, signal_name
from launcher.events import Events, HangDeclared, HangReport, Outcome
from launcher.logs import OutputPump
from launcher.plan import LaunchPlan
from launcher.procs import ProcessSet
from launcher.supervise import Supervisor, forwarding_signals, raising_signals
from launcher.watchdog import Watchdog

if TYPE_CHECKING:  # launcher.hangs is imported where a job uses it (`_hang_watch`)
    from launcher.hangs.job import JobWatch
    from launcher.hangs.verdict import Hung

log = logging.getLogger("launcher")

OUTPUT_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    grace_s: float
    log_dir: Path | None = None
    show_ranks: frozenset[int] | None = None
    prefix: bool = True  # False for the single-process `train`: output passes unchanged
    output_dir: Path | None = None  # where output/success|failure go (None: nowhere)
    fail_fast: bool = True
    # `--hang-timeout`: seconds, None for the automatic window, 0 for off (the default here:
    # helpers such as `launcher local`'s zygote are never judged; the commands pass it on).
    hang_timeout_s: float | None = 0.0
    keep_dir: Path | None = None  # where a hang's stacks go without a log dir (output folder)


class HangPeers(Protocol):
    """The other hosts of a multi-host job, for hang detection (`control.follower.Member`):
    `hang` and `held` block, bounded, until every host took its ranks' stacks (the hold);
    `local_stacks` is what this host answers when the leader asks for them (`launcher
    stacks`), and `gather_stacks` asks every other host (the leader's; {} elsewhere)."""

    local_stacks: Callable[[], str] | None

    def hang(self, reason: str) -> None:
        """This host declared the hang (`reason`: the culprit line); its stacks are taken."""

    def held(self) -> None:
        """Another host's verdict reached this host, whose stacks are taken."""

    def gather_stacks(self, timeout: float) -> dict[str, str]:
        """Every other host's ranks' stacks now, as text by host."""


@dataclass(frozen=True, slots=True)
class Result:
    exit_code: int
    headline: str
    outcome: Outcome
    failure_text: str
    # Progress events this host's ranks reported (collectives, progress()); None when nothing
    # counted them (hang detection off). Whole-job restarts read it (launcher/restarts).
    progress: int | None = None


class StopHook(Protocol):
    """Called once when this host stops the job: its exit code, the root-cause line and, for
    a stop signal, the signal's name (`Member.failed` in a multi-host job)."""

    def __call__(self, exit_code: int, reason: str, signal: str = "") -> None: ...


@contextmanager
def guarded(
    *, dry_run: bool, environ: Mapping[str, str], host: str = "", grace_s: float = 5.0
) -> Iterator[Containment]:
    """Everything a command starts, it starts inside this block: nothing survives it.

    In order: the watchdog is forked (before any thread exists), the job's containment set up
    (cgroup, subreaper, marker: see `containment`), the orphan reaper started, and the first
    stop signal turned into `StopRequested` until the ranks run. On the way out, by any path,
    every orphan is ended (SIGTERM, SIGKILL after `grace_s`), the cgroup removed and the
    watchdog disarmed. A dry run starts nothing and gets an inert containment.
    """
    if dry_run:
        yield Containment()
        return
    watchdog = Watchdog()
    watchdog.start()
    assert watchdog.pid is not None
    processes.register(watchdog.pid)
    scope = Containment.enter(watchdog, dict(environ))
    processes.reap_orphans()
    with raising_signals(host), processes.contained(scope, grace_s):
        yield scope


def execute(
    plan: LaunchPlan,
    options: RunOptions,
    scope: Containment,
    *,
    events: Events | None = None,
    on_stop: StopHook | None = None,
    peers: HangPeers | None = None,
) -> Result:
    """Start the plan's ranks, supervise them to the end, report. Never leaves a rank running.

    With hang detection on (`options.hang_timeout_s`), every rank gets its progress files and
    the flight recorder's variables, and a hang ends the job with exit 124 after every rank's
    stack was taken (`launcher.hangs.job`); in a multi-host job `peers` carries the culprit
    line to the other hosts and holds every host's ranks until all stacks are taken, and the
    leader answers `launcher stacks` for every host (`launcher.hangs.ondemand`)."""
    events = events if events is not None else queue.SimpleQueue()
    watch = _hang_watch(plan, options)
    progress: int | None = None
    if watch is not None:
        ranks = tuple(
            replace(spec, env={**spec.env, **watch.rank_env(spec.rank, plan.full_env(spec))})
            for spec in plan.ranks
        )
        plan = replace(plan, ranks=ranks)
    pump = OutputPump()
    pump.start()
    procs = ProcessSet(
        plan.ranks,
        plan.base_env,
        events,
        pump,
        scope=scope,
        log_dir=options.log_dir,
        show_ranks=options.show_ranks,
        prefix=options.prefix,
    )
    try:
        with forwarding_signals(events, linger=True):
            procs.start()
            log.info(
                "started %d %s on %s: %s",
                len(plan.ranks),
                "rank(s)" if options.prefix or plan.job.backend.value != "none" else "process(es)",
                plan.world.host.name,
                " ".join(plan.job.command[: len(plan.job.command) - plan.job.user_args]),
            )
            supervisor = Supervisor(procs, events, options.grace_s, fail_fast=options.fail_fast)
            if on_stop is not None:
                host = plan.world.host.name
                supervisor.on_stop = lambda rank, sig: on_stop(*_stop_cause(procs, host, rank, sig))
            if watch is not None:
                _watch_hangs(watch, supervisor, procs, events, peers)
            outcome = supervisor.run()
            procs.close(options.grace_s)
    finally:
        if watch is not None:
            progress = watch.progress_count()
            watch.close()
        if peers is not None:
            peers.local_stacks = None
        procs.close(0.0)  # on an unexpected error: nothing may survive us
        procs.wait_output(OUTPUT_DRAIN_S)
        pump.stop(1.0)
    traces = {
        rank: report.RankTrace(p.spec.host, p.spec.error_file, p.stderr_tail.text())
        for rank, p in procs.ranks.items()
    }
    found = report.failures(outcome, traces)
    head = report.headline(outcome, found)
    details = outcome.hang.details if outcome.hang is not None else ""
    text = report.failure_text(head, found, details=details)
    result = Result(report.exit_code(outcome), head, outcome, text, progress)
    if options.output_dir is not None:
        finish(options.output_dir, result.exit_code, text)
    return result


def _hang_watch(plan: LaunchPlan, options: RunOptions) -> JobWatch | None:
    """The hang detection of this run, its files created; None when it is off, or when the
    job has no private folder (a helper's run) or its files cannot be created (logged: the
    job runs on, unwatched, rather than not at all)."""
    if options.hang_timeout_s == 0 or not plan.job.error_dir or not plan.ranks:
        return None
    from launcher.hangs.job import JobWatch  # noqa: PLC0415 - only jobs that are watched
    from launcher.hangs.verdict import Policy  # noqa: PLC0415

    policy = Policy.from_setting(options.hang_timeout_s)
    try:
        watch = JobWatch.prepare(
            Path(plan.job.error_dir),
            {spec.rank: spec.host for spec in plan.ranks},
            policy,
            log_dir=options.log_dir,
            keep_dir=options.keep_dir,
            multi=len(plan.world.hosts) > 1,
            run_id=plan.world.run_id,
            leader=len(plan.world.hosts) > 1 and plan.world.node_rank == 0,
        )
    except OSError as e:
        log.warning("hang detection is off: cannot create its files: %s", e)
        return None
    log.info("hang timeout: %s", policy.describe())
    return watch


def _watch_hangs(
    watch: JobWatch,
    supervisor: Supervisor,
    procs: ProcessSet,
    events: Events,
    peers: HangPeers | None,
) -> None:
    """Connect the hang detection to the supervisor: the monitor's verdict becomes a
    `HangDeclared` event; the supervisor has the stacks taken (`judge`, or `remote` for a
    hang declared elsewhere) before it stops any rank; a hang declared here reaches the other
    hosts with exit 124 and the culprit line, and no host stops a rank before every host has
    taken its stacks (`peers`). In a multi-host job every host answers the leader's request
    for its stacks, and the leader answers `launcher stacks` for every host."""

    def pids() -> dict[int, int]:
        return {rank: proc.popen.pid for rank, proc in procs.ranks.items()}

    def judge(hung: Hung, final: bool) -> HangReport | None:
        found = watch.judge(hung, pids(), final=final)
        if found is not None:
            log.error("%s", found.culprit)
            if peers is not None:
                peers.hang(found.culprit)
        return found

    def remote() -> str:
        details = watch.remote(pids())
        if peers is not None:
            peers.held()
        return details

    supervisor.on_hang = judge
    supervisor.on_remote_hang = remote
    if peers is not None:
        _answer_stacks(watch, peers)
    watch.start(lambda hung: events.put(HangDeclared(hung)))


def _answer_stacks(watch: JobWatch, peers: HangPeers) -> None:
    """`launcher stacks` across hosts: this host answers the leader with its ranks' stacks;
    the leader also serves every host's on its local socket (closed with the watch)."""
    from launcher.hangs import job as hangjob  # noqa: PLC0415 - only jobs that are watched
    from launcher.hangs import ondemand  # noqa: PLC0415

    folder = watch.folder
    peers.local_stacks = lambda: hangjob.stacks_text(folder)
    if not watch.leader:
        return

    def everything() -> str:
        others: dict[str, str] = {}
        asking = threading.Thread(
            target=lambda: others.update(peers.gather_stacks(ondemand.GATHER_TIMEOUT_S)),
            daemon=True,
            name="stacks-gather",
        )
        asking.start()  # every host takes its stacks at the same time
        mine = hangjob.stacks_text(folder)
        asking.join()
        return "\n".join([mine, *others.values()]) + "\n"

    watch.serve(everything)


def finish(output_dir: Path, exit_code: int, failure_text: str) -> None:
    """Write output/success or output/failure (a failure file the script wrote is kept)."""
    if exit_code == 0:
        report.write_success(output_dir)
        return
    if not report.write_failure(output_dir, failure_text):
        log.info("%s/failure exists (written by the script): kept as is", output_dir)


ROOT_OUTPUT_WAIT_S = 0.2


def _stop_cause(
    procs: ProcessSet, host: str, rank: int | None, sig: int | None
) -> tuple[int, str, str]:
    """(exit code, root-cause line, stop signal's name or "") the moment this host decides to
    stop the job."""
    if sig is not None:
        name = signal_name(sig)
        return signal_exit_code(sig), f"the job was stopped by {name} on {host}", name
    assert rank is not None
    proc = procs.ranks[rank]
    for done in proc.output_done:  # the traceback is usually a few ms behind the exit
        done.wait(ROOT_OUTPUT_WAIT_S)
    returncode = proc.returncode if proc.returncode is not None else 1
    tail = proc.stderr_tail.text()
    message, _ = report.rank_error(proc.spec.error_file, tail)
    failure = report.RankFailure(rank, proc.spec.host, returncode, message, "", tail, False)
    return exit_code_for_rank(returncode), failure.headline(), ""
