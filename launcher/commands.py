"""The commands behind `train` and `launcher run|plan|local|doctor`: the pipeline, wired.

Each function takes the parsed arguments and the environment and returns an exit code; errors
are raised as `LauncherError` and turned into lines, failure files and exit codes by `cli`
(the only module that exits). `train` reads the SageMaker tree, meets the other hosts when the
job spans several, and runs its ranks; `run` is the same without a tree, like torchrun.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import console, gpus, plan, settings
from launcher.app import Result, RunOptions, execute, finish, free_port, guarded
from launcher.containment import Containment
from launcher.errors import LauncherError, StopRequested
from launcher.events import Events
from launcher.plan import Backend, HostSlots, JobSpec, LaunchPlan, World

if TYPE_CHECKING:
    from launcher.control.follower import Member
    from launcher.horovod import RendezvousHost as HorovodServer
    from launcher.mpi.job import SshKeys
    from launcher.sagemaker.entrypoint import EntryPoint
    from launcher.sagemaker.tree import JobConfig

log = logging.getLogger("launcher")


def train(args: argparse.Namespace, environ: dict[str, str], base: Path) -> int:
    from launcher.sagemaker import config, job  # noqa: PLC0415 - only train and plan read a tree

    cfg = config.load(base, environ)
    if len(cfg.resources.hosts) > 1:
        console.setup_logging(cfg.resources.current_host)  # every line says which host wrote it
    hps_file = str(cfg.paths.input_config_dir / "hyperparameters.json")
    sources = settings.Sources(vars(args), environ, cfg.hyperparameters.sagemaker, hps_file)
    chosen = settings.resolve(sources, default_backend=Backend.NONE)
    if chosen.backend is not Backend.NONE and not cfg.distribution_instance_groups:
        # An explicit backend (--backend, LAUNCHER_BACKEND) counts as a distribution flag.
        cfg = config.distributed(cfg)
    backend = chosen.backend if cfg.in_distribution else Backend.NONE
    # Validate the entry point before anything is logged: bad input gets exactly one line.
    entry = job.fetch_and_resolve(cfg, environ, dry_run=args.dry_run)
    found = gpus.discover(environ)
    slots = (
        1 if backend is Backend.NONE else settings.local_slots(chosen.procs_per_host, len(found))
    )
    multi = backend is not Backend.NONE and len(cfg.distribution_hosts) > 1
    host = cfg.resources.current_host
    with guarded(dry_run=args.dry_run, environ=environ, host=host, grace_s=chosen.grace_s) as scope:
        env = job.user_environment(cfg, num_gpus=len(found), environ=environ)
        if not args.dry_run:
            job.install(entry, plan.without_secrets({**environ, **env}), scope)
        error_dir = "" if args.dry_run else _error_dir(chosen.log_dir)
        try:
            prepared = Prepared(cfg, chosen, sources, entry, env, backend, slots, multi)
            return _train_job(args, prepared, error_dir, scope)
        finally:
            if error_dir and not chosen.log_dir:
                shutil.rmtree(error_dir, ignore_errors=True)  # on every path, errors included


@dataclass(frozen=True, slots=True)
class Prepared:
    """What `train` knows once the tree is read, the settings resolved and the code in place."""

    cfg: JobConfig
    chosen: settings.Settings
    sources: settings.Sources
    entry: EntryPoint
    env: dict[str, str]  # what train adds to the user's environment (SM_*, PYTHONPATH, ...)
    backend: Backend
    slots: int  # ranks on this host
    multi: bool  # more than one host takes part


def _train_job(
    args: argparse.Namespace, prepared: Prepared, error_dir: str, scope: Containment
) -> int:
    """`train` once its code is in place: meet the hosts, plan, run, agree on the result."""
    from launcher.sagemaker import job  # noqa: PLC0415 - only train and plan read a tree

    cfg, chosen, sources = prepared.cfg, prepared.chosen, prepared.sources
    backend, slots, multi = prepared.backend, prepared.slots, prepared.multi
    environ = dict(sources.environ)
    entry, env = prepared.entry, prepared.env
    spec = job.spec(cfg, entry, backend, env, error_dir)
    events: Events = queue.SimpleQueue()
    member: Member | None = None
    leads = not multi or cfg.resources.current_host == cfg.distribution_hosts[0]
    keys, hvd, extra = _backend_prepare(backend, multi, leads, args.dry_run, environ)
    if not multi:
        world = _single_host(cfg.resources.current_host, slots, chosen.master_port, args.dry_run)
    elif args.dry_run:
        world = _assumed_world(cfg.distribution_hosts, cfg.resources.current_host, slots)
    else:
        from launcher.control.meet import MeetRequest, meet  # noqa: PLC0415 - multi-host jobs only

        request = MeetRequest(
            host=cfg.resources.current_host,
            hosts=cfg.distribution_hosts,
            slots=slots,
            control_port=chosen.control_port,
            master_port=chosen.master_port,
            peer_timeout_s=chosen.peer_timeout_s,
            heartbeat_timeout_s=chosen.heartbeat_timeout_s,
            job_name=cfg.training_job_name or cfg.sagemaker_job_name,
            token=chosen.job_token,
            leader_addr=environ.get("LAUNCHER_LEADER_ADDR", ""),
            plan_extra=extra,
        )
        world, member = meet(request, events, free_port())
    try:
        return _run_world(
            args,
            prepared,
            spec=spec,
            world=world,
            member=member,
            keys=keys,
            hvd=hvd,
            events=events,
            scope=scope,
        )
    except StopRequested as e:  # stopped after the meeting, before the ranks ran
        if member is not None:
            member.stopped(e.signum)  # the other hosts learn it now, not at a timeout
        raise


def _run_world(
    args: argparse.Namespace,
    prepared: Prepared,
    *,
    spec: JobSpec,
    world: World,
    member: Member | None,
    keys: SshKeys | None,
    hvd: HorovodServer | None,
    events: Events,
    scope: Containment,
) -> int:
    """Plan this host's ranks in the agreed world, run them, agree on the job's result."""
    cfg, chosen, sources, backend = (
        prepared.cfg,
        prepared.chosen,
        prepared.sources,
        prepared.backend,
    )
    environ = dict(sources.environ)
    if hvd is not None:
        world = hvd.attach(world)
    launch = plan.build(spec, world, environ, os.cpu_count() or 1)
    if backend is Backend.MPI:
        return _mpi(
            args,
            sources,
            launch,
            output_dir=cfg.paths.output_dir,
            instance_type=cfg.resources.current_instance_type,
            member=member,
            keys=keys,
            scope=scope,
            events=events,
        )
    if args.dry_run:
        return _print_plan(launch, args.json)
    options = RunOptions(
        grace_s=chosen.grace_s,
        log_dir=chosen.log_dir,
        show_ranks=chosen.show_ranks,
        prefix=backend is not Backend.NONE,
        output_dir=None if member else cfg.paths.output_dir,
    )
    if member is None:
        return _finish(execute(launch, options, scope, events=events))
    try:
        result = execute(launch, options, scope, events=events, on_stop=member.failed)
        code, reason = member.barrier() if result.exit_code == 0 else (result.exit_code, "")
    finally:
        member.close()
    text = result.failure_text if result.exit_code else f"{reason}\n"
    finish(cfg.paths.output_dir, code, text)
    return _finish(result if result.exit_code or not code else _failed(result, code, reason))


# --- the mpi and horovod backends (launcher/mpi/job.py, launcher/horovod.py) -------------------


def _backend_prepare(
    backend: Backend, multi: bool, leads: bool, dry_run: bool, environ: dict[str, str]
) -> tuple[SshKeys | None, HorovodServer | None, dict[str, Any]]:
    """What must exist before the hosts meet: MPI's per-job ssh keys (multi-host only), and
    the leader's Horovod rendezvous server, whose port travels in the PLAN."""
    if dry_run:
        return None, None, {}
    if backend is Backend.MPI and multi:
        from launcher.mpi.job import SshKeys  # noqa: PLC0415 - keeps `train` start-up light

        keys = SshKeys.create(leads, environ)
        return keys, None, keys.plan_extra() if leads else {}
    if backend is Backend.HOROVOD and leads:
        from launcher.control.meet import HOROVOD_PORT_KEY  # noqa: PLC0415
        from launcher.horovod import RendezvousHost  # noqa: PLC0415

        server = RendezvousHost()
        return None, server, {HOROVOD_PORT_KEY: server.start()}
    return None, None, {}


