"""The `mpi` backend's job flow on each host (DESIGN.md decision 4).

Every host meets the others over the control channel first (as for every backend). Then:

- **follower**: writes its own rank environment (`mpi.host_payload`), starts a per-job sshd
  (a `procs.Helper`), checks it locally and reports `{addr, port, hostkey}` to the leader.
  It supervises nothing else: it waits on the control channel for the job's result (no
  `/tmp/done` polling, no fixed sleeps), stops sshd, writes the job's result and exits with the
  job's code. A SIGTERM reaches the leader as a failure, which stops mpirun everywhere.
- **leader**: waits for every follower's report until the peer deadline, proves each one with
  a real SSH login, then runs `mpirun` (`mpi.command`) as its single supervised process. When
  mpirun ends, its result is the job's: the leader tells every follower (RESULT or ABORT) at
  once. A follower whose sshd never comes up fails the job with exit 3, naming the host.
- **one host**: mpirun alone, no sshd and no ssh.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher import net, procs, settings
from launcher.app import Result, RunOptions, execute, finish
from launcher.containment import Containment
from launcher.control.follower import Follower, Member
from launcher.control.leader import Leader
from launcher.control.messages import MPI_PUBKEY_KEY
from launcher.errors import (
    ConfigError,
    LauncherError,
    StopRequested,
    signal_exit_code,
    signal_name,
)
from launcher.events import Events, JobDecided, RankExited, RunState, SignalReceived
from launcher.mpi import command as mpi
from launcher.mpi import ssh as sshd
from launcher.mpi import sshcheck
from launcher.mpi.rank import ENV_FILE_VAR
from launcher.plan import LaunchPlan, RankSpec
from launcher.settings import Sources
from launcher.supervise import STOPPING, forwarding_signals

log = logging.getLogger("launcher")

PLAN_KEY = MPI_PUBKEY_KEY  # the PLAN field with the leader's per-job client public key
SSHD_START_TIMEOUT_S = 30.0  # a follower's own sshd must answer within this (or the deadline)
SSHD_STOP_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class MpiSettings:
    num_processes: int | None
    custom_options: str
    ssh_port: int  # 0: each follower picks a free port
    sshd: str  # "" finds sshd
    mpirun: str


def mpi_settings(chosen: settings.Settings | Sources) -> MpiSettings:
    """The `mpi` backend's settings: the rows of `settings.SETTINGS` for `mpi`, which the
    command's `settings.resolve` already read and checked with every other setting.

    Given `Sources` instead, those rows alone are read here, whatever backend the sources
    name; a bad value raises `ConfigError` naming its source and key.
    """
    rows = [s for s in settings.SETTINGS if s.only is settings.Backend.MPI]
    if isinstance(chosen, Sources):
        values = {s.name: chosen.read(s) for s in rows}
    else:
        values = {s.name: getattr(chosen, s.name) for s in rows}
    mpirun: str = values["mpirun"]
    return MpiSettings(
        num_processes=values["mpi_num_processes"],
        custom_options=values["mpi_options"],
        ssh_port=values["ssh_port"],
        sshd=values["sshd"],
        # An absolute mpirun makes Open MPI pass its prefix to the remote orted (PATH and
        # LD_LIBRARY_PATH), so images with Open MPI outside the default paths work.
        mpirun=shutil.which(mpirun) or mpirun,
    )


@dataclass(frozen=True, slots=True)
class SshKeys:
    """This host's per-job folder and key, made before the meeting (keygen takes ~10 ms)."""

    folder: Path
    pubkey: str  # the leader's client key, or a follower's host key

    @classmethod
    def create(cls, leader: bool, environ: dict[str, str]) -> SshKeys:
        folder = sshd.private_dir("launcher-mpi-")
        # Removed by `run` at the end of the job; this covers a job that ends before it (the
        # hosts never met, a bad configuration).
        atexit.register(shutil.rmtree, folder, True)
        name = "id_ed25519" if leader else "ssh_host_ed25519_key"
        try:
            return cls(folder, sshd.keygen(folder / name, "launcher-mpi", environ))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def plan_extra(self) -> dict[str, Any]:
        return {PLAN_KEY: self.pubkey}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class MpiRun:
    """What every host's flow needs. `launch` is `plan.build`'s plan for this host."""

    launch: LaunchPlan
    settings: MpiSettings
    options: RunOptions
    scope: Containment
    events: Events
    output_dir: Path | None
    peer_timeout_s: float
    environ: dict[str, str]
    python: str
    instance_type: str = ""


