"""A live leader on loopback, real followers, and rogue clients (DESIGN.md decision 3).

Leader and followers are the production classes, each in its own threads as in a launcher, so
every byte crosses a real TCP socket. Rogues are raw sockets. Each rogue must be refused (its
socket closed by the leader) and logged, while the real followers still join, get the plan and
finish the job with exit 0. After every test no channel thread may be left running.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from launcher import leader as leader_mod
from launcher import rendezvous, wire
from launcher.channel import Message
from launcher.errors import JobAborted, PeersUnreachable
from launcher.leader import Leader
from launcher.rendezvous import Follower, Peer
from launcher.supervise import RemoteAbort

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-token"
KEY = wire.job_key(TOKEN)
HOSTS = ("algo-1", "algo-2", "algo-3")
HEARTBEAT_S = 0.6
WAIT_S = 10.0  # upper bound for anything that should happen promptly


# --- fixtures and helpers -----------------------------------------------------------------------


class Records(logging.Handler):
    """Collects the launcher's log lines (the `launcher` logger may not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def wait_for(self, *fragments: str, timeout: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if all(f in line for f in fragments):
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no log line with {fragments}; got:\n" + "\n".join(self.lines))


@pytest.fixture
def logs() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("launcher")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def channel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("conn-", "control-"))]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Every connection, accept and heartbeat thread ends once its member is closed."""
    before = set(channel_threads())
    yield
    deadline = time.monotonic() + WAIT_S
    while (left := set(channel_threads()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"


@dataclass
class Job:
    """A leader for HOSTS on an ephemeral loopback port, and the followers started so far."""

    leader: Leader
    followers: dict[str, Follower] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # host -> (plan, addr) or exception
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.leader.port

    def follower(self, host: str, *, token: str = TOKEN, port: int | None = None) -> Follower:
        return Follower(
            key=wire.job_key(token),
            host=host,
            heartbeat_timeout_s=HEARTBEAT_S,
            events=queue.SimpleQueue(),
            leader="localhost",  # resolves to 127.0.0.1 and ::1: both are tried
            port=self.port if port is None else port,
        )

    def join(self, host: str, deadline_s: float = WAIT_S, slots: int = 2) -> Follower:
        """Start a follower's join() in a thread, as its launcher would."""
        member = self.followers[host] = self.follower(host, port=self.leader.port)

        def run() -> None:
            try:
                self.results[host] = member.join(time.monotonic() + deadline_s, slots)
            except Exception as e:  # the test inspects it
                self.results[host] = e

        thread = threading.Thread(target=run, name=f"test-join-{host}", daemon=True)
        thread.start()
        self.threads.append(thread)
        return member

    def joined(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(WAIT_S + 5)
            assert not thread.is_alive(), f"{thread.name} is still waiting"
        return self.results

    def meet(self, deadline_s: float = WAIT_S) -> list[Peer]:
        """The leader's side: wait for the peers and announce a plan, as meet() does."""
        peers = self.leader.wait_for_peers(time.monotonic() + deadline_s, 1)
        layout = [[p.host, p.slots] for p in peers]
        self.leader.announce({"hosts": layout, "master_port": 29500, "run_id": "r1"})
        return peers

    def close(self) -> None:
        for member in self.followers.values():
            member.close()
        self.leader.close()


@pytest.fixture
def job() -> Iterator[Job]:
    leader = Leader(
        key=KEY,
        host="algo-1",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        expected=HOSTS,
        port=0,
    )
    leader.start()
    running = Job(leader)
    yield running
    running.close()


def rogue(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def refused(sock: socket.socket) -> bool:
    """True once the leader has closed this connection (EOF or reset), reading what it sent."""
    try:
        while data := sock.recv(4096):
            assert b"plan" not in data, "a rogue was sent the plan"
    except ConnectionResetError:
        pass
    sock.close()
    return True


def events(q: queue.SimpleQueue[object]) -> list[object]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(q.get_nowait())
    return out


def wait_event(q: queue.SimpleQueue[object], timeout: float = WAIT_S) -> object:
    return q.get(timeout=timeout)


def finish(job: Job) -> None:
    """Both followers reach the exit barrier; every host learns exit 0."""
    codes: dict[str, tuple[int, str]] = {}
    waiters = [
        threading.Thread(target=lambda h=h, f=f: codes.__setitem__(h, f.barrier()), daemon=True)
        for h, f in job.followers.items()
    ]
    for w in waiters:
        w.start()
    assert job.leader.barrier() == (0, "")
    for w in waiters:
        w.join(WAIT_S)
    assert codes == {h: (0, "") for h in job.followers}


# --- the protocol -------------------------------------------------------------------------------


def test_hosts_meet_get_one_plan_and_leave_together(job: Job, logs: Records) -> None:
    job.join("algo-3", slots=4)
    job.join("algo-2", slots=2)
    peers = job.meet()
    assert [(p.host, p.slots) for p in peers] == [("algo-1", 1), ("algo-2", 2), ("algo-3", 4)]
    assert peers[0].addr in ("127.0.0.1", "::1")  # the leader's address as followers reach it
    results = job.joined()
    for host in ("algo-2", "algo-3"):
        plan, addr = results[host]
        assert plan["hosts"] == [["algo-1", 1], ["algo-2", 2], ["algo-3", 4]]
        assert (plan["master_port"], plan["run_id"], plan["v"]) == (29500, "r1", 1)
        assert addr in ("127.0.0.1", "::1")
    logs.wait_for("host algo-2 joined with 2 slot(s)")
    finish(job)
    assert not events(job.leader.events)


def test_followers_started_before_the_leader_retry_until_it_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempts: list[str] = []
    retried = threading.Event()

    def counting_resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        attempts.append(host)
        if len(attempts) >= 3:
            retried.set()
        return real_resolve(host, port)

    real_resolve = rendezvous.resolve
    monkeypatch.setattr(rendezvous, "resolve", counting_resolve)
    leader = Leader(
        key=KEY,
        host="algo-1",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        expected=("algo-1", "algo-2"),
        port=port,
    )
    job = Job(leader)
    try:
        job.join("algo-2", slots=1)
        assert retried.wait(WAIT_S)  # refused twice: the follower backs off and retries
        leader.start()
        assert leader.port == port
        job.meet()
        plan, _ = job.joined()["algo-2"]
        assert plan["hosts"] == [["algo-1", 1], ["algo-2", 1]]
    finally:
        job.close()


def test_a_missing_host_fails_every_member_with_exit_3_naming_it(job: Job) -> None:
    job.join("algo-2", deadline_s=1.0)
    with pytest.raises(PeersUnreachable) as leader_error:
        job.leader.wait_for_peers(time.monotonic() + 1.0, 1)
    assert leader_error.value.exit_code == 3
    assert leader_error.value.missing == ("algo-3",)
    follower_error = job.joined()["algo-2"]
    # The follower waits for the leader's verdict, which names the missing host, not the leader.
    assert isinstance(follower_error, JobAborted)
    assert follower_error.exit_code == 3
    assert "algo-3" in str(follower_error) and "never arrived" in str(follower_error)


def test_a_follower_without_a_leader_gives_up_at_its_deadline_naming_the_leader() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    member = Follower(
        key=KEY,
        host="algo-2",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        leader="127.0.0.1",
        port=port,
    )
    start = time.monotonic()
    with pytest.raises(PeersUnreachable) as error:
        member.join(start + 0.7, 1)
    member.close()
    assert 0.7 <= time.monotonic() - start < 3.0
    assert error.value.exit_code == 3 and error.value.missing == ("127.0.0.1",)


def test_a_failure_on_one_follower_aborts_every_host_with_its_root_cause(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    cause = "rank 5 on algo-3 exited with code 7: ValueError: boom"
    job.followers["algo-3"].failed(7, cause)
    assert wait_event(job.leader.events) == RemoteAbort(cause, 7)
    assert wait_event(job.followers["algo-2"].events) == RemoteAbort(cause, 7)
    assert job.leader.decision.exit_code == 7 and job.leader.decision.reason == cause
    # The host that failed is told nothing new: it already knows.
    assert not events(job.followers["algo-3"].events)
    # Its own ranks all exited afterwards: the barrier now reports the job's failure.
    job.followers["algo-3"].close()
    assert job.followers["algo-2"].barrier() == (7, cause)
    assert job.leader.barrier() == (7, cause)


def test_a_failing_leader_aborts_every_follower(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    job.leader.failed(143, "the job was stopped by SIGTERM on algo-1")
    for host in ("algo-2", "algo-3"):
        expected = RemoteAbort("the job was stopped by SIGTERM on algo-1", 143)
        assert wait_event(job.followers[host].events) == expected


def test_a_lost_leader_aborts_every_follower(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    job.leader.close()  # its launcher died: connections close without a RESULT
    for host in ("algo-2", "algo-3"):
        event = wait_event(job.followers[host].events)
        assert isinstance(event, RemoteAbort) and event.exit_code == 1
        assert event.reason.startswith("lost the leader localhost")


def test_a_follower_that_disconnects_after_the_plan_is_lost(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    job.followers["algo-3"]._conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    event = wait_event(job.leader.events)
    assert isinstance(event, RemoteAbort) and event.reason.startswith("host algo-3 was lost")
    assert wait_event(job.followers["algo-2"].events) == event


def hello_then_silence(port: int, host: str) -> socket.socket:
    """An authenticated follower that says HELLO and then never speaks again (a hung host)."""
    sock = rogue(port)
    sock.sendall(wire.encode({"type": "hello", "host": host, "slots": 1}, KEY))
    return sock


def test_a_silent_follower_is_lost_after_the_heartbeat_timeout(job: Job, logs: Records) -> None:
    job.join("algo-2")
    silent = hello_then_silence(job.port, "algo-3")
    job.meet()
    job.joined()
    start = time.monotonic()
    event = wait_event(job.leader.events)
    assert isinstance(event, RemoteAbort)
    assert event.reason == f"host algo-3 was lost (no heartbeat for {HEARTBEAT_S:g} s)"
    assert HEARTBEAT_S * 0.5 <= time.monotonic() - start < HEARTBEAT_S * 4
    assert wait_event(job.followers["algo-2"].events) == event
    silent.close()


def test_a_host_that_joined_long_before_the_plan_is_not_declared_lost(
    job: Job, logs: Records
) -> None:
    job.join("algo-2")
    logs.wait_for("host algo-2 joined")
    time.sleep(HEARTBEAT_S * 3)  # the scenario: the last host is late by several timeouts
    job.join("algo-3")
    job.meet()
    job.joined()
    with pytest.raises(queue.Empty):  # nobody is lost during the next few heartbeat periods
        job.leader.events.get(timeout=HEARTBEAT_S * 2)
    finish(job)


def test_a_silent_leader_is_lost_by_its_followers() -> None:
    """A leader whose host hangs after the plan: followers notice by heartbeat, not by EOF."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def fake_leader() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        reader = wire.FrameReader(KEY)
        while not reader.feed(conn.recv(4096)):
            pass
        conn.sendall(wire.encode({"type": "plan", "hosts": [], "master_port": 1}, KEY))

    thread = threading.Thread(target=fake_leader, daemon=True)
    thread.start()
    member = Follower(
        key=KEY,
        host="algo-2",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        leader="127.0.0.1",
        port=port,
    )
    try:
        plan, _ = member.join(time.monotonic() + WAIT_S, 1)
        assert plan["type"] == "plan"
        start = time.monotonic()
        event = wait_event(member.events)
        assert isinstance(event, RemoteAbort)
        assert event.reason == f"lost the leader 127.0.0.1 (no heartbeat for {HEARTBEAT_S:g} s)"
        assert time.monotonic() - start < HEARTBEAT_S * 4
    finally:
        member.close()
        thread.join(WAIT_S)
        for sock in (*accepted, server):
            sock.close()


def test_a_connection_dropped_before_the_plan_is_retried_not_fatal(logs: Records) -> None:
    """A leader that drops a follower before the plan (flooded, restarting) costs a retry."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    hellos: list[Message] = []

    def fake_leader() -> None:
        for attempt in range(2):
            conn, _ = server.accept()
            with conn:
                reader = wire.FrameReader(KEY)
                got: list[Message] = []
                while not got:
                    got = reader.feed(conn.recv(4096))
                hellos.extend(got)
                if attempt == 1:
                    conn.sendall(wire.encode({"type": "plan", "hosts": [["algo-1", 1]]}, KEY))
                    conn.recv(4096)  # until the follower closes

    thread = threading.Thread(target=fake_leader, daemon=True)
    thread.start()
    member = Follower(
        key=KEY,
        host="algo-2",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        leader="127.0.0.1",
        port=port,
    )
    try:
        plan, _ = member.join(time.monotonic() + WAIT_S, 3)
    finally:
        member.close()
        thread.join(WAIT_S)
        server.close()
    assert plan["hosts"] == [["algo-1", 1]]
    assert [h["host"] for h in hellos] == ["algo-2", "algo-2"]
    assert not member.decision.decided and not events(member.events)
    logs.wait_for("lost the leader 127.0.0.1 before the plan", "reconnecting")


def test_a_host_that_leaves_before_the_plan_may_come_back(job: Job, logs: Records) -> None:
    early = hello_then_silence(job.port, "algo-2")
    logs.wait_for("host algo-2 joined")
    early.close()
    logs.wait_for("host algo-2 left before the job started")
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    assert all(isinstance(r, tuple) for r in job.joined().values())
    finish(job)
    assert not events(job.leader.events)


# --- rogue clients --------------------------------------------------------------------------------

Rogue = Callable[[int], socket.socket]


def wrong_token(port: int) -> socket.socket:
    sock = rogue(port)
    other = wire.job_key("another job")
    sock.sendall(wire.encode({"type": "hello", "host": "algo-2", "slots": 1}, other))
    return sock


def garbage(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: algo-1\r\n\r\n")
    return sock


def oversized(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(struct.pack(">I", wire.MAX_FRAME + 1) + b"x" * 1000)
    return sock


def unknown_host(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(wire.encode({"type": "hello", "host": "algo-9", "slots": 1}, KEY))
    return sock


def bad_slots(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(wire.encode({"type": "hello", "host": "algo-3", "slots": True}, KEY))
    return sock


def failed_before_hello(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(wire.encode({"type": "failed", "code": 1, "reason": "forged"}, KEY))
    return sock


def leader_name(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(wire.encode({"type": "hello", "host": "algo-1", "slots": 1}, KEY))
    return sock


ROGUES: dict[str, tuple[Rogue, str]] = {
    "wrong token": (wrong_token, "bad authentication tag"),
    "garbage": (garbage, "frame length 1195725856 outside"),  # b"GET " as a length
    "oversized frame": (oversized, f"frame length {wire.MAX_FRAME + 1} outside"),
    "unknown host": (unknown_host, "not a host of this job"),
    "bad slot count": (bad_slots, "bad slot count"),
    "message before hello": (failed_before_hello, "'failed' before hello"),
    "the leader's own name": (leader_name, "not a host of this job"),
}


@pytest.mark.parametrize("name", list(ROGUES))
def test_a_rogue_is_refused_and_logged_while_the_job_proceeds(
    job: Job, logs: Records, name: str
) -> None:
    make, reason = ROGUES[name]
    job.join("algo-2")
    sock = make(job.port)
    assert refused(sock)
    logs.wait_for(reason)
    job.join("algo-3")
    job.meet()
    assert all(isinstance(r, tuple) for r in job.joined().values())
    finish(job)
    assert not events(job.leader.events)  # nothing the rogue did touched the job


def test_a_duplicate_host_is_refused_and_the_real_one_keeps_its_place(
    job: Job, logs: Records
) -> None:
    job.join("algo-2")
    logs.wait_for("host algo-2 joined")
    impostor = hello_then_silence(job.port, "algo-2")
    assert refused(impostor)
    logs.wait_for("refused a hello", "already joined")
    job.join("algo-3")
    job.meet()
    assert all(isinstance(r, tuple) for r in job.joined().values())
    finish(job)


def test_half_open_and_trickling_connections_are_dropped_at_the_hello_deadline(
    job: Job, logs: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leader_mod, "HELLO_TIMEOUT_S", 0.5)
    start = time.monotonic()
    silent = rogue(job.port)
    trickle = rogue(job.port)
    frame = wire.encode({"type": "hello", "host": "algo-2", "slots": 1}, KEY)

    def drip() -> None:  # one byte every 0.1 s: each recv succeeds, the frame never completes
        with contextlib.suppress(OSError):
            for byte in frame:
                trickle.send(bytes([byte]))
                time.sleep(0.1)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    assert refused(silent)
    assert time.monotonic() - start < 2.0
    dripper.join(WAIT_S)  # ends when its send fails: the leader cut it off mid-frame
    assert time.monotonic() - start < len(frame) * 0.1 / 2
    trickle.close()
    logs.wait_for("dropped a control connection", "timed out")
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    finish(job)


def test_a_flood_beyond_max_pending_cannot_lock_out_a_real_host(job: Job, logs: Records) -> None:
    flood = [rogue(job.port) for _ in range(leader_mod.MAX_PENDING + 36)]
    logs.wait_for(f"more than {leader_mod.MAX_PENDING} control connections without a hello")
    start = time.monotonic()
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    # Not after the 10 s HELLO timeout of the idle connections: new ones evict the oldest.
    assert time.monotonic() - start < 3.0
    assert all(isinstance(r, tuple) for r in job.joined().values())
    evicted = 0
    for sock in flood:
        sock.settimeout(0.01)
        try:
            evicted += sock.recv(1) == b""
        except TimeoutError:
            pass
        except ConnectionResetError:
            evicted += 1
        sock.close()
    assert evicted >= 36
    finish(job)
    assert not events(job.leader.events)