def _mpi(
    args: argparse.Namespace,
    sources: settings.Sources,
    launch: LaunchPlan,
    *,
    output_dir: Path | None,
    instance_type: str = "",
    member: Member | None = None,
    keys: SshKeys | None = None,
    scope: Containment,
    events: Events,
) -> int:
    """The `mpi` backend's `train`: mpirun on the leader, sshd on the followers."""
    from launcher.mpi import job as mpijob  # noqa: PLC0415 - keeps `train` start-up light

    chosen = settings.resolve(sources, default_backend=Backend.NONE)
    run = mpijob.MpiRun(
        launch=launch,
        settings=mpijob.mpi_settings(sources),
        options=RunOptions(
            grace_s=chosen.grace_s, log_dir=chosen.log_dir, show_ranks=chosen.show_ranks
        ),
        scope=scope,
        events=events,
        output_dir=output_dir,
        peer_timeout_s=chosen.peer_timeout_s,
        environ=dict(sources.environ),
        python=sys.executable,
        instance_type=instance_type,
    )
    if args.dry_run:
        return _print_plan(mpijob.leader_plan(run, "<ssh-config>", "<host-env>"), args.json)
    try:
        code, headline = mpijob.run(run, member, keys)
    finally:
        if member is not None:
            member.close()
    if code == 0:
        log.info("job succeeded")
    else:
        log.error("job failed (exit %d): %s", code, headline)
    return code


