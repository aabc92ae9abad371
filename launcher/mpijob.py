"""The `mpi` backend's job flow on each host (DESIGN.md decision 4).

Every host meets the others over the control channel first (as for every backend). Then:

- **follower**: writes its own rank environment (`mpi.host_payload`), starts a per-job sshd
  (`sshd.SshdProcess`), checks it locally and reports `{addr, port, hostkey}` to the leader.
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

import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher import mpi, sshd
from launcher.app import Result, RunOptions, execute, finish
from launcher.errors import EXIT_PEERS, JobAborted, LauncherError, signal_exit_code, signal_name
from launcher.leader import Leader
from launcher.mpirank import ENV_FILE_VAR
from launcher.plan import LaunchPlan, RankSpec
from launcher.procs import RankExited, Watchdog
from launcher.rendezvous import Follower, Member, PeerMessage
from launcher.settings import Sources
from launcher.supervise import STOPPING, RemoteAbort, RunState, SignalReceived, forwarding_signals

log = logging.getLogger("launcher")

PLAN_KEY = "mpi_pubkey"  # the PLAN entry with the leader's per-job client public key
SSHD_START_TIMEOUT_S = 30.0  # a follower's own sshd must answer within this (or the deadline)
SSHD_STOP_GRACE_S = 2.0


class SshdUnreachable(LauncherError):
    """A follower's sshd never became usable; names the host and why. Exit 3 (peers)."""

    exit_code = EXIT_PEERS


@dataclass(frozen=True, slots=True)
class MpiSettings:
    num_processes: int | None
    custom_options: str
    ssh_port: int  # 0: each follower picks a free port
    sshd: str  # "" finds sshd
    mpirun: str


def _count(value: Any) -> int:
    if isinstance(value, bool) or int(value) < 1:
        raise ValueError("must be a count >= 1")
    return int(value)


def _port(value: Any) -> int:
    if not 0 <= int(value) <= 65535:
        raise ValueError("must be a port number 0-65535")
    return int(value)


def mpi_settings(sources: Sources) -> MpiSettings:
    """MPI settings with the usual precedence (environment > `sagemaker_*` hyperparameter)."""
    return MpiSettings(
        num_processes=sources.pick(
            "mpi-num-processes",
            "LAUNCHER_MPI_NUM_PROCESSES",
            "sagemaker_mpi_num_processes",
            _count,
            None,
        ),
        custom_options=sources.pick(
            "mpi-options", "LAUNCHER_MPI_OPTIONS", "sagemaker_mpi_custom_mpi_options", str, ""
        ),
        ssh_port=sources.pick("ssh-port", "LAUNCHER_SSH_PORT", None, _port, 0),
        sshd=sources.pick("sshd", "LAUNCHER_SSHD", None, str, ""),
        mpirun=sources.pick("mpirun", "LAUNCHER_MPIRUN", None, str, "mpirun"),
    )


@dataclass(frozen=True, slots=True)
class SshKeys:
    """This host's per-job folder and key, made before the meeting (keygen takes ~10 ms)."""

    folder: Path
    pubkey: str  # the leader's client key, or a follower's host key

    @classmethod
    def create(cls, leader: bool, environ: dict[str, str]) -> SshKeys:
        folder = sshd.private_dir("launcher-mpi-")
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
    watchdog: Watchdog
    events: queue.SimpleQueue[object]
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
        # One host needs no names (and no ssh): mpirun starts the ranks itself.
        hosts=tuple((h.name, h.slots) for h in hosts)
        if multi
        else (("localhost", hosts[0].slots),),
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
        argv = mpi.command(request)
    except ValueError as e:
        raise LauncherError(f"sagemaker_mpi_custom_mpi_options: {e}") from None
    env = {ENV_FILE_VAR: payload_file} if payload_file else {}
    spec = RankSpec(0, 0, launch.world.host.name, tuple(argv), job.cwd, env, "")
    # The job's command is mpirun now: that is what the launcher's own log lines show.
    return LaunchPlan(replace(job, command=spec.argv), launch.world, (spec,), launch.base_env)


def run(run: MpiRun, member: Member | None, keys: SshKeys | None) -> int:
    """This host's part of an MPI job; returns the job's exit code (followers too).

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


@dataclass(frozen=True, slots=True)
class _Checked:
    host: str
    ok: bool
    detail: str


def _lead(run: MpiRun, leader: Leader, keys: SshKeys) -> int:
    try:
        peers = _await_sshd(run, leader, keys)
    except LauncherError as e:
        leader.failed(e.exit_code, str(e))  # every follower learns it (a no-op if decided)
        raise
    return _run_mpirun(run, leader, keys.folder, peers)


def _await_sshd(run: MpiRun, leader: Leader, keys: SshKeys) -> list[sshd.SshPeer]:
    """Every follower's sshd, reported and proven with a login, before the peer deadline."""
    world = run.launch.world
    waiting = {h.name for h in world.hosts[1:]}
    started = time.monotonic()
    deadline = started + run.peer_timeout_s
    peers: dict[str, sshd.SshPeer] = {}
    ready: set[str] = set()
    why: dict[str, str] = {}
    while ready != waiting:
        try:
            event = run.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            missing = sorted(waiting - ready)
            details = "; ".join(f"{h}: {why.get(h, 'no sshd report')}" for h in missing)
            raise SshdUnreachable(
                f"sshd on {', '.join(missing)} never became reachable within "
                f"{time.monotonic() - started:.0f} s ({details})",
                hint="check that sshd (openssh-server) runs on every host and that the leader "
                "reaches the followers' job interface; raise LAUNCHER_PEER_TIMEOUT if slow",
            ) from None
        if isinstance(event, RemoteAbort):
            error = JobAborted(event.reason)
            error.exit_code = event.exit_code
            raise error
        if isinstance(event, PeerMessage) and event.message.get("type") == sshd.MESSAGE:
            if event.host not in waiting or event.host in peers:
                continue
            try:
                peer = sshd.peer_from_message(event.host, event.message)
            except ValueError as e:
                raise SshdUnreachable(str(e)) from None
            peers[event.host] = peer
            _write_client(keys.folder, list(peers.values()))
            threading.Thread(
                target=_check, args=(run, keys.folder, peer.host, deadline), daemon=True
            ).start()
        elif isinstance(event, _Checked):
            if not event.ok:
                raise SshdUnreachable(
                    f"cannot log in to {event.host} over ssh: {event.detail}",
                    hint="the host's sshd answered but refused our per-job key or host key",
                )
            ready.add(event.host)
    log.info(
        "ssh to %d host(s) verified %.3f s after the plan", len(ready), time.monotonic() - started
    )
    return [peers[h.name] for h in world.hosts[1:]]


