"""`launcher run` on a platform of several hosts, or one task per GPU: the same path as `train`.

One launcher per host: the platform's hosts meet over the authenticated control channel
(`control.meet`), the leader's PLAN fixes the world, `plan.build` gives this host's ranks
the torchrun variables and the `SM_*` set of the equivalent SageMaker tree
(`platforms.smtree`), `app.execute` supervises them, and the hosts agree on the job's
result at the exit barrier, as in `train`. One task per GPU (Slurm started every rank): this
launcher is a thin shim that builds the one rank Slurm gave it and supervises it; Slurm's step
ends the other tasks when one fails (`srun --kill-on-bad-exit`).

The control channel's secret: `LAUNCHER_JOB_TOKEN`, else the file `--secret-file`
(`LAUNCHER_JOB_TOKEN_FILE`, e.g. a mounted Kubernetes Secret); without either the token is
derived from the job and its hosts, and a warning says that the channel is not authenticated.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import console, gpus, plan
from launcher.app import RunOptions, execute, finish, guarded
from launcher.containment import Containment
from launcher.errors import ConfigError, LauncherError, StopRequested, UsageError
from launcher.events import Events
from launcher.net import free_port
from launcher.plan import HostSlots, JobSpec, LaunchPlan, World
from launcher.platforms.model import Platform
from launcher.platforms.smtree import job_config
from launcher.sagemaker import config
from launcher.settings import Backend, Settings, local_slots

if TYPE_CHECKING:
    from launcher.control.follower import Member
    from launcher.control.meet import MeetRequest
    from launcher.restarts import attempts

__all__ = ["MAX_SECRET_BYTES", "job_token", "run", "spec_for"]

log = logging.getLogger("launcher")
MAX_SECRET_BYTES = 4096


def job_token(chosen: Settings, multi: bool) -> str | None:
    """The control channel's secret; None (derived, with a warning on several hosts) without
    one. Raises `ConfigError` naming the file when it cannot be read or is empty."""
    if chosen.job_token:
        return chosen.job_token
    path = chosen.job_token_file
    if path is not None:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except OSError as e:
            raise ConfigError(path, None, f"cannot read the secret: {e.strerror}") from None
        text = data.decode("utf-8", "replace").strip()
        if not text or len(data) > MAX_SECRET_BYTES:
            raise ConfigError(path, None, f"must hold a secret of 1 to {MAX_SECRET_BYTES} bytes")
        return text
    if multi:
        log.warning(
            "the control channel is NOT authenticated: no LAUNCHER_JOB_TOKEN or --secret-file;"
            " anyone who can reach the control port can join or stop this job"
        )
    return None


def spec_for(
    platform: Platform,
    command: tuple[str, ...],
    chosen: Settings,
    environ: dict[str, str],
    program: str,
) -> tuple[JobSpec, int, dict[str, str]]:
    """The job (SM_* set included; `program`, the script or module as given, is the entry
    point), this host's rank count, and the environment the ranks inherit (the platform's
    GPU allocation applied)."""
    from launcher.sagemaker import smenv  # noqa: PLC0415 - only platforms need the SM_* set

    base = dict(environ)
    if platform.visible_gpus is not None and "CUDA_VISIBLE_DEVICES" not in base:
        base["CUDA_VISIBLE_DEVICES"] = platform.visible_gpus
    found = gpus.discover(base)
    slots = platform.slots or local_slots(chosen.procs_per_host, len(found))
    cfg = job_config(platform, program, environ, _channels(environ))
    env = smenv.sm_environment(cfg, num_gpus=len(found), num_cpus=os.cpu_count() or 1, environ=base)
    return JobSpec(command, str(Path.cwd()), chosen.backend, env), slots, base


def _channels(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The input channels: the folders under `$SAGEMAKER_BASE_DIR/input/data` (none if it
    does not exist), with names SageMaker allows."""
    data = config.base_dir_from(environ) / "input" / "data"
    try:
        names = [p.name for p in data.iterdir() if p.is_dir()]
    except OSError:
        return ()
    return tuple(sorted(n for n in names if n.replace("-", "").replace("_", "").isalnum()))