def _failed(result: Result, code: int, reason: str) -> Result:
    """This host's ranks succeeded but the job failed elsewhere after they finished."""
    return Result(code, reason, result.outcome, f"{reason}\n")


def _assumed_world(hosts: tuple[str, ...], current: str, slots: int) -> World:
    """For --dry-run of a multi-host job: every host as this one, before any rendezvous."""
    layout = tuple(HostSlots(h, slots) for h in hosts)
    return World(layout, hosts.index(current), hosts[0], 0)


def _error_dir(log_dir: Path | None) -> str:
    """Where the ranks' error files go: the log dir (kept there, as torchrun keeps them), else
    a private folder removed after the run (tempfile would cost 3 ms of imports)."""
    if log_dir is not None:
        return str(log_dir)
    root = os.environ.get("TMPDIR") or "/tmp"  # noqa: S108 - created 0700 and unique below
    path = f"{root}/launcher-errors-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        Path(path).mkdir(mode=0o700)
    except OSError as e:
        raise LauncherError(
            f"cannot create {path}: {e.strerror}", hint="set TMPDIR to a writable folder"
        ) from None
    return path


def _single_host(host: str, slots: int, master_port: int, dry_run: bool) -> World:
    port = master_port or (0 if dry_run else free_port())
    return World((HostSlots(host, slots, "127.0.0.1"),), 0, "127.0.0.1", port)


def _finish(result: Result) -> int:
    if result.exit_code == 0:
        log.info("job succeeded in %.2f s", result.outcome.duration_s)
    else:
        log.error("job failed (exit %d): %s", result.exit_code, result.headline)
    return result.exit_code


def _print_plan(launch: LaunchPlan, as_json: bool) -> int:
    described = plan.describe(launch)
    if as_json:
        print(json.dumps(described, indent=2, sort_keys=True))
        return 0
    print(f"backend {described['backend']}, world size {described['world_size']}")
    ranks: list[dict[str, Any]] = described["ranks"]  # type: ignore[assignment]
    for rank in ranks:
        print(f"rank {rank['rank']} (local {rank['local_rank']}) on {rank['host']}")
        print(f"  cwd: {rank['cwd']}")
        print(f"  command: {json.dumps(rank['argv'])}")
        for name, value in rank["env"].items():
            print(f"  env {name}={value}")
    return 0