def _write_client(folder: Path, peers: list[sshd.SshPeer]) -> None:
    # known_hosts first: a config naming a host is only ever read with its key in place.
    sshd.write_private(folder / "known_hosts", sshd.known_hosts(peers))
    sshd.write_private(folder / "ssh_config", sshd.client_config(folder, peers))


_FATAL_SSH = ("Permission denied", "Host key verification failed", "IDENTIFICATION HAS CHANGED")


def _check(run: MpiRun, folder: Path, host: str, deadline: float) -> None:
    """Log in to `host` once (retrying transient network errors until the deadline)."""
    delay, detail = 0.05, ""
    while True:
        code, tail = sshd.check_login(folder / "ssh_config", host, run.environ)
        if code == 0:
            run.events.put(_Checked(host, True, ""))
            return
        detail = tail.strip().splitlines()[-1] if tail.strip() else f"ssh exited with {code}"
        if any(marker in tail for marker in _FATAL_SSH) or time.monotonic() + delay >= deadline:
            run.events.put(_Checked(host, False, detail))
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _run_mpirun(run: MpiRun, leader: Leader | None, folder: Path, peers: list[sshd.SshPeer]) -> int:
    payload = folder / "host-env.json"
    sshd.write_private(payload, json.dumps(mpi.host_payload(run.launch)))
    config = str(folder / "ssh_config") if peers else ""
    launch = leader_plan(run, config, str(payload))
    # --tag-output already names each line's rank; mpirun's own lines pass unchanged.
    options = replace(run.options, output_dir=None, prefix=False)
    result = execute(launch, options, run.watchdog, events=run.events)
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
    return code


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


@dataclass(frozen=True, slots=True)
class _Decided:
    """The job's result arrived over the control channel."""


def _follow(run: MpiRun, follower: Follower, keys: SshKeys) -> int:
    world = run.launch.world
    host = world.host.name
    pubkey = follower.plan.get(PLAN_KEY)
    if not isinstance(pubkey, str) or not sshd.HOSTKEY_RE.match(pubkey):
        raise LauncherError(f"the leader's plan has no usable ssh key ({PLAN_KEY}={pubkey!r})")
    began = time.monotonic()
    folder = keys.folder
    addr = sshd.local_address(world.master_addr, 9)
    port = run.settings.ssh_port or sshd.free_port(addr)
    sshd.write_private(folder / "host-env.json", json.dumps(mpi.host_payload(run.launch)))
    sshd.write_private(folder / "authorized_keys", f"{pubkey}\n")
    config = folder / "sshd_config"
    sshd.write_private(config, sshd.sshd_config(folder, addr, port, sshd.current_user()))
    server = sshd.SshdProcess(host, run.events, run.watchdog)
    try:
        server.start(sshd.sshd_binary(run.settings.sshd), config, run.environ)
        deadline = time.monotonic() + min(run.peer_timeout_s, SSHD_START_TIMEOUT_S)
        up = sshd.poll_until(lambda: sshd.says_ssh(addr, port, 0.5), deadline, alive=server.running)
        if not up:
            tail = server.log_tail()
            why = f"it exited: {tail[-300:]}" if not server.running() else "no SSH banner"
            error = SshdUnreachable(f"sshd on {host} ({addr}:{port}) did not come up: {why}")
            follower.failed(error.exit_code, str(error))
            raise error
        follower.send(sshd.SshPeer(host, addr, port, keys.pubkey).message())
        log.info(
            "sshd ready on %s:%d in %.3f s; waiting for the job to end",
            addr,
            port,
            time.monotonic() - began,
        )
        code = _wait_for_result(run, follower, server)
    finally:
        server.stop(SSHD_STOP_GRACE_S)
    reason = follower.decision.reason
    if run.output_dir is not None:
        finish(run.output_dir, code, f"{reason}\n")
    return code


def _wait_for_result(run: MpiRun, follower: Follower, server: sshd.SshdProcess) -> int:
    """Block until the job's result is known; a stop signal or sshd's death fails the job."""
    host = run.launch.world.host.name

    def decided() -> None:
        follower.decision.wait()
        run.events.put(_Decided())

    threading.Thread(target=decided, daemon=True, name="mpi-result").start()
    with forwarding_signals(run.events):
        while not follower.decision.decided:
            event = run.events.get()
            if isinstance(event, SignalReceived) and event.signum in STOPPING:
                name = signal_name(event.signum)
                reason = f"the job was stopped by {name} on {host}"
                follower.failed(signal_exit_code(event.signum), reason)
            elif isinstance(event, RankExited):
                tail = server.log_tail()[-300:]
                follower.failed(1, f"sshd on {host} exited with {event.returncode}: {tail}")
    return follower.decision.exit_code