def run(
    args: argparse.Namespace,
    environ: dict[str, str],
    chosen: Settings,
    platform: Platform,
    command: tuple[str, ...],
) -> int:
    """`launcher run` on `platform`; the job's exit code. Raises what `train` raises around
    the meeting: `PeersUnreachable` (3), `MeetStopped`/`StopRequested` (128+N), and
    `UsageError` for the `mpi` backend (several hosts need `train`'s sshd set-up)."""
    from launcher import commands  # noqa: PLC0415 - the shared steps; commands imports us lazily

    if chosen.backend is Backend.MPI:
        raise UsageError(
            "launcher run --backend mpi runs on one host only",
            hint="use the torch or horovod backend, or `train` with a SageMaker tree",
        )
    if platform.multi:
        console.setup_logging(platform.current_host)
    spec, slots, base = spec_for(platform, command, chosen, environ, args.program)
    for line in platform.describe():
        log.info("%s", line)
    out = Path(args.output_dir) if args.output_dir else None
    if args.dry_run:
        world = _assumed(platform, slots)
        launch = plan.build(spec, world, base, os.cpu_count() or 1)
        return commands._print(launch, chosen, base, as_json=args.json)
    token = job_token(chosen, platform.multi and platform.task is None)
    host = platform.current_host
    with guarded(dry_run=False, environ=environ, host=host, grace_s=chosen.grace_s) as scope:
        error_dir = commands._error_dir(chosen.log_dir)
        try:
            spec = replace(spec, error_dir=error_dir)
            options = commands._options(chosen, output_dir=None, keep_dir=out)
            if platform.task is not None or not platform.multi:
                if platform.task is not None:
                    launch = _task_plan(platform, spec, base)
                else:
                    launch = _one_host(platform, spec, slots, base, chosen.master_port)
                options = replace(options, output_dir=out)
                return commands._finish(execute(launch, options, scope))
            if commands._restarting(chosen, chosen.backend):
                return _meet_and_run_attempts(
                    platform, spec, slots=slots, base=base, chosen=chosen, token=token, out=out,
                    scope=scope,
                )  # fmt: skip
            return _meet_and_run(
                platform,
                spec,
                slots=slots,
                base=base,
                chosen=chosen,
                token=token,
                options=options,
                out=out,
                scope=scope,
            )
        finally:
            if not chosen.log_dir:
                commands._remove(error_dir)


def _meet_and_run(
    platform: Platform,
    spec: JobSpec,
    *,
    slots: int,
    base: dict[str, str],
    chosen: Settings,
    token: str | None,
    options: RunOptions,
    out: Path | None,
    scope: Containment,
) -> int:
    """The hosts meet, this host runs its ranks, every host agrees on the result."""
    from launcher import commands  # noqa: PLC0415
    from launcher.control.meet import meet  # noqa: PLC0415 - several hosts only

    events: Events = queue.SimpleQueue()
    leads = platform.node_rank == 0
    setup = commands.backend_setup(chosen.backend, multi=True, leads=leads, environ=base)
    extra = {**setup.plan_extra, **commands.preflight_port_extra(chosen, multi=True, leads=leads)}
    request = _request(platform, slots=slots, chosen=chosen, token=token, plan_extra=extra)
    world, member = meet(request, events, free_port())
    try:
        if setup.horovod is not None:
            world = setup.horovod.attach(world)
        launch = plan.build(spec, world, base, os.cpu_count() or 1)
        _check_hosts(launch, chosen, member, extra, base=base, out=out, events=events, scope=scope)
        result = execute(launch, options, scope, events=events, on_stop=member.failed, peers=member)
        code, reason = member.barrier() if result.exit_code == 0 else (result.exit_code, "")
    except StopRequested as e:
        member.stopped(e.signum)
        raise
    finally:
        member.close()
    text = result.failure_text if result.exit_code else f"{reason}\n"
    if out is not None:
        finish(out, code, text)
    if result.exit_code or not code:
        return commands._finish(result)
    return commands._finish(commands._failed(result, code, reason))


def _request(
    platform: Platform,
    *,
    slots: int,
    chosen: Settings,
    token: str | None,
    plan_extra: Mapping[str, Any],
    attempt: int = 0,
) -> MeetRequest:
    """This host's part of the meeting. Attempt 0 uses the platform's master port (unless
    --master-port is set); a restart gets a fresh one from the leader, as `train`'s do, so no
    attempt can join a previous attempt's rendezvous."""
    from launcher.control.meet import MeetRequest  # noqa: PLC0415 - several hosts only

    return MeetRequest(
        host=platform.current_host,
        hosts=platform.hosts,
        slots=slots,
        control_port=chosen.control_port,
        master_port=chosen.master_port or (0 if attempt else platform.master_port),
        peer_timeout_s=chosen.peer_timeout_s,
        heartbeat_timeout_s=chosen.heartbeat_timeout_s,
        job_name=platform.job_name,
        token=token,
        leader_addr=chosen.leader_addr,
        plan_extra=plan_extra,
        attempt=attempt,
    )


