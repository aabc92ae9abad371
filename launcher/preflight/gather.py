"""Every host's preflight rows to the leader, the judged table back to every host.

A follower sends its rows (`PreflightReport`) and waits for the leader's `PreflightVerdict`;
the leader waits for one report per follower, judges the whole (`thresholds.judge`) and
broadcasts the verdict, which every host then reports the same way. Both arrive through the
supervisor's event queue as `events.PeerMessage` (nothing else reads it before the ranks
start). A host that sends nothing by the deadline gets a FAIL row naming it; a host lost or
failed meanwhile arrives as a `RemoteAbort` and ends the preflight with `JobAborted`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence

from launcher.control.follower import Follower, Member
from launcher.control.leader import Leader
from launcher.control.messages import (
    PREFLIGHT_FAILED,
    PreflightReport,
    PreflightVerdict,
)
from launcher.errors import JobAborted
from launcher.events import Event, Events, PeerMessage, RemoteAbort
from launcher.preflight.rows import FAIL, Row, failures
from launcher.preflight.thresholds import Policy, judge

log = logging.getLogger("launcher")

WAIT_STEP_S = 0.5


def _next(events: Events, deadline: float, kept: list[Event]) -> PeerMessage | None:
    """The next `PeerMessage` before `deadline` (None at the deadline). Raises `JobAborted`
    for a `RemoteAbort`; any other event is kept for the supervisor (`kept`)."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=min(left, WAIT_STEP_S))
        except queue.Empty:
            continue
        if isinstance(event, RemoteAbort):
            raise JobAborted(event.reason, exit_code=event.exit_code)
        if isinstance(event, PeerMessage):
            return event
        kept.append(event)
    return None


def lead(
    leader: Leader,
    hosts: Sequence[str],
    own: Sequence[Row],
    *,
    policy: Policy,
    events: Events,
    timeout_s: float,
) -> tuple[int, list[Row]]:
    """On the leader: gather every follower's rows, judge, broadcast; (code, judged rows)."""
    deadline = time.monotonic() + timeout_s
    reports: dict[str, tuple[Row, ...]] = {}
    waiting = set(hosts[1:])
    kept: list[Event] = []
    try:
        while waiting:
            got = _next(events, deadline, kept)
            if got is None:
                break
            if isinstance(got.message, PreflightReport) and got.host in waiting:
                reports[got.host] = got.message.rows
                waiting.discard(got.host)
    finally:
        for event in kept:
            events.put(event)
    rows = list(own)
    for host in hosts[1:]:
        rows.extend(reports.get(host, ()))
    for host in sorted(waiting):
        rows.append(
            Row(
                "preflight.report",
                host,
                "missing",
                "",
                f"within {timeout_s:g} s",
                FAIL,
                detail="the host sent no preflight result",
            )
        )
    judged = judge(rows, policy)
    code = PREFLIGHT_FAILED if failures(judged) else 0
    leader.broadcast(PreflightVerdict(code, tuple(judged)))
    return code, judged


def follow(
    follower: Follower, own: Sequence[Row], events: Events, timeout_s: float
) -> tuple[int, list[Row]]:
    """On a follower: send this host's rows, wait for the leader's verdict; (code, rows).
    Raises `JobAborted` when the leader's verdict does not come within `timeout_s`."""
    follower.send(PreflightReport(tuple(own)))
    deadline = time.monotonic() + timeout_s
    kept: list[Event] = []
    try:
        while True:
            got = _next(events, deadline, kept)
            if got is None:
                raise JobAborted(
                    f"no preflight verdict from the leader {follower.leader} within {timeout_s:g} s"
                )
            if isinstance(got.message, PreflightVerdict):
                return got.message.code, list(got.message.rows)
    finally:
        for event in kept:
            events.put(event)


def exchange(
    member: Member,
    hosts: Sequence[str],
    own: Sequence[Row],
    *,
    policy: Policy,
    events: Events,
    timeout_s: float,
) -> tuple[int, list[Row]]:
    """`lead` or `follow`, by the member's role."""
    if isinstance(member, Leader):
        return lead(member, hosts, own, policy=policy, events=events, timeout_s=timeout_s)
    assert isinstance(member, Follower)
    return follow(member, own, events, timeout_s)
