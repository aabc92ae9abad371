"""Whole-job restarts as steps of the commands: the attempt loop's `Job` for `train` and
`launcher run` (`attempt_job`), and each command's meeting per attempt (`train_attempts`,
`run_attempts`; `platforms.launch` has its own). `commands` imports this module only for a
job that asked for restarts or a checkpoint folder (`commands._restarting`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from launcher import plan
from launcher.app import RunOptions
from launcher.commands import (
    Prepared,
    _options,
    _single_host,
    preflight_extra,
    world_for,
)
from launcher.containment import Containment
from launcher.events import Events
from launcher.plan import JobSpec, World
from launcher.restarts import attempts
from launcher.sagemaker import config
from launcher.settings import Backend, Settings


def attempt_job(
    spec: JobSpec,
    chosen: Settings,
    options: RunOptions,
    base: Path,
    host: str,
    *,
    output_dir: Path | None,
    environ: Mapping[str, str],
) -> attempts.Job:
    """The `restarts.attempts.Job` of `train` or `run`: what every attempt shares."""
    from launcher.restarts import checkpoints  # noqa: PLC0415 - its tree reader is lazy

    # A follower hears the leader's word once the leader's ranks are gone (at most the grace
    # period and the kill wait), or learns that the leader is lost (the heartbeat timeout).
    timeout = chosen.grace_s + 15.0 + 2 * chosen.heartbeat_timeout_s
    return attempts.Job(
        spec=spec,
        options=options,
        max_restarts=chosen.max_restarts,
        checkpoint_dir=checkpoints.folder(chosen.checkpoint_dir, base),
        host=host,
        verdict_timeout_s=timeout,
        output_dir=output_dir,
        environ=environ,
    )


def train_attempts(prepared: Prepared, environ: dict[str, str], scope: Containment) -> int:
    """`train` with restarts: every attempt meets the hosts again (`restarts.attempts`)."""
    output_dir = prepared.cfg.paths.output_dir
    options = _options(
        prepared.chosen, prefix=prepared.backend is not Backend.NONE, keep_dir=output_dir
    )
    job = attempt_job(
        prepared.spec,
        prepared.chosen,
        options,
        prepared.cfg.paths.base,
        prepared.host,
        output_dir=output_dir,
        environ=environ,
    )

    def meet(attempt: int, events: Events) -> attempts.Met:
        checked = attempt == 0 and prepared.chosen.preflight != "off"
        extra = preflight_extra(prepared) if checked else {}
        world, member = world_for(prepared, events=events, plan_extra=extra, attempt=attempt)
        if checked:  # once, before the first attempt's user code; its failure is not retried
            launch = plan.build(prepared.spec, world, environ, os.cpu_count() or 1)
            from launcher.preflight import command as preflight  # noqa: PLC0415 - --preflight

            preflight.run_preflight(launch, prepared, member, extra, events=events, scope=scope)
        return attempts.Met.of(world, member, attempt)

    return attempts.run(job, meet, scope)


def run_attempts(
    spec: JobSpec,
    world: World,
    chosen: Settings,
    environ: dict[str, str],
    *,
    scope: Containment,
    out: Path | None,
) -> int:
    """`launcher run` with restarts: each attempt on a fresh free port (unless one is set)."""
    base = config.base_dir_from(environ)
    options = _options(chosen, keep_dir=out)
    job = attempt_job(spec, chosen, options, base, world.host.name, output_dir=out, environ=environ)
    host, slots = world.host.name, world.host.slots

    def meet(attempt: int, events: Events) -> attempts.Met:
        fresh = world if not attempt else _single_host(host, slots, chosen.master_port, False)
        return attempts.Met(fresh, None, attempt)

    return attempts.run(job, meet, scope)