def _meet_and_run_attempts(
    platform: Platform,
    spec: JobSpec,
    *,
    slots: int,
    base: dict[str, str],
    chosen: Settings,
    token: str | None,
    out: Path | None,
    scope: Containment,
) -> int:
    """`_meet_and_run` with whole-job restarts (`--max-restarts`): every attempt meets the
    hosts again with the leader's attempt count, as `train` does (`restarts.attempts`)."""
    from launcher import commands  # noqa: PLC0415
    from launcher.control.meet import meet  # noqa: PLC0415 - several hosts only
    from launcher.restarts import attempts  # noqa: PLC0415 - restarts only

    options = commands._options(chosen, keep_dir=out)
    from launcher.restarts import command as restarts  # noqa: PLC0415

    tree = config.base_dir_from(base)  # where the checkpoints default to

    job = restarts.attempt_job(
        spec, chosen, options, tree, platform.current_host, output_dir=out, environ=base
    )

    leads = platform.node_rank == 0
    rendezvous = restarts.AttemptRendezvous(chosen.backend, multi=True, leads=leads, environ=base)

    def meet_hosts(attempt: int, events: Events) -> attempts.Met:
        extra = {
            **rendezvous.begin(attempt),
            **commands.preflight_port_extra(chosen, multi=not attempt, leads=leads),
        }
        request = _request(
            platform, slots=slots, chosen=chosen, token=token, plan_extra=extra, attempt=attempt
        )
        world, member = meet(request, events, free_port())
        world = rendezvous.attach(world)
        if not attempt:  # once, before the first attempt's user code; its failure is not retried
            launch = plan.build(spec, world, base, os.cpu_count() or 1)
            _check_hosts(
                launch, chosen, member, extra, base=base, out=out, events=events, scope=scope
            )
        return attempts.Met.of(world, member, attempt)

    try:
        return attempts.run(job, meet_hosts, scope)
    finally:
        rendezvous.close()


def _check_hosts(
    launch: LaunchPlan,
    chosen: Settings,
    member: Member,
    extra: Mapping[str, Any],
    *,
    base: dict[str, str],
    out: Path | None,
    events: Events,
    scope: Containment,
) -> None:
    """With --preflight: every host of the platform checks itself before any user code (the
    output folder and the checkpoint folder the ranks get); 78 on every host on failure."""
    if chosen.preflight == "off":
        return
    from launcher.preflight import command as preflight  # noqa: PLC0415 - --preflight only

    tree = config.base_dir_from(base)
    dirs = {"output": out} if out is not None else {}
    preflight.check_hosts(
        launch, chosen, member, extra, dirs=dirs, base=tree, output_dir=out, events=events,
        scope=scope,
    )  # fmt: skip


def _assumed(platform: Platform, slots: int) -> World:
    """A dry run's world: every host like this one (no meeting)."""
    counts = platform.task_slots or (slots,) * len(platform.hosts)
    layout = tuple(HostSlots(h, n) for h, n in zip(platform.hosts, counts, strict=True))
    port = platform.task.master_port if platform.task else platform.master_port
    return World(layout, platform.node_rank, platform.hosts[0], port)


def _one_host(
    platform: Platform, spec: JobSpec, slots: int, base: dict[str, str], master_port: int
) -> LaunchPlan:
    """A platform of one host: nothing to meet, the ranks on loopback."""
    port = master_port or platform.master_port or free_port()
    world = World((HostSlots(platform.current_host, slots, "127.0.0.1"),), 0, "127.0.0.1", port)
    return plan.build(spec, world, base, os.cpu_count() or 1)


def _task_plan(platform: Platform, spec: JobSpec, base: dict[str, str]) -> LaunchPlan:
    """One task per GPU: the one rank Slurm started here, in the world Slurm laid out."""
    task = platform.task
    assert task is not None
    world = _assumed(platform, 1)
    full = plan.build(spec, world, base, os.cpu_count() or 1)
    mine = [r for r in full.ranks if r.local_rank == task.local_rank]
    if len(mine) != 1 or mine[0].rank != task.rank:
        raise LauncherError(f"task {task.rank} (local {task.local_rank}) is not in the plan")
    return replace(full, ranks=(mine[0],))
