"""The commands behind `train` and `launcher run|plan|local|doctor`, as named steps.

Each command takes the parsed arguments and the environment and returns an exit code; errors
are raised as `LauncherError` and turned into lines, failure files and exit codes by `cli`
(the only module that exits). `train` is:

    prepare      the tree, the settings (resolved once), the backend, the entry point, the
                 GPUs, the JobSpec; nothing started
    (dry run)    `show_plan`: the same path, stopped after the plan
    install      the entry point's pip installs, inside the job's containment
    world_for    a world of one host, or the meeting of every host
    plan.build   this host's ranks
    preflight    with --preflight: every host checked before any user code (exit 78)
    backend      `_mpi` (mpirun / sshd) or `_execute` (the ranks, then the exit barrier)

`launcher plan` is `show_plan`; `launcher doctor` decides the backend and the ranks with the
same steps (`settings_for`, `choose_backend`, `host_slots`). `run` is `train` without a tree,
like torchrun. A subpackage's own command lives in its `command.py` (`local`, `hangs`:
`launcher stacks`, `preflight`: `launcher preflight` and the preflight step, `restarts`: the
attempts of `train` and `run`), imported only by the command that needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import console, gpus, plan, settings
from launcher.app import Result, RunOptions, execute, finish, guarded
from launcher.containment import Containment
from launcher.errors import LauncherError, StopRequested
from launcher.events import Events
from launcher.net import free_port
from launcher.plan import HostSlots, JobSpec, LaunchPlan, World
from launcher.settings import Backend, Settings

if TYPE_CHECKING:
    from launcher.control.follower import Member
    from launcher.horovod import RendezvousHost as HorovodServer
    from launcher.mpi.job import MpiRun, SshKeys
    from launcher.platforms.model import Platform
    from launcher.sagemaker.entrypoint import EntryPoint
    from launcher.sagemaker.tree import JobConfig

log = logging.getLogger("launcher")


# --- train, plan and doctor: the front half --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """What `train` knows before it starts anything."""

    cfg: JobConfig  # the tree; with an explicit backend, this host's group distributes
    chosen: Settings  # resolved once for the whole command
    backend: Backend  # `none` for a host outside the distribution groups
    slots: int  # ranks on this host
    entry: EntryPoint
    spec: JobSpec  # error_dir is "" until `train` makes the folder

    @property
    def host(self) -> str:
        return self.cfg.resources.current_host

    @property
    def multi(self) -> bool:
        """More than one host takes part: the hosts meet."""
        return self.backend is not Backend.NONE and len(self.cfg.distribution_hosts) > 1

    @property
    def leads(self) -> bool:
        return not self.multi or self.host == self.cfg.distribution_hosts[0]


def prepare(
    args: argparse.Namespace, environ: dict[str, str], base: Path, *, dry_run: bool
) -> Prepared:
    """tree -> settings -> backend -> entry point -> GPUs -> JobSpec, for `train` and `plan`.

    Starts no process. Outside a dry run it brings the code into `code/` when that is empty
    (`sagemaker_submit_directory`); a dry run writes nothing. Raises `ConfigError` (exit 2)
    for a broken tree, a bad setting or a bad entry point, before any other line is logged,
    and `LauncherError` when the code cannot be fetched.
    """
    from launcher.sagemaker import config, job  # noqa: PLC0415 - only train and plan read a tree

    cfg = config.load(base, environ)
    if len(cfg.resources.hosts) > 1:
        console.setup_logging(cfg.resources.current_host)  # every line says which host wrote it
    chosen = settings_for(vars(args), environ, cfg)
    cfg, backend = choose_backend(cfg, chosen)
    # The entry point before the GPUs: bad input gets exactly one line (no NVML line first).
    entry = job.fetch_and_resolve(cfg, environ, dry_run=dry_run)
    found = gpus.discover(environ)
    env = job.user_environment(cfg, num_gpus=len(found), environ=environ)
    spec = job.spec(cfg, entry, backend, env, error_dir="")
    return Prepared(cfg, chosen, backend, host_slots(backend, chosen, len(found)), entry, spec)


def settings_for(
    cli: Mapping[str, Any], environ: Mapping[str, str], cfg: JobConfig | None
) -> Settings:
    """The settings of a command that reads the tree (`train`, `plan`, `doctor`).

    With a tree, its `sagemaker_*` hyperparameters are a source and the default backend is
    `none` (SageMaker's single process); without one (only `doctor` goes on without a tree),
    the default is `launcher run`'s `torch`. Raises `ConfigError` naming the bad value.
    """
    if cfg is None:
        sources = settings.Sources(cli, environ, {})
        return settings.resolve(sources, default_backend=Backend.TORCH)
    hps_file = str(cfg.paths.input_config_dir / "hyperparameters.json")
    # `sagemaker_*` and the launcher's own `launcher_*` (`launcher_hang_timeout`): both are kept
    # from the user's script (sagemaker.files.hyperparameters).
    hps = dict(cfg.hyperparameters.sagemaker)
    sources = settings.Sources(cli, environ, hps, hps_file)
    return settings.resolve(sources, default_backend=Backend.NONE)


def choose_backend(cfg: JobConfig, chosen: Settings) -> tuple[JobConfig, Backend]:
    """The tree as the job runs it, and this host's backend. Pure.

    An explicit backend (`--backend`, `LAUNCHER_BACKEND`) counts as a distribution flag: the
    current instance group distributes (DESIGN.md decision 5). A host outside the distribution
    groups runs its script once, as SageMaker does: backend `none`.
    """
    from launcher.sagemaker import config  # noqa: PLC0415 - only train, plan, doctor read a tree

    if chosen.backend is not Backend.NONE and not cfg.distribution_instance_groups:
        cfg = config.distributed(cfg)
    return cfg, chosen.backend if cfg.in_distribution else Backend.NONE


def host_slots(backend: Backend, chosen: Settings, gpu_count: int) -> int:
    """Ranks on this host: one for `none`, else the count asked for, or one per visible GPU."""
    if backend is Backend.NONE:
        return 1
    return settings.local_slots(chosen.procs_per_host, gpu_count)


# --- train -------------------------------------------------------------------------------------


def train(args: argparse.Namespace, environ: dict[str, str], base: Path) -> int:
    """`train`: `prepare`, install, `world_for`, plan, the backend; the job's exit code.

    `--dry-run` is `show_plan`. Raises what `prepare` raises before anything starts,
    `InstallError` for a failed pip install, `PeersUnreachable` (3) when hosts never arrive,
    and `StopRequested` (128+N) for a stop signal before the ranks run; the other hosts learn
    of a failure or stop here at once.
    """
    if args.dry_run:
        return show_plan(args, environ, base)
    from launcher.sagemaker import job  # noqa: PLC0415 - only train and plan read a tree

    prepared = prepare(args, environ, base, dry_run=False)
    chosen = prepared.chosen
    with guarded(
        dry_run=False, environ=environ, host=prepared.host, grace_s=chosen.grace_s
    ) as scope:
        job.install(prepared.entry, plan.without_secrets({**environ, **prepared.spec.env}), scope)
        error_dir = _error_dir(chosen.log_dir)
        try:
            spec = replace(prepared.spec, error_dir=error_dir)
            return _train_job(replace(prepared, spec=spec), environ, scope)
        finally:
            if not chosen.log_dir:
                _remove(error_dir)  # on every path, errors included


def show_plan(args: argparse.Namespace, environ: dict[str, str], base: Path) -> int:
    """`launcher plan` and `train --dry-run`: `train`'s path stopped after the plan.

    Prints the plan (`args.json`: as JSON), hyperparameter values masked, and returns 0. Writes
    nothing, starts nothing and meets no host: a multi-host job's world is every host taken
    to be like this one. Raises what `prepare` raises.
    """
    prepared = prepare(args, environ, base, dry_run=True)
    world, _ = world_for(prepared, events=queue.SimpleQueue(), plan_extra={}, dry_run=True)
    launch = plan.build(prepared.spec, world, environ, os.cpu_count() or 1)
    instance_type = prepared.cfg.resources.current_instance_type
    return _print(launch, prepared.chosen, environ, as_json=args.json, instance_type=instance_type)


def plan_command(args: argparse.Namespace, environ: dict[str, str], base: Path) -> int:
    """`launcher plan`: which platform `--hosts-from` finds and where each value came from,
    then, with a SageMaker tree, `train`'s plan (`show_plan`). On another platform there is no
    program to plan: `launcher run --dry-run PROGRAM` shows the ranks. Raises what `show_plan`
    raises (no tree and no platform: the missing tree), `PlatformError` for a bad platform."""
    chosen = settings.resolve(
        settings.Sources(vars(args), environ, {}), default_backend=Backend.TORCH
    )
    host = chosen.host_name or os.uname().nodename
    from launcher.platforms.model import Kind, PlatformError  # noqa: PLC0415

    try:
        found = _platform(chosen, environ, host)
    except PlatformError as e:
        if e.kind is not Kind.SAGEMAKER:
            raise
        found = None  # a broken tree: `train`'s own reading names the file and key
    if found is None:
        return show_plan(args, environ, base)
    if found.kind.value == "sagemaker":  # stdout is the plan's (`--json`: JSON only)
        for line in found.describe():
            log.info("%s", line)
        return show_plan(args, environ, base)
    print("\n".join(found.describe()))
    return 0


def world_for(
    prepared: Prepared,
    *,
    events: Events,
    plan_extra: Mapping[str, Any],
    dry_run: bool = False,
    attempt: int = 0,
) -> tuple[World, Member | None]:
    """This host's world, and its `Member` of the meeting (None on one host).

    One host: a world of one, on the master port set or a free one (0 in a dry run). Several
    hosts in a dry run: every host like this one, no meeting. Several hosts: the meeting over
    the control channel, whose leader announces `plan_extra` in the PLAN; the caller closes
    the member; `attempt` is the whole-job attempt the leader's PLAN names. Raises
    `PeersUnreachable` (3) when hosts are missing at the peer deadline and
    `MeetStopped` (128+N) for a stop signal while meeting.
    """
    chosen, cfg = prepared.chosen, prepared.cfg
    if not prepared.multi:
        return _single_host(prepared.host, prepared.slots, chosen.master_port, dry_run), None
    if dry_run:
        return _assumed_world(cfg.distribution_hosts, prepared.host, prepared.slots), None
    from launcher.control.meet import MeetRequest, meet  # noqa: PLC0415 - multi-host jobs only
    from launcher.platforms.launch import job_token  # noqa: PLC0415 - multi-host jobs only

    request = MeetRequest(
        host=prepared.host,
        hosts=cfg.distribution_hosts,
        slots=prepared.slots,
        control_port=chosen.control_port,
        master_port=chosen.master_port,
        peer_timeout_s=chosen.peer_timeout_s,
        heartbeat_timeout_s=chosen.heartbeat_timeout_s,
        job_name=cfg.training_job_name or cfg.sagemaker_job_name,
        token=job_token(chosen, multi=True),  # --secret-file too; warns when there is none
        leader_addr=chosen.leader_addr,
        plan_extra=plan_extra,
        attempt=attempt,
    )
    world, member = meet(request, events, free_port())
    return world, member


def _train_job(prepared: Prepared, environ: dict[str, str], scope: Containment) -> int:
    """`train` once its code is in place: the backend's setup, the world, the plan, one
    backend. A stop signal before the ranks run reaches the other hosts at once."""
    if _restarting(prepared.chosen, prepared.backend):
        from launcher.restarts import command as restarts  # noqa: PLC0415 - restarts only

        return restarts.train_attempts(prepared, environ, scope)
    events: Events = queue.SimpleQueue()
    setup = backend_setup(
        prepared.backend, multi=prepared.multi, leads=prepared.leads, environ=environ
    )
    extra = {**setup.plan_extra, **preflight_extra(prepared)}
    world, member = world_for(prepared, events=events, plan_extra=extra)
    try:
        if setup.horovod is not None:
            world = setup.horovod.attach(world)
        launch = plan.build(prepared.spec, world, environ, os.cpu_count() or 1)
        if prepared.chosen.preflight != "off":
            from launcher.preflight import command as preflight  # noqa: PLC0415 - --preflight

            preflight.run_preflight(launch, prepared, member, extra, events=events, scope=scope)
        if prepared.backend is Backend.MPI:
            run = _mpi_run(
                launch,
                prepared.chosen,
                environ,
                scope=scope,
                events=events,
                output_dir=prepared.cfg.paths.output_dir,
                instance_type=prepared.cfg.resources.current_instance_type,
            )
            return _mpi(run, member, setup.keys)
        return _execute(launch, prepared, member, scope=scope, events=events)
    except StopRequested as e:  # stopped after the meeting, before the ranks ran
        if member is not None:
            member.stopped(e.signum)  # the other hosts learn it now, not at a timeout
        raise


def _execute(
    launch: LaunchPlan,
    prepared: Prepared,
    member: Member | None,
    *,
    scope: Containment,
    events: Events,
) -> int:
    """Run this host's ranks; with other hosts, agree on the job's result at the exit barrier
    and write it (the same on every host). Returns the job's exit code."""
    output_dir = prepared.cfg.paths.output_dir
    options = _options(
        prepared.chosen,
        prefix=prepared.backend is not Backend.NONE,
        output_dir=None if member else output_dir,
        keep_dir=output_dir,
    )
    if member is None:
        return _finish(execute(launch, options, scope, events=events))
    try:
        result = execute(launch, options, scope, events=events, on_stop=member.failed, peers=member)
        code, reason = member.barrier() if result.exit_code == 0 else (result.exit_code, "")
    finally:
        member.close()
    text = result.failure_text if result.exit_code else f"{reason}\n"
    finish(output_dir, code, text)
    return _finish(result if result.exit_code or not code else _failed(result, code, reason))


# --- preflight (launcher/preflight/) -------------------------------------------------------------


def preflight_extra(prepared: Prepared) -> dict[str, Any]:
    """What the leader's PLAN adds for a preflight across hosts: its all_reduce port."""
    return preflight_port_extra(prepared.chosen, multi=prepared.multi, leads=prepared.leads)


def preflight_port_extra(chosen: Settings, *, multi: bool, leads: bool) -> dict[str, Any]:
    """The PLAN's preflight port, chosen by the leader of a multi-host job that checks its
    hosts; {} otherwise (no preflight, one host, or a follower: it reads the leader's)."""
    if chosen.preflight == "off" or not multi or not leads:
        return {}
    from launcher.control.messages import PREFLIGHT_PORT_KEY  # noqa: PLC0415

    return {PREFLIGHT_PORT_KEY: free_port()}


# --- the mpi and horovod backends (launcher/mpi/job.py, launcher/horovod.py) -------------------


@dataclass(frozen=True, slots=True)
class BackendSetup:
    """What a backend needs before the hosts meet (nothing for `none` and `torch`)."""

    keys: SshKeys | None = None  # mpi with several hosts: this host's per-job ssh key
    horovod: HorovodServer | None = None  # horovod, on the leader: its rendezvous server
    plan_extra: Mapping[str, Any] = field(default_factory=dict)  # what the leader's PLAN adds


def backend_setup(
    backend: Backend, *, multi: bool, leads: bool, environ: dict[str, str]
) -> BackendSetup:
    """MPI's per-job ssh keys (several hosts only; the leader's public key goes in the PLAN),
    and the leader's Horovod rendezvous server, whose port goes in the PLAN. Raises
    `LauncherError` when ssh-keygen fails or the server cannot start."""
    if backend is Backend.MPI and multi:
        from launcher.mpi.job import SshKeys  # noqa: PLC0415 - keeps `train` start-up light

        keys = SshKeys.create(leads, environ)
        return BackendSetup(keys=keys, plan_extra=keys.plan_extra() if leads else {})
    if backend is Backend.HOROVOD and leads:
        from launcher.control.meet import HOROVOD_PORT_KEY  # noqa: PLC0415
        from launcher.horovod import RendezvousHost  # noqa: PLC0415

        server = RendezvousHost()
        return BackendSetup(horovod=server, plan_extra={HOROVOD_PORT_KEY: server.start()})
    return BackendSetup()


def _mpi_run(
    launch: LaunchPlan,
    chosen: Settings,
    environ: Mapping[str, str],
    *,
    scope: Containment,
    events: Events,
    output_dir: Path | None,
    instance_type: str = "",
) -> MpiRun:
    """What the `mpi` backend's flow needs, from the settings already resolved."""
    from launcher.mpi import job as mpijob  # noqa: PLC0415 - keeps `train` start-up light

    return mpijob.MpiRun(
        launch=launch,
        settings=mpijob.mpi_settings(chosen),
        options=_options(chosen, hangs=False),
        scope=scope,
        events=events,
        output_dir=output_dir,
        peer_timeout_s=chosen.peer_timeout_s,
        environ=dict(environ),
        python=sys.executable,
        instance_type=instance_type,
    )


def _mpi(run: MpiRun, member: Member | None, keys: SshKeys | None) -> int:
    """The `mpi` backend: mpirun on the leader, sshd on the followers; the job's exit code."""
    from launcher.mpi import job as mpijob  # noqa: PLC0415 - keeps `train` start-up light

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


# --- shared pieces -------------------------------------------------------------------------------


def _options(
    chosen: Settings,
    *,
    prefix: bool = True,
    output_dir: Path | None = None,
    keep_dir: Path | None = None,
    hangs: bool = True,
) -> RunOptions:
    """How `execute` runs the ranks. `hangs=False` for a backend whose one process starts the
    ranks itself (mpirun): its ranks would share one progress file, so none is judged.
    `keep_dir` is where a hang's stacks go without a log dir (the output folder)."""
    return RunOptions(
        grace_s=chosen.grace_s,
        log_dir=chosen.log_dir,
        show_ranks=chosen.show_ranks,
        prefix=prefix,
        output_dir=output_dir,
        hang_timeout_s=chosen.hang_timeout_s if hangs else 0.0,
        keep_dir=keep_dir,
    )


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


def _remove(path: str) -> None:
    """Remove a folder the launcher made, whatever is in it; errors ignored.

    Bottom-up with `os.walk`, not `shutil.rmtree`: importing shutil (with bz2, lzma and
    fnmatch) costs every job about 2 ms for a folder of a few small files. A link is removed,
    never followed (`walk` does not descend into linked folders; they are listed and unlinked).
    """
    for parent, folders, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(parent, name))  # noqa: PTH108, PTH118 - str paths
        for name in folders:
            entry = os.path.join(parent, name)  # noqa: PTH118
            with contextlib.suppress(OSError):
                if os.path.islink(entry):  # noqa: PTH114
                    os.unlink(entry)  # noqa: PTH108
                else:
                    os.rmdir(entry)  # noqa: PTH106
    with contextlib.suppress(OSError):
        os.rmdir(path)  # noqa: PTH106