def run(args: argparse.Namespace, environ: dict[str, str]) -> int:
    sources = settings.Sources(vars(args), environ, {})
    chosen = settings.resolve(sources, default_backend=Backend.TORCH)
    found = gpus.discover(environ)
    slots = settings.local_slots(chosen.procs_per_host, len(found))
    if args.module:
        command = [sys.executable, "-m", args.program, *args.args]
    elif args.no_python:
        command = [args.program, *args.args]
    else:
        command = [sys.executable, args.program, *args.args]
    host = environ.get("LAUNCHER_HOST_NAME") or os.uname().nodename
    with guarded(dry_run=args.dry_run, environ=environ, host=host, grace_s=chosen.grace_s) as scope:
        error_dir = "" if args.dry_run else _error_dir(chosen.log_dir)
        try:
            spec = JobSpec(tuple(command), str(Path.cwd()), chosen.backend, error_dir=error_dir)
            world = _single_host(host, slots, chosen.master_port, args.dry_run)
            _, hvd, _ = _backend_prepare(chosen.backend, False, True, args.dry_run, environ)
            if hvd is not None:
                world = hvd.attach(world)
            launch = plan.build(spec, world, environ, os.cpu_count() or 1)
            out = Path(args.output_dir) if args.output_dir else None
            if chosen.backend is Backend.MPI:
                return _mpi(
                    args, sources, launch, output_dir=out, scope=scope, events=queue.SimpleQueue()
                )
            if args.dry_run:
                return _print_plan(launch, args.json)
            options = RunOptions(
                grace_s=chosen.grace_s,
                log_dir=chosen.log_dir,
                show_ranks=chosen.show_ranks,
                prefix=True,
                output_dir=out,
            )
            return _finish(execute(launch, options, scope))
        finally:
            if error_dir and not chosen.log_dir:
                shutil.rmtree(error_dir, ignore_errors=True)  # on every path, errors included


def local(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from launcher.local import cluster as local  # noqa: PLC0415 - keeps `train` start-up light

    sources = settings.Sources(vars(args), environ, {})
    chosen = settings.resolve(sources, default_backend=Backend.TORCH)
    with guarded(dry_run=False, environ=environ, grace_s=chosen.grace_s) as scope:
        job = local.create(
            Path(args.job_dir).resolve(),
            n_hosts=args.hosts,
            procs_per_host=chosen.procs_per_host,
            script=Path(args.program).resolve(),
            args=list(args.args),
            backend=chosen.backend,
        )
        log.info("local job of %d hosts in %s", len(job.hosts), job.folder)
        port, token = free_port(), os.urandom(16).hex()
        hosts_file = local.write_host_envs(job, port, token)
        argv = tuple(local.zygote_argv(hosts_file))
        ranks = (plan.RankSpec(0, 0, job.hosts[0], argv, str(Path.cwd()), {}, ""),)
        spec = JobSpec(argv, str(Path.cwd()), Backend.NONE)
        world = World((HostSlots(job.hosts[0], 1),), 0, "127.0.0.1", port)
        launch = LaunchPlan(spec, world, ranks, environ)
        options = RunOptions(grace_s=chosen.grace_s, prefix=False, fail_fast=False)
        result = execute(launch, options, scope)
    leader = result.outcome.exits.get(0)
    code = leader.returncode if leader is not None and leader.returncode > 0 else result.exit_code
    print(f"model: {job.model_dir}\nlogs:  {job.log_dir}\njob:   {job.folder}")
    if code:
        log.error("local job failed (exit %d); see %s/*/output/failure", code, job.folder)
    return code


def doctor(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from launcher.doctor import checks as doctor  # noqa: PLC0415 - keeps `train` start-up light

    return doctor.main(environ, as_json=args.json, backend=args.backend)