def leader_plan(run: MpiRun, ssh_config: str, payload_file: str) -> LaunchPlan:
    """The leader's plan: one supervised process, mpirun (pure)."""
    launch = run.launch
    job = launch.job
    hosts = launch.world.hosts
    multi = len(hosts) > 1
    request = mpi.MpiRequest(
        # mpirun runs on the leader: its own entry is "localhost", which Open MPI always starts
        # without ssh, even where the leader's name does not resolve (`launcher local`).
        hosts=(("localhost", hosts[0].slots), *((h.name, h.slots) for h in hosts[1:])),
        program=mpi.mpi4py_program(job.command, run.python),
        python=run.python,
        interface=job.interface if multi else "",
        num_processes=run.settings.num_processes,
        custom_options=run.settings.custom_options,
        ssh_config=ssh_config if multi else "",
        instance_type=run.instance_type,
        nccl_debug=run.environ.get("NCCL_DEBUG") or mpi.DEFAULT_NCCL_DEBUG,
        mpirun=run.settings.mpirun,
    )
    try:
        for h in hosts[1:]:
            sshd.check_name(h.name)
        argv = mpi.command(request)
    except mpi.OptionsError as e:
        raise ConfigError(
            "MPI options",
            "sagemaker_mpi_custom_mpi_options",
            str(e),
            hint="the options are split like a shell command line and every item must be an"
            " mpirun option, e.g. -x NCCL_DEBUG=INFO",
        ) from None
    except ValueError as e:
        raise LauncherError(
            f"cannot build the mpirun command: {e}", hint="check sagemaker_mpi_custom_mpi_options"
        ) from None
    env = {ENV_FILE_VAR: payload_file} if payload_file else {}
    spec = RankSpec(0, 0, launch.world.host.name, tuple(argv), job.cwd, env, "")
    # The job's command is mpirun now: that is what the launcher's own log lines show.
    return LaunchPlan(replace(job, command=spec.argv), launch.world, (spec,), launch.base_env)


def run(run: MpiRun, member: Member | None, keys: SshKeys | None) -> tuple[int, str]:
    """This host's part of an MPI job: the job's (exit code, root cause), followers too.

    Raises `SshdUnreachable` (exit 3) when a follower's sshd never comes up, `JobAborted` when
    another host aborted the job first, `LauncherError` for bad MPI options.
    """
    try:
        if member is None or keys is None:
            folder = sshd.private_dir("launcher-mpi-")
            try:
                return _run_mpirun(run, None, folder, [])
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if isinstance(member, Leader):
            return _lead(run, member, keys)
        assert isinstance(member, Follower)
        return _follow(run, member, keys)
    finally:
        if keys is not None:
            keys.remove()


# --- the leader -------------------------------------------------------------------------------


def _lead(run: MpiRun, leader: Leader, keys: SshKeys) -> tuple[int, str]:
    masters: dict[str, procs.Helper] = {}
    try:
        peers = sshcheck.await_sshd(
            run.events,
            run.launch.world,
            keys.folder,
            masters,
            deadline=time.monotonic() + run.peer_timeout_s,
            scope=run.scope,
            environ=run.environ,
        )
        return _run_mpirun(run, leader, keys.folder, peers)
    except LauncherError as e:  # sshd never came up, mpirun cannot start, bad MPI options
        leader.failed(e.exit_code, str(e))  # every follower learns it (a no-op if decided)
        raise
    finally:
        for master in masters.values():
            master.close(SSHD_STOP_GRACE_S)  # for good: a check still retrying cannot restart it


def _run_mpirun(
    run: MpiRun, leader: Leader | None, folder: Path, peers: list[sshd.SshPeer]
) -> tuple[int, str]:
    payload = folder / "host-env.json"
    sshd.write_private(payload, json.dumps(mpi.host_payload(run.launch)))
    config = str(folder / "ssh_config") if peers else ""
    launch = leader_plan(run, config, str(payload))
    # --tag-output already names each line's rank; mpirun's own lines pass unchanged.
    options = replace(run.options, output_dir=None, prefix=False)
    result = execute(launch, options, run.scope, events=run.events)
    hosts = [(h.name, h.slots) for h in run.launch.world.hosts]
    code, text = _outcome(result, hosts)
    if leader is not None:
        if code == 0:
            code, reason = leader.conclude()
            text = f"{reason}\n" if code else ""
        else:
            leader.failed(code, text.splitlines()[0])
    if run.output_dir is not None:
        finish(run.output_dir, code, text)
    return code, text.split("\n", 1)[0]


def _outcome(result: Result, hosts: list[tuple[str, int]]) -> tuple[int, str]:
    """(exit code, failure text) with the failed MPI rank as the root cause, when mpirun says
    which one it was (the generic report would blame mpirun, the only process we started)."""
    if result.exit_code == 0:
        return 0, ""
    text = result.failure_text
    cause = mpi.root_cause(text, hosts) if result.outcome.state is RunState.FAILED else None
    if cause:
        rest = text.split("\n", 1)[1] if "\n" in text else ""
        text = f"{cause}\n" + rest.replace(" rank 0's stderr", " mpirun's stderr")
    return result.exit_code, text


