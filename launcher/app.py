"""Run a launch plan on this host and turn its outcome into a result (the pipeline's back half).

`execute` owns the order that matters: watchdog before any thread, signal forwarding before the
first rank starts, every rank gone before the report is written, the report before the exit.
"""

from __future__ import annotations

import logging
import queue
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher import report
from launcher.logs import OutputPump
from launcher.plan import LaunchPlan
from launcher.procs import ProcessSet, Watchdog
from launcher.supervise import Outcome, Supervisor, forwarding_signals

log = logging.getLogger("launcher")

OUTPUT_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    grace_s: float
    log_dir: Path | None = None
    show_ranks: frozenset[int] | None = None
    prefix: bool = True  # False for the single-process `train`: output passes unchanged
    output_dir: Path | None = None  # where output/success|failure go (None: nowhere)
    error_dir: Path | None = None  # removed after the run


@dataclass(frozen=True, slots=True)
class Result:
    exit_code: int
    headline: str
    outcome: Outcome


def free_port() -> int:
    """A port that is free now on every interface (rank 0's store binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def execute(
    plan: LaunchPlan,
    options: RunOptions,
    watchdog: Watchdog,
    *,
    events: queue.SimpleQueue[object] | None = None,
    on_event: Callable[[object], None] | None = None,
) -> Result:
    """Start the plan's ranks, supervise them to the end, report. Never leaves a rank running."""
    events = events if events is not None else queue.SimpleQueue()
    pump = OutputPump()
    pump.start()
    procs = ProcessSet(
        plan,
        events,
        pump,
        watchdog=watchdog,
        log_dir=options.log_dir,
        show_ranks=options.show_ranks,
        prefix=options.prefix,
    )
    try:
        with forwarding_signals(events):
            procs.start()
            log.info(
                "started %d rank(s) on %s: %s",
                len(plan.ranks),
                plan.world.host.name,
                " ".join(plan.job.command[: len(plan.job.command) - plan.job.user_args]),
            )
            outcome = Supervisor(procs, events, options.grace_s, on_event=on_event).run()
            procs.close(options.grace_s)
    finally:
        procs.close(0.0)  # on an unexpected error: nothing may survive us
        procs.wait_output(OUTPUT_DRAIN_S)
        pump.stop(1.0)
    tails = {
        rank: (p.spec.host, p.spec.error_file, p.stderr_tail.text())
        for rank, p in procs.ranks.items()
    }
    found = report.failures(outcome, tails)
    result = Result(report.exit_code(outcome), report.headline(outcome, found), outcome)
    if options.output_dir is not None:
        finish(options.output_dir, result, found)
    if options.error_dir is not None:
        shutil.rmtree(options.error_dir, ignore_errors=True)
    return result


def finish(output_dir: Path, result: Result, found: list[report.RankFailure]) -> None:
    """Write output/success or output/failure (a failure file the script wrote is kept)."""
    if result.exit_code == 0:
        report.write_success(output_dir)
        return
    if not report.write_failure(output_dir, report.failure_text(result.headline, found)):
        log.info("%s/failure exists (written by the script): kept as is", output_dir)
