"""Lay out a multi-host world: run the rendezvous as leader or follower and build the `World`.

The leader and node order follow SageMaker's master election (the distribution hosts, in
order). The job token is `LAUNCHER_JOB_TOKEN` when set (a secret); otherwise it is derived from
the job name and the host list, which stops accidental cross-job joins but is not a secret.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher import wire
from launcher.errors import LauncherError
from launcher.leader import Leader
from launcher.plan import HostSlots, World
from launcher.rendezvous import Follower, Member

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
    # Backend entries the leader adds to the PLAN (MPI: its ssh key; horovod: the port of its
    # rendezvous server, under HOROVOD_PORT_KEY, which becomes World.horovod_rendezvous).
    plan_extra: Mapping[str, Any] = field(default_factory=dict)


HOROVOD_PORT_KEY = "horovod_port"


def job_token(request: MeetRequest) -> str:
    if request.token:
        return request.token
    return hashlib.sha256(f"{request.job_name}\0{','.join(request.hosts)}".encode()).hexdigest()


def meet(
    request: MeetRequest, events: queue.SimpleQueue[object], free_port: int
) -> tuple[World, Member]:
    """Block until every host has joined; the world and this host's channel member.

    Raises `PeersUnreachable` (exit 3) at the peer deadline and `JobAborted` when the leader
    refuses the job; either way every other host learns it too.
    """
    key = wire.job_key(job_token(request))
    deadline = time.monotonic() + request.peer_timeout_s
    run_id = hashlib.sha256(key + str(time.time()).encode()).hexdigest()[:12]
    if request.host == request.hosts[0]:
        leader = Leader(
            key=key,
            host=request.host,
            heartbeat_timeout_s=request.heartbeat_timeout_s,
            events=events,
            expected=request.hosts,
            port=request.control_port,
        )
        try:
            port = leader.start()
        except OSError as e:
            raise LauncherError(
                f"cannot listen on the control port {request.control_port}: {e}",
                hint="another process holds it; set LAUNCHER_CONTROL_PORT on every host",
            ) from None
        log.info("leading %d hosts on control port %d", len(request.hosts), port)
        began, cpu = time.monotonic(), time.process_time()
        try:
            peers = leader.wait_for_peers(deadline, request.slots)
        except BaseException:
            leader.close()
            raise
        master_port = request.master_port or free_port
        layout = [[p.host, p.slots] for p in peers]
        leader.announce(
            {**request.plan_extra, "hosts": layout, "master_port": master_port, "run_id": run_id}
        )
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
        hvd_port = request.plan_extra.get(HOROVOD_PORT_KEY)
        hvd = (peers[0].addr, int(hvd_port)) if hvd_port else None
        return World(hosts, 0, peers[0].addr, master_port, run_id, hvd), leader
    follower = Follower(
        key=key,
        host=request.host,
        heartbeat_timeout_s=request.heartbeat_timeout_s,
        events=events,
        leader=request.leader_addr or request.hosts[0],
        port=request.control_port,
    )
    try:
        plan, leader_addr = follower.join(deadline, request.slots)
    except BaseException:
        follower.close()
        raise
    hosts = tuple(HostSlots(str(h), int(n)) for h, n in plan["hosts"])
    node_rank = [h.name for h in hosts].index(request.host)
    hvd_port = plan.get(HOROVOD_PORT_KEY)
    hvd = (leader_addr, int(hvd_port)) if hvd_port else None
    world = World(hosts, node_rank, leader_addr, int(plan["master_port"]), str(plan["run_id"]), hvd)
    return world, follower