# --- a follower -------------------------------------------------------------------------------


def _follow(run: MpiRun, follower: Follower, keys: SshKeys) -> tuple[int, str]:
    host = run.launch.world.host.name
    with contextlib.ExitStack() as stack:  # closes sshd on the way out, by any path
        try:
            server = _start_sshd(run, follower, keys, stack)
        except StopRequested as e:  # stopped while sshd started: the leader learns why
            follower.failed(e.exit_code, str(e))
            raise
        except (LauncherError, OSError) as e:
            error = sshcheck.SshdUnreachable(f"sshd on {host} did not come up: {e}")
            follower.failed(error.exit_code, str(error))  # the leader fails the job at once
            raise error from None
        code = _wait_for_result(run, follower, server)
    reason = follower.decision.reason
    if run.output_dir is not None:
        finish(run.output_dir, code, f"{reason}\n")
    return code, reason


def _start_sshd(
    run: MpiRun, follower: Follower, keys: SshKeys, stack: contextlib.ExitStack
) -> procs.Helper:
    """Start this host's sshd, check it answers, report it to the leader; returns it running.
    It is registered on `stack` before it starts, so the stack's exit closes it, however this
    ends. Raises `LauncherError`/`OSError` saying why it cannot."""
    began = time.monotonic()
    world = run.launch.world
    plan = follower.plan
    pubkey = plan.mpi_pubkey if plan is not None else None  # its form checked by decode
    if pubkey is None:
        raise LauncherError(
            f"the leader's plan has no ssh key ({PLAN_KEY}): is it running the mpi backend?",
            hint="run the same ml-launcher version and backend on every host",
        )
    folder = keys.folder
    addr = net.local_address(world.master_addr, 9)
    port = run.settings.ssh_port or net.free_port(addr)
    sshd.write_private(folder / "host-env.json", json.dumps(mpi.host_payload(run.launch)))
    sshd.write_private(folder / "authorized_keys", f"{pubkey}\n")
    config = folder / "sshd_config"
    # The job's marker too: sshd's sessions (orted, the ranks) get no environment of ours, and
    # the watchdog finds them by it when this launcher is killed on a host without a cgroup.
    session = {
        **sshd.session_env(run.environ, folder / "host-env.json"),
        **run.scope.env(),
    }
    text = sshd.sshd_config(folder, addr, port, sshd.current_user(), session)
    sshd.write_private(config, text)
    binary = sshd.sshd_binary(run.settings.sshd)
    sshd.privsep_dir()
    argv = sshd.sshd_argv(binary, config)
    server = procs.Helper(
        f"{world.host.name} sshd", argv, folder, run.environ, run.events, scope=run.scope
    )
    stack.callback(server.close, SSHD_STOP_GRACE_S)
    server.start()
    deadline = time.monotonic() + min(run.peer_timeout_s, SSHD_START_TIMEOUT_S)
    if not sshd.poll_until(lambda: net.says_ssh(addr, port, 0.5), deadline, alive=server.running):
        if server.running():
            raise LauncherError(
                f"no SSH banner on {addr}:{port} within {deadline - began:.0f} s",
                hint="check that sshd can start on that host and that its port is free"
                " (LAUNCHER_SSH_PORT)",
            )
        raise LauncherError(
            f"it exited: {server.log_tail()[-300:]}",
            hint="sshd's own message is above; check that /run/sshd can be created and that"
            " LAUNCHER_SSH_PORT, when set, is free",
        )
    follower.send(sshd.SshPeer(world.host.name, addr, port, keys.pubkey).message())
    log.info(
        "sshd ready on %s:%d in %.3f s; waiting for the job to end",
        addr,
        port,
        time.monotonic() - began,
    )
    return server


def _wait_for_result(run: MpiRun, follower: Follower, server: procs.Helper) -> int:
    """Block until the job's result is known; a stop signal or sshd's death fails the job."""
    host = run.launch.world.host.name

    def decided() -> None:
        follower.decision.wait()
        run.events.put(JobDecided())

    threading.Thread(target=decided, daemon=True, name="mpi-result").start()
    with forwarding_signals(run.events):
        while not follower.decision.decided:
            match run.events.get():
                case SignalReceived(signum=signum) if signum in STOPPING:
                    reason = f"the job was stopped by {signal_name(signum)} on {host}"
                    follower.failed(signal_exit_code(signum), reason)
                case RankExited(returncode=returncode):
                    tail = server.log_tail()[-300:]
                    follower.failed(1, f"sshd on {host} exited with {returncode}: {tail}")
    return follower.decision.exit_code