def _single_host(host: str, slots: int, master_port: int, dry_run: bool) -> World:
    port = master_port or (0 if dry_run else free_port())
    return World((HostSlots(host, slots, "127.0.0.1"),), 0, "127.0.0.1", port)


def _finish(result: Result) -> int:
    if result.exit_code == 0:
        log.info("job succeeded in %.2f s", result.outcome.duration_s)
    else:
        log.error("job failed (exit %d): %s", result.exit_code, result.headline)
    return result.exit_code


def _print(
    launch: LaunchPlan,
    chosen: Settings,
    environ: Mapping[str, str],
    *,
    as_json: bool,
    instance_type: str = "",
) -> int:
    """Print a dry run's plan; for `mpi`, the leader's: the one mpirun it would start."""
    if launch.job.backend is Backend.MPI:
        from launcher.mpi import job as mpijob  # noqa: PLC0415 - keeps `train` start-up light

        run = _mpi_run(
            launch,
            chosen,
            environ,
            scope=Containment(),  # inert: nothing starts
            events=queue.SimpleQueue(),
            output_dir=None,
            instance_type=instance_type,
        )
        launch = mpijob.leader_plan(run, "<ssh-config>", "<host-env>")
    return _print_plan(launch, as_json)


def _print_plan(launch: LaunchPlan, as_json: bool) -> int:
    import json  # noqa: PLC0415 - only a dry run prints JSON: `run`'s start-up skips it

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


