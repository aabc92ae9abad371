"""Lay out a multi-host world: run the rendezvous as leader or follower and build the `World`.

The leader and node order follow SageMaker's master election (the distribution hosts, in
order). The job token is `LAUNCHER_JOB_TOKEN` when set (a secret); otherwise it is derived from
the job name and the host list, which stops accidental cross-job joins but is not a secret.
When the hosts reach the leader at a loopback address (`launcher local`), every host is on
this machine and the leader listens on that address only.

Stop signals. `meet` waits on an `Interrupt` the caller owns; the caller's handler for SIGTERM,
SIGINT (and SIGHUP) posts the signal to it (`interrupt.post(signum)`, safe in a handler). The
meeting then ends at once: this host tells the others (the leader ABORTs every connected host,
naming itself and the signal; a follower sends FAILED to the leader, which does the same) and
`meet` raises `MeetStopped`, whose exit code is 128+N and whose message is the root cause for
output/failure. The other hosts' `meet` raise `JobAborted` with the same code and cause.
A handler may instead raise `errors.StopRequested` in the waiting thread (as
`supervise.raising_signals` does): `meet` then does the same, as far as the interrupted code
allows (posting is the safer way: nothing is interrupted mid-send).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.control import messages, wire
from launcher.control.follower import (
    STOP_LINGER_S,
    Follower,
    Interrupt,
    MeetStopped,
    Member,
    Stopped,
)
from launcher.control.leader import Leader
from launcher.control.messages import Plan
from launcher.errors import LauncherError, StopRequested, UsageError
from launcher.events import Events
from launcher.plan import HostSlots, World

__all__ = [
    "HOROVOD_PORT_KEY",
    "MPI_PUBKEY_KEY",
    "Interrupt",
    "MeetRequest",
    "MeetStopped",
    "job_token",
    "listen_address",
    "meet",
]

log = logging.getLogger("launcher")


@dataclass(frozen=True, slots=True)
class MeetRequest:
    host: str
    hosts: tuple[str, ...]  # node order; hosts[0] leads
    slots: int
    control_port: int
    master_port: int  # 0: the leader picks a free one
    peer_timeout_s: float
    heartbeat_timeout_s: float
    job_name: str
    token: str | None
    leader_addr: str = ""  # how to reach the leader, when its name does not resolve
    # Backend fields the leader adds to the PLAN, by their `messages.Plan` names (MPI: its ssh
    # key under MPI_PUBKEY_KEY; horovod: the port of its rendezvous server under
    # HOROVOD_PORT_KEY, which becomes World.horovod_rendezvous). `messages.Plan` checks them.
    plan_extra: Mapping[str, Any] = field(default_factory=dict)
    # Whole-job restarts: the attempt the leader's PLAN starts (followers take it from the PLAN).
    attempt: int = 0


HOROVOD_PORT_KEY = messages.HOROVOD_PORT_KEY
MPI_PUBKEY_KEY = messages.MPI_PUBKEY_KEY


def job_token(request: MeetRequest) -> str:
    if request.token:
        return request.token
    return hashlib.sha256(f"{request.job_name}\0{','.join(request.hosts)}".encode()).hexdigest()


def listen_address(request: MeetRequest) -> str:
    """Where the leader listens: the loopback address the hosts reach it at, if they reach it
    at one (every host is on this machine; nothing else may connect), else "" (everywhere)."""
    try:
        addr = ipaddress.ip_address(request.leader_addr)
    except ValueError:
        return ""
    return str(addr) if addr.is_loopback else ""


def meet(
    request: MeetRequest,
    events: Events,
    free_port: int,
    interrupt: Interrupt | None = None,
) -> tuple[World, Member]:
    """Block until every host has joined; the world and this host's channel member.

    Raises `PeersUnreachable` (exit 3) at the peer deadline and `JobAborted` when the leader
    refuses the job or another host failed or was stopped meanwhile; either way every other
    host learns it too. Raises `MeetStopped` (exit 128+N) once a signal N is posted to
    `interrupt`, after telling the other hosts.
    """
    interrupt = interrupt if interrupt is not None else Interrupt()
    for host in request.hosts:  # each goes over the channel, in a HELLO or the PLAN
        try:
            messages.host_name(host)
        except ValueError as e:
            raise UsageError(
                f"host {host!r:.80} cannot be one of a multi-host job's hosts: it {e}",
                hint="use plain host names such as algo-1",
            ) from None
    key = wire.job_key(job_token(request))
    deadline = time.monotonic() + request.peer_timeout_s
    run_id = hashlib.sha256(key + str(time.time()).encode()).hexdigest()[:12]
    if request.host == request.hosts[0]:
        return _lead(
            request,
            events,
            free_port=free_port,
            interrupt=interrupt,
            key=key,
            deadline=deadline,
            run_id=run_id,
        )
    return _follow(request, events, interrupt, key, deadline)


def _stopped(member: Member, stop: Stopped | StopRequested) -> MeetStopped:
    """Tell the other hosts, close; the error `meet` raises.

    `stop` is `Stopped` when the signal was posted to the `Interrupt`, or a `StopRequested`
    that a signal handler raised in this thread (`supervise.raising_signals`): either way the
    others learn it."""
    member.stopped(stop.signum)
    return MeetStopped(stop.signum, member.host)


def _lead(
    request: MeetRequest,
    events: Events,
    *,
    free_port: int,
    interrupt: Interrupt,
    key: bytes,
    deadline: float,
    run_id: str,
) -> tuple[World, Member]:
    """`meet` on the first host: listen, wait for every HELLO, send the PLAN."""
    extra = dict(request.plan_extra)
    horovod_port, mpi_pubkey = extra.pop(HOROVOD_PORT_KEY, None), extra.pop(MPI_PUBKEY_KEY, None)
    preflight_port = extra.pop(messages.PREFLIGHT_PORT_KEY, None)
    if extra:  # a bug of the caller: found before any host is told anything
        raise ValueError(f"the PLAN has no field(s) {sorted(extra)}")
    leader = Leader(
        key=key,
        host=request.host,
        heartbeat_timeout_s=request.heartbeat_timeout_s,
        events=events,
        interrupt=interrupt,
        expected=request.hosts,
        port=request.control_port,
        bind=listen_address(request),
    )
    try:
        try:
            port = leader.start()
        except OSError as e:
            raise LauncherError(
                f"cannot listen on the control port {request.control_port}: {e}",
                hint="another process holds it; set LAUNCHER_CONTROL_PORT on every host",
            ) from None
        where = f"{leader.bind}:{port}" if leader.bind else f"port {port}"
        log.info("leading %d hosts on control %s", len(request.hosts), where)
        began, cpu = time.monotonic(), time.process_time()
        peers = leader.wait_for_peers(deadline, request.slots)
        master_port = request.master_port or free_port
        plan = Plan(
            hosts=tuple((p.host, p.slots) for p in peers),
            master_port=master_port,
            run_id=run_id,
            horovod_port=horovod_port,
            mpi_pubkey=mpi_pubkey,
            preflight_port=preflight_port,
            attempt=request.attempt,
        )
        leader.announce(plan)
        interrupt.check()  # a signal between the last wait and here still counts
    except (Stopped, StopRequested) as stop:
        raise _stopped(leader, stop) from None
    except BaseException:
        # Every host was told the verdict (ABORT): let them read it before the sockets close.
        leader.close(linger=STOP_LINGER_S if leader.decision.decided else 0.0)
        raise
    # The leader's own cost (CPU of this process while meeting: accepts, frames, the plan)
    # as opposed to the wall time, which is mostly waiting for the last host to start.
    cpu_ms = (time.process_time() - cpu) * 1000
    log.info(
        "plan sent to %d hosts %.3f s after leading; rendezvous CPU %.1f ms (%.3f ms/host)",
        len(peers),
        time.monotonic() - began,
        cpu_ms,
        cpu_ms / len(peers),
    )
    hosts = tuple(HostSlots(p.host, p.slots, p.addr) for p in peers)
    hvd = (peers[0].addr, plan.horovod_port) if plan.horovod_port is not None else None
    return World(hosts, 0, peers[0].addr, master_port, run_id, hvd), leader


def _follow(
    request: MeetRequest,
    events: Events,
    interrupt: Interrupt,
    key: bytes,
    deadline: float,
) -> tuple[World, Member]:
    """`meet` on every other host: join the leader, take its PLAN."""
    follower = Follower(
        key=key,
        host=request.host,
        heartbeat_timeout_s=request.heartbeat_timeout_s,
        events=events,
        interrupt=interrupt,
        leader=request.leader_addr or request.hosts[0],
        port=request.control_port,
    )
    try:
        plan, leader_addr = follower.join(deadline, request.slots)
        interrupt.check()
        world = _world(plan, request.host, leader_addr)
    except (Stopped, StopRequested) as stop:
        raise _stopped(follower, stop) from None
    except BaseException:
        follower.close()  # a follower that leaves after the PLAN is lost: the job aborts
        raise
    return world, follower


def _world(plan: Plan, host: str, leader_addr: str) -> World:
    """The `World` a follower's PLAN describes (checked by `messages.decode`: distinct host
    names, slots, ports). Raises `LauncherError` when the plan does not name this host."""
    names = [name for name, _ in plan.hosts]
    if host not in names:
        raise LauncherError(
            f"the leader's plan does not name this host {host} (it names {len(names)} hosts:"
            f" {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})",
            hint="give every host the same host list (resourceconfig.json)",
        )
    hosts = tuple(HostSlots(name, slots) for name, slots in plan.hosts)
    hvd = (leader_addr, plan.horovod_port) if plan.horovod_port is not None else None
    return World(hosts, names.index(host), leader_addr, plan.master_port, plan.run_id, hvd)
