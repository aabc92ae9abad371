"""The preflight as a step of the commands: `run_preflight` (`train`), `check_hosts` (the step
itself, also for `launcher run` on a platform), and `launcher preflight`, the preflight alone.

`commands` imports this module only for a job that asked for a preflight. Raises
`PreflightFailed` (78) on every host when a check failed, after closing the control channel.
"""

from __future__ import annotations

import argparse
import os
import queue
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import plan
from launcher.app import guarded
from launcher.commands import Prepared, preflight_extra, prepare, world_for
from launcher.containment import Containment
from launcher.errors import JobAborted, LauncherError, StopRequested
from launcher.events import Events
from launcher.plan import LaunchPlan
from launcher.settings import Backend, Settings

if TYPE_CHECKING:
    from launcher.control.follower import Member


def run_preflight(
    launch: LaunchPlan,
    prepared: Prepared,
    member: Member | None,
    extra: Mapping[str, Any],
    *,
    events: Events,
    scope: Containment,
) -> None:
    """The preflight step: after the hosts met, before any user code. Raises
    `PreflightFailed` (exit 78, naming the bad hosts) on every host when a check failed."""
    chosen, paths = prepared.chosen, prepared.cfg.paths
    dirs = {"model": paths.model_dir, "output": paths.output_dir}
    check_hosts(
        launch,
        chosen,
        member,
        extra,
        dirs=dirs,
        base=paths.base,
        output_dir=paths.output_dir,
        events=events,
        scope=scope,
    )


def check_hosts(
    launch: LaunchPlan,
    chosen: Settings,
    member: Member | None,
    extra: Mapping[str, Any],
    *,
    dirs: Mapping[str, Path],
    base: Path,
    output_dir: Path | None,
    events: Events,
    scope: Containment,
) -> None:
    """The preflight of `train`, `launcher preflight` and `launcher run` on a platform: every
    host of `launch` checks itself and the leader judges (`preflight.step.run`). `dirs` are
    checked with the checkpoint folder the ranks get (`restarts.checkpoints.folder`, when it
    was named or exists: a job that keeps no checkpoints needs none). Raises
    `PreflightFailed` (78) on every host when a check failed, after closing the channel."""
    from launcher.control.follower import Follower  # noqa: PLC0415 - preflight only
    from launcher.control.messages import PREFLIGHT_PORT_KEY  # noqa: PLC0415
    from launcher.preflight import step  # noqa: PLC0415 - only a job with --preflight
    from launcher.restarts import checkpoints as ckpt  # noqa: PLC0415

    port = int(extra.get(PREFLIGHT_PORT_KEY) or 0)
    if isinstance(member, Follower) and member.plan is not None:
        port = member.plan.preflight_port or 0
    checked = dict(dirs)
    checkpoints = ckpt.folder(chosen.checkpoint_dir, base)
    if chosen.checkpoint_dir is not None or checkpoints.is_dir():
        checked["checkpoints"] = checkpoints
    job = step.job_for(launch, chosen, checked, output_dir, port=port)
    try:
        step.run(job, member, events, scope)
    except LauncherError:
        if member is not None:
            leave(member)  # the verdict is out (or the job aborted): nothing more to say
        raise


def leave(member: Member) -> None:
    """Close the channel; the leader first lets every host read what it was sent."""
    from launcher.control.follower import STOP_LINGER_S  # noqa: PLC0415 - multi-host only
    from launcher.control.leader import Leader  # noqa: PLC0415

    if isinstance(member, Leader):
        member.close(linger=STOP_LINGER_S)
    else:
        member.close()


def preflight(args: argparse.Namespace, environ: dict[str, str], base: Path) -> int:
    """`launcher preflight`: the preflight alone, as a job of its own: the tree, the meeting
    of every host (backend torch unless one is set), the checks; 0 when every host passed.
    Starts no user code. Raises `PreflightFailed` (78) on every host when a check failed,
    and what `train` raises before its ranks start."""
    if args.backend is None and not environ.get("LAUNCHER_BACKEND"):
        args.backend = Backend.TORCH.value  # every host takes part, as a distributed job
    prepared = prepare(args, environ, base, dry_run=True)
    if prepared.chosen.preflight == "off":  # the command is the preflight: quick unless full
        prepared = replace(prepared, chosen=replace(prepared.chosen, preflight="quick"))
    with guarded(
        dry_run=False, environ=environ, host=prepared.host, grace_s=prepared.chosen.grace_s
    ) as scope:
        events: Events = queue.SimpleQueue()
        extra = preflight_extra(prepared)
        world, member = world_for(prepared, events=events, plan_extra=extra)
        try:
            launch = plan.build(prepared.spec, world, environ, os.cpu_count() or 1)
            run_preflight(launch, prepared, member, extra, events=events, scope=scope)
        except StopRequested as e:
            if member is not None:
                member.stopped(e.signum)
            raise
        if member is None:
            return 0
        # Every host passed: leave together (the exit barrier), so that no host's leaving
        # reads as a lost host to one still reading the verdict.
        try:
            code, reason = member.barrier()
        finally:
            leave(member)
    if code:
        raise JobAborted(reason, exit_code=code)
    return 0