# --- whole-job restarts (launcher/restarts) ----------------------------------------------------


def _restarting(chosen: Settings, backend: Backend) -> bool:
    """Whether the job runs through the attempt loop: restarts or a checkpoint folder asked
    for, on a backend whose every attempt can be started afresh (torch, none, horovod: the
    launchers start every rank; not mpi, whose ranks mpirun starts from the leader)."""
    if not chosen.max_restarts and chosen.checkpoint_dir is None:
        return False
    if backend is Backend.MPI:
        log.warning("restarts are not supported with the %s backend: the job runs once", backend)
        return False
    return True


# --- run, local, doctor --------------------------------------------------------------------------


def run(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`launcher run`: a program's ranks on this host, like torchrun; the job's exit code.

    settings -> GPUs -> JobSpec -> a world of one -> plan -> (`--dry-run`: print it) -> the
    backend. Raises `ConfigError` (exit 2) for a bad setting, `SpawnError` for a program
    that cannot start, `StopRequested` (128+N) for a stop signal before the ranks run.
    """
    chosen = settings.resolve(
        settings.Sources(vars(args), environ, {}), default_backend=Backend.TORCH
    )
    slots = settings.local_slots(chosen.procs_per_host, len(gpus.discover(environ)))
    if args.module:
        command = [sys.executable, "-m", args.program, *args.args]
    elif args.no_python:
        command = [args.program, *args.args]
    else:
        command = [sys.executable, args.program, *args.args]
    host = chosen.host_name or os.uname().nodename
    if chosen.hosts_from != "static":
        found = _platform(chosen, environ, host)
        if found is not None:  # several hosts, one task per GPU, or a platform named
            from launcher.platforms import launch as platform_run  # noqa: PLC0415

            return platform_run.run(args, environ, chosen, found, tuple(command))
    spec = JobSpec(tuple(command), str(Path.cwd()), chosen.backend)
    if args.dry_run:
        world = _single_host(host, slots, chosen.master_port, dry_run=True)
        launch = plan.build(spec, world, environ, os.cpu_count() or 1)
        return _print(launch, chosen, environ, as_json=args.json)
    out = Path(args.output_dir) if args.output_dir else None
    with guarded(dry_run=False, environ=environ, host=host, grace_s=chosen.grace_s) as scope:
        error_dir = _error_dir(chosen.log_dir)
        try:
            world = _single_host(host, slots, chosen.master_port, dry_run=False)
            setup = backend_setup(chosen.backend, multi=False, leads=True, environ=environ)
            if setup.horovod is not None:
                world = setup.horovod.attach(world)
            spec = replace(spec, error_dir=error_dir)
            launch = plan.build(spec, world, environ, os.cpu_count() or 1)
            if chosen.preflight != "off":
                from launcher.preflight import step  # noqa: PLC0415 - only with --preflight

                dirs = {"output": out} if out is not None else {}
                if chosen.checkpoint_dir is not None:
                    dirs["checkpoints"] = chosen.checkpoint_dir
                job = step.job_for(launch, chosen, dirs, out)
                step.run(job, None, queue.SimpleQueue(), scope)
            if chosen.backend is Backend.MPI:
                events: Events = queue.SimpleQueue()
                mpi_run = _mpi_run(
                    launch, chosen, environ, scope=scope, events=events, output_dir=out
                )
                return _mpi(mpi_run, None, None)
            if _restarting(chosen, chosen.backend):
                from launcher.restarts import command as restarts  # noqa: PLC0415

                return restarts.run_attempts(
                    spec, world, chosen, environ, scope=scope, out=out, first=setup.horovod
                )
            options = _options(chosen, output_dir=out, keep_dir=out)
            return _finish(execute(launch, options, scope))
        finally:
            if not chosen.log_dir:
                _remove(error_dir)  # on every path, errors included


def _platform(chosen: Settings, environ: dict[str, str], host: str) -> Platform | None:
    """The platform `--hosts-from` names or `auto` finds (launcher.platforms.detect), or None
    when that is this host alone: `run` then goes on exactly as before platforms existed.
    Raises `PlatformError` (exit 2) naming the platform and the variable that is wrong."""
    if chosen.hosts_from == "auto" and not _maybe_platform(environ):
        return None  # the common case decided without importing the platforms (12 modules)
    from launcher.platforms import detect, model  # noqa: PLC0415 - keeps `run` start-up light

    kind = detect.parse_kind(chosen.hosts_from)
    found = detect.detect(kind, environ, _read_text, host)
    if found.kind is model.Kind.STATIC:
        return None
    return found


# The variables `launcher.platforms.detect`'s `auto` looks for (tests/unit/test_platforms.py
# checks that the two agree), and the SageMaker tree's resource config.
PLATFORM_MARKERS = ("SLURM_JOB_ID", "PET_NNODES", "MASTER_ADDR", "JOB_COMPLETION_INDEX")


def _maybe_platform(environ: Mapping[str, str]) -> bool:
    """Whether `auto` could find a platform other than this host alone."""
    if any(environ.get(name) for name in PLATFORM_MARKERS):
        return True
    # Not `sagemaker.config.base_dir_from`: a plain `launcher run` imports no SageMaker module.
    base = environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml"
    return os.path.exists(f"{base}/input/config/resourceconfig.json")  # noqa: PTH110


def _read_text(path: str) -> str | None:
    """A small file's text, None when it does not exist (the platforms' one file read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # noqa: PTH123
            return f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LauncherError(f"cannot read {path}: {e.strerror}") from None


def doctor(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`launcher doctor`: the findings about this host; 0 when the backend has what it needs."""
    from launcher.doctor import checks as doctor  # noqa: PLC0415 - keeps `train` start-up light

    return doctor.main(environ, as_json=args.json, backend=args.backend)
