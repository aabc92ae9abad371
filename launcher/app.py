"""Run a launch plan on this host and turn its outcome into a result (the pipeline's back half).

`execute` owns the order that matters: signal forwarding before the first rank starts, every
rank and everything it left gone before the report is written, the report before the exit.
(The watchdog and the rest of the containment are set up by the command before any thread:
`commands.contained`.)
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launcher import procs as processes
from launcher import report
from launcher.containment import Containment
from launcher.errors import exit_code_for_rank, signal_exit_code, signal_name
from launcher.events import Events, Outcome
from launcher.logs import OutputPump
from launcher.plan import LaunchPlan
from launcher.procs import ProcessSet
from launcher.supervise import Supervisor, forwarding_signals, raising_signals
from launcher.watchdog import Watchdog

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


@dataclass(frozen=True, slots=True)
class Result:
    exit_code: int
    headline: str
    outcome: Outcome
    failure_text: str


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
    on_stop: Callable[[int, str], None] | None = None,
) -> Result:
    """Start the plan's ranks, supervise them to the end, report. Never leaves a rank running."""
    events = events if events is not None else queue.SimpleQueue()
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
            outcome = supervisor.run()
            procs.close(options.grace_s)
    finally:
        procs.close(0.0)  # on an unexpected error: nothing may survive us
        procs.wait_output(OUTPUT_DRAIN_S)
        pump.stop(1.0)
    traces = {
        rank: report.RankTrace(p.spec.host, p.spec.error_file, p.stderr_tail.text())
        for rank, p in procs.ranks.items()
    }
    found = report.failures(outcome, traces)
    head = report.headline(outcome, found)
    text = report.failure_text(head, found)
    result = Result(report.exit_code(outcome), head, outcome, text)
    if options.output_dir is not None:
        finish(options.output_dir, result.exit_code, text)
    return result


def finish(output_dir: Path, exit_code: int, failure_text: str) -> None:
    """Write output/success or output/failure (a failure file the script wrote is kept)."""
    if exit_code == 0:
        report.write_success(output_dir)
        return
    if not report.write_failure(output_dir, failure_text):
        log.info("%s/failure exists (written by the script): kept as is", output_dir)


ROOT_OUTPUT_WAIT_S = 0.2


def _stop_cause(procs: ProcessSet, host: str, rank: int | None, sig: int | None) -> tuple[int, str]:
    """(exit code, root-cause line) the moment this host decides to stop the job."""
    if sig is not None:
        return signal_exit_code(sig), f"the job was stopped by {signal_name(sig)} on {host}"
    assert rank is not None
    proc = procs.ranks[rank]
    for done in proc.output_done:  # the traceback is usually a few ms behind the exit
        done.wait(ROOT_OUTPUT_WAIT_S)
    returncode = proc.returncode if proc.returncode is not None else 1
    tail = proc.stderr_tail.text()
    message, _ = report.rank_error(proc.spec.error_file, tail)
    failure = report.RankFailure(rank, proc.spec.host, returncode, message, "", tail, False)
    return exit_code_for_rank(returncode), failure.headline()
