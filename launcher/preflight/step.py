"""The preflight as one step of a command: this host's checks, the whole job's verdict, the
table on stderr, `preflight.json`, and `PreflightFailed` (exit 78) on every host when any
check failed, before any user code runs.

On each host, in order: the directories (`storage`), the GPU inventory (`inventory`, NVML),
then the child process (`probe`, the job's Python and the ranks' environment) that measures
compute, memory and the all_reduce bandwidth within the host and, with the other hosts' children
at the same time, across hosts. With several hosts the rows meet at the leader (`gather`).
The child runs in its own session, carrying the job's marker (the watchdog ends it with the
launcher); at `timeout_s` it is killed and its host gets a FAIL row.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from launcher import procs
from launcher.containment import Containment
from launcher.errors import PreflightFailed
from launcher.events import Events
from launcher.plan import LaunchPlan, World
from launcher.preflight import inventory, storage
from launcher.preflight.probe import ProbeSpec
from launcher.preflight.rows import FAIL, Row, from_wire, summary, table, write_json
from launcher.preflight.thresholds import Policy, judge

if TYPE_CHECKING:
    from launcher.control.follower import Member
    from launcher.settings import Settings

log = logging.getLogger("launcher")

PROBE_MODULE = "launcher.preflight.probe"
MARGIN_S = 15.0  # how much longer the leader waits for reports than a child may run


@dataclass(frozen=True, slots=True)
class PreflightJob:
    """Everything the preflight of one host needs, from the command's resolved settings."""

    world: World
    policy: Policy
    dirs: Mapping[str, Path]  # role -> directory that must be writable with free space
    output_dir: Path | None  # where preflight.json goes (None: nowhere)
    python: str  # the job's Python: the ranks' interpreter
    env: Mapping[str, str]  # the ranks' environment (this host's first rank)
    port: int = 0  # the cross-host all_reduce's port on the leader; 0: none
    timeout_s: float = 120.0
    health: inventory.HealthProbe | None = field(default=None, compare=False)

    @property
    def host(self) -> str:
        return self.world.host.name


def job_for(
    launch: LaunchPlan,
    chosen: Settings,
    dirs: Mapping[str, Path],
    output_dir: Path | None,
    *,
    port: int = 0,
) -> PreflightJob:
    """The preflight of this host of `launch`, from the command's resolved settings: the
    ranks' environment (this host's first rank), the job's Python, the floors set."""
    policy = Policy(
        level=chosen.preflight,
        min_cross_gbps=chosen.preflight_min_gbps,
        min_tflops=chosen.preflight_min_tflops,
        min_free_gb=chosen.preflight_min_free_gb,
        expect_gpus=chosen.preflight_expect_gpus,
    )
    return PreflightJob(
        world=launch.world,
        policy=policy,
        dirs=dirs,
        output_dir=output_dir,
        python=sys.executable,
        env=launch.full_env(launch.ranks[0]),
        port=port,
        timeout_s=chosen.preflight_timeout_s,
    )


def probe_rows(job: PreflightJob, scope: Containment | None = None) -> list[Row]:
    """Run the child probe; its rows, or one FAIL row saying why there are none."""
    world = job.world
    spec = ProbeSpec(
        host=job.host,
        node_rank=world.node_rank,
        n_hosts=len(world.hosts),
        master_addr=world.master_addr,
        port=job.port,
        level=job.policy.level,
        floor_gbps=job.policy.min_cross_gbps,
        pairwise=job.policy.pairwise_always,
        timeout_s=job.timeout_s,
    )
    env = dict(job.env)
    if scope is not None and scope.marker:
        env.update(scope.env())
    argv = [job.python, "-m", PROBE_MODULE, json.dumps(asdict(spec))]
    began = time.monotonic()
    done = procs.capture(argv, env=env, timeout_s=job.timeout_s)
    took = time.monotonic() - began
    if done.returncode is None:
        why = f"the measurements did not finish within {job.timeout_s:g} s"
    elif done.returncode != 0:
        why = f"the probe exited {done.returncode}: {_tail(done.stderr)}"
    else:
        try:
            return [from_wire(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]
        except (ValueError, IndexError, TypeError) as e:
            why = f"the probe's output is not a list of rows ({e}): {_tail(done.stderr)}"
    return [Row("probe", job.host, "error", "", "completes", FAIL, detail=why, seconds=took)]


def _tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-limit:]


def run(
    job: PreflightJob,
    member: Member | None,
    events: Events,
    scope: Containment | None = None,
) -> list[Row]:
    """The whole preflight on this host; the judged rows when it passed.

    Raises `PreflightFailed` (exit 78; the message names the bad hosts, one line per failure)
    on every host when a check failed anywhere, and `JobAborted` when another host failed or
    was lost meanwhile. Writes `preflight.json` into `job.output_dir` either way.
    """
    began = time.monotonic()
    log.info("preflight (%s) on %d host(s)", job.policy.level, len(job.world.hosts))
    rows = storage.rows(job.host, job.dirs, job.policy.min_free_gb)
    rows += inventory.rows(job.host, inventory.read(job.health))
    rows += probe_rows(job, scope)
    if member is None:
        judged = judge(rows, job.policy)
        failed = any(r.failed for r in judged)
    else:
        from launcher.preflight import gather  # noqa: PLC0415 - several hosts only

        hosts = [h.name for h in job.world.hosts]
        code, judged = gather.exchange(
            member,
            hosts,
            rows,
            policy=job.policy,
            events=events,
            timeout_s=job.timeout_s + MARGIN_S,
        )
        failed = code != 0
    seconds = time.monotonic() - began
    report(judged, job, seconds)
    if failed:
        raise PreflightFailed(summary(judged).rstrip("\n"))
    log.info("preflight passed in %.2f s", seconds)
    return judged


def report(rows: Sequence[Row], job: PreflightJob, seconds: float) -> None:
    """The table on stderr, one error line per failure, `preflight.json` (a write error is
    logged, never raised: the verdict stands without the file)."""
    sys.stderr.write(table(rows) + "\n")
    sys.stderr.flush()
    for row in rows:
        if row.verdict == FAIL:
            log.error("%s", row.line())
    if job.output_dir is not None:
        try:
            write_json(job.output_dir, rows, level=job.policy.level, seconds=seconds)
        except OSError as e:
            log.warning("cannot write %s/preflight.json: %s", job.output_dir, e)
