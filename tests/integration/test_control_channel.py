"""A live leader on loopback, real followers, and rogue clients (DESIGN.md decision 3).

Leader and followers are the production classes, each in its own threads as in a launcher, so
every byte crosses a real TCP socket. Rogues are raw sockets. Each rogue must be refused (its
socket closed by the leader) and logged, while the real followers still join, get the plan and
finish the job with exit 0. After every test no channel thread may be left running.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from launcher import net
from launcher.control import follower as follower_mod
from launcher.control import leader as leader_mod
from launcher.control import messages, wire
from launcher.control.follower import Follower, Peer
from launcher.control.leader import Leader
from launcher.control.meet import Interrupt, MeetRequest, MeetStopped, listen_address, meet
from launcher.control.messages import Hello, Plan, SshdReady
from launcher.errors import JobAborted, LauncherError, PeersUnreachable, StopRequested, UsageError
from launcher.events import Event, PeerMessage, RemoteAbort
from launcher.local import cluster as local

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-token"
KEY = wire.job_key(TOKEN)
HOSTS = ("algo-1", "algo-2", "algo-3")
HEARTBEAT_S = 0.6
WAIT_S = 10.0  # upper bound for anything that should happen promptly
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBPbDzvk0T8F7jAr6I2v3i1fm3rhdThbWWEFF1sqTkgZ"

Raw = dict[str, Any]  # a frame's JSON object, as raw ends send and read them


def plan_of(*hosts: str) -> Raw:
    """A valid PLAN on the wire, one slot per host, for fake leaders."""
    return messages.encode(Plan(tuple((h, 1) for h in hosts), 29500, "r1"))


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

    def join(
        self, host: str, deadline_s: float = WAIT_S, slots: int = 2, port: int | None = None
    ) -> Follower:
        """Start a follower's join() in a thread, as its launcher would (through `port`, e.g.
        a `Tap`, when given)."""
        member = self.followers[host] = self.follower(host, port=port)

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
        layout = tuple((p.host, p.slots) for p in peers)
        self.leader.announce(Plan(layout, 29500, "r1"))
        return peers

    def close(self) -> None:
        for member in self.followers.values():
            member.close()
        self.leader.close()


def make_leader() -> Leader:
    """A started leader for HOSTS on an ephemeral port."""
    leader = Leader(
        key=KEY,
        host="algo-1",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        expected=HOSTS,
        port=0,
    )
    leader.start()
    return leader


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def job() -> Iterator[Job]:
    running = Job(make_leader())
    yield running
    running.close()


def rogue(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


class RawEnd:
    """One end of a control connection scripted by hand over a raw socket, speaking the wire
    protocol exactly: it sends its challenge at once, binds its frames to the peer's once that
    arrives, and checks what it reads. A fake leader, or a follower that says only what the
    test wants (it holds the job key)."""

    def __init__(self, sock: socket.socket, key: bytes = KEY) -> None:
        self.sock = sock
        self.key = key
        self.nonce = wire.new_nonce()
        self.reader = wire.FrameReader(key, self.nonce)
        self.writer: wire.FrameWriter | None = None
        self.inbox: list[Raw] = []
        self.sent = bytearray()  # every byte this end sent, for replays
        self.raw_send(wire.challenge(self.nonce, key))

    @classmethod
    def connect(cls, port: int, key: bytes = KEY) -> RawEnd:
        end = cls(rogue(port), key)
        end.open()
        return end

    def raw_send(self, data: bytes) -> None:
        self.sent += data
        self.sock.sendall(data)

    def _read(self) -> bool:
        data = self.sock.recv(65536)
        for message in self.reader.feed(data):
            if message["type"] == wire.CHALLENGE:
                self.writer = wire.FrameWriter(self.key, message["nonce"])
            else:
                self.inbox.append(message)
        return bool(data)

    def open(self) -> None:
        """Read until the peer's challenge is in."""
        while self.writer is None:
            assert self._read(), "the peer closed before its challenge"

    def receive(self) -> list[Raw]:
        """The messages read so far and at least one more; [] at EOF."""
        while not self.inbox and self._read():
            pass
        got, self.inbox = self.inbox, []
        return got

    def send(self, message: Raw) -> None:
        assert self.writer is not None, "open() first"
        self.raw_send(self.writer.encode(message))

    def close(self) -> None:
        self.sock.close()


def frames(data: bytes) -> list[bytes]:
    """Recorded bytes cut into frames."""
    out, i = [], 0
    while i + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, i)
        out.append(data[i : i + 4 + length])
        i += 4 + length
    return out


def complete(frame: bytes) -> bool:
    return len(frame) >= 4 and len(frame) == 4 + struct.unpack_from(">I", frame)[0]


def frame_type(frame: bytes) -> str:
    return str(json.loads(frame[36:])["type"])


class Tap:
    """A relay on loopback between followers and the leader: records every byte each way
    (`up`: follower to leader, `down`: leader to follower) per connection, and can inject
    bytes into the upstream of the live one, as an attacker on the path could."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.up: list[bytearray] = []
        self.down: list[bytearray] = []
        self._upstreams: list[socket.socket] = []
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._spawn(self._serve, port)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="test-tap")
        thread.start()
        self._threads.append(thread)

    def _serve(self, port: int) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            self._socks += [client, upstream]
            self._upstreams.append(upstream)
            self.up.append(bytearray())
            self.down.append(bytearray())
            self._spawn(self._pump, client, upstream, self.up[-1])
            self._spawn(self._pump, upstream, client, self.down[-1])

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        """Relay whole frames only, under the lock `inject` takes: an injected frame always
        lands between two frames, never inside one."""
        pending = bytearray()
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                record += data
                pending += data
                whole = len(b"".join(f for f in frames(bytes(pending)) if complete(f)))
                if whole:
                    with self._lock:
                        dst.sendall(pending[:whole])
                    del pending[:whole]
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def inject(self, data: bytes) -> None:
        """Bytes into the live connection's upstream, between two of the follower's frames."""
        with self._lock:
            self._upstreams[-1].sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(WAIT_S)


def closed_by_leader(sock: socket.socket) -> bool:
    """Whether the leader has closed this connection already (it sent its challenge first)."""
    sock.settimeout(0.01)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return True


def refused(sock: socket.socket) -> bool:
    """True once the leader has closed this connection (EOF or reset), reading what it sent."""
    try:
        while data := sock.recv(4096):
            assert b"plan" not in data, "a rogue was sent the plan"
    except ConnectionResetError:
        pass
    sock.close()
    return True


def events(q: queue.SimpleQueue[Event]) -> list[Event]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(q.get_nowait())
    return out


def wait_event(q: queue.SimpleQueue[Event], timeout: float = WAIT_S) -> Event:
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
        assert plan == Plan((("algo-1", 1), ("algo-2", 2), ("algo-3", 4)), 29500, "r1")
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

    real_resolve = net.resolve
    monkeypatch.setattr(net, "resolve", counting_resolve)
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
        assert plan.hosts == (("algo-1", 1), ("algo-2", 1))
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
    end = RawEnd.connect(port)
    end.send({"type": "hello", "host": host, "slots": 1})
    return end.sock


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
        end = RawEnd(conn)
        assert end.receive()[0]["type"] == "hello"
        end.send(plan_of("algo-1", "algo-2"))

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
        assert plan.hosts == (("algo-1", 1), ("algo-2", 1))
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
    hellos: list[Raw] = []

    def fake_leader() -> None:
        for attempt in range(2):
            conn, _ = server.accept()
            with conn:
                end = RawEnd(conn)
                hellos.extend(end.receive())
                if attempt == 1:
                    end.send(plan_of("algo-1"))
                    while end.receive():  # until the follower closes
                        pass

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
    assert plan.hosts == (("algo-1", 1),)
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


# --- messages that are not the protocol's (issue 13) -------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "failed", "code": "7", "reason": "boom"},  # before: exit 1 for everyone
        {"type": "failed", "code": 0, "reason": "boom"},  # before: a "failure" with code 0
        {"type": "sshd", "addr": "10.0.0.3", "port": 22},  # no hostkey
        {"type": "plan", "hosts": [["algo-1", 1]], "master_port": 1, "run_id": "r"},
        {"type": "nonsense"},  # before: handed to the backend as a PeerMessage
    ],
    ids=["code a string", "code 0", "sshd without hostkey", "a plan", "unknown type"],
)
def test_a_joined_hosts_bad_message_loses_only_its_own_connection(
    job: Job, logs: Records, bad: Raw
) -> None:
    job.join("algo-2")
    end = RawEnd.connect(job.port)
    end.send(messages.encode(Hello("algo-3", 1)))
    logs.wait_for("host algo-3 joined")
    end.send(bad)
    assert refused(end.sock)
    logs.wait_for("host algo-3 left before the job started (protocol error: ")
    job.join("algo-3")
    job.meet()
    assert all(isinstance(r, tuple) for r in job.joined().values())
    finish(job)
    assert not events(job.leader.events)  # nothing of it reached the job


def test_a_bad_plan_costs_the_follower_a_reconnect_not_a_crash(logs: Records) -> None:
    """A PLAN whose hosts are not [host, slots] pairs is refused like any protocol error:
    before, `join` returned it and `meet` failed with a traceback on `plan["hosts"]`."""
    server = socket.create_server(("127.0.0.1", 0))

    def fake_leader() -> None:
        bad = {"type": "plan", "hosts": "algo-1,algo-2", "master_port": 29500, "run_id": "r1"}
        for plan in (bad, plan_of("algo-1", "algo-2")):
            conn, _ = server.accept()
            with conn, contextlib.suppress(OSError):
                end = RawEnd(conn)
                end.receive()  # the HELLO
                end.send(plan)
                while end.receive():  # until the follower closes
                    pass

    thread = threading.Thread(target=fake_leader, daemon=True)
    thread.start()
    member = Follower(
        key=KEY,
        host="algo-2",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        leader="127.0.0.1",
        port=int(server.getsockname()[1]),
    )
    try:
        plan, _ = member.join(time.monotonic() + WAIT_S, 1)
    finally:
        member.close()
        thread.join(WAIT_S)
        server.close()
    assert plan == Plan((("algo-1", 1), ("algo-2", 1)), 29500, "r1")
    logs.wait_for("lost the leader 127.0.0.1 before the plan", "'plan' message: bad hosts")
    assert not member.decision.decided


def test_a_plan_without_this_host_fails_meet_with_one_line(logs: Records) -> None:
    """Before: ValueError out of `list.index` (a traceback)."""
    server = socket.create_server(("127.0.0.1", 0))

    def fake_leader() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            end = RawEnd(conn)
            end.receive()
            end.send(plan_of("algo-1", "algo-3"))
            while end.receive():
                pass

    thread = threading.Thread(target=fake_leader, daemon=True)
    thread.start()
    try:
        request = meet_request("algo-2", HOSTS, int(server.getsockname()[1]))
        with pytest.raises(LauncherError, match="does not name this host algo-2") as error:
            meet(request, queue.SimpleQueue(), 29500)
    finally:
        thread.join(WAIT_S)
        server.close()
    assert "algo-1, algo-3" in str(error.value)


def test_a_host_name_the_channel_cannot_carry_is_a_usage_error() -> None:
    hosts = ("algo-1", "a" * 254)
    request = meet_request("algo-1", hosts, free_tcp_port(), peer_timeout_s=1.0)
    with pytest.raises(UsageError, match="cannot be one of a multi-host job's hosts") as error:
        meet(request, queue.SimpleQueue(), 29500)
    assert error.value.exit_code == 2


# --- rogue clients --------------------------------------------------------------------------------

Rogue = Callable[[int], socket.socket]


def wrong_token(port: int) -> socket.socket:
    return RawEnd(rogue(port), wire.job_key("another job")).sock


def garbage(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: algo-1\r\n\r\n")
    return sock


def oversized(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(struct.pack(">I", wire.MAX_FRAME + 1) + b"x" * 1000)
    return sock


def saying(message: Raw) -> Rogue:
    """A rogue that holds the job key and sends `message` first."""

    def make(port: int) -> socket.socket:
        end = RawEnd.connect(port)
        end.send(message)
        return end.sock

    return make


def version_1(port: int) -> socket.socket:
    """A launcher of the previous protocol: a v1 HELLO, no challenge."""
    sock = rogue(port)
    payload = json.dumps({"v": 1, "type": "hello", "host": "algo-2", "slots": 1}).encode()
    tag = hmac.new(KEY, payload, hashlib.sha256).digest()
    sock.sendall(struct.pack(">I", len(tag + payload)) + tag + payload)
    return sock


def frame_before_challenge(port: int) -> socket.socket:
    sock = rogue(port)
    sock.sendall(wire.FrameWriter(KEY, wire.new_nonce()).encode({"type": "hello"}))
    return sock


ROGUES: dict[str, tuple[Rogue, str]] = {
    "wrong token": (wrong_token, "bad authentication tag"),
    "garbage": (garbage, "frame length 1195725856 outside"),  # b"GET " as a length
    "oversized frame": (oversized, f"frame length {wire.MAX_FRAME + 1} outside"),
    "unknown host": (saying({"type": "hello", "host": "algo-9", "slots": 1}), "not a host"),
    "bad slot count": (saying({"type": "hello", "host": "algo-3", "slots": True}), "bad slot"),
    "message before hello": (
        saying({"type": "failed", "code": 1, "reason": "x"}),
        "'failed' before hello",
    ),
    # Issue 13: every field is checked, not only those the leader reads.
    "a hello with a field of its own": (
        saying({"type": "hello", "host": "algo-3", "slots": 1, "admin": True}),
        "'hello' message with unknown field(s) 'admin'",
    ),
    "an unknown message": (saying({"type": "shutdown"}), "unknown message type 'shutdown'"),
    # A second challenge would re-bind what the leader sends: it is no message.
    "a second challenge": (
        saying({"type": "challenge", "nonce": "a" * 32}),
        "unknown message type 'challenge'",
    ),
    "the leader's own name": (
        saying({"type": "hello", "host": "algo-1", "slots": 1}),
        "not a host of this job",
    ),
    "the previous protocol": (version_1, "protocol version 1, expected 2"),
    "no challenge": (frame_before_challenge, "'hello' frame before the peer's challenge"),
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
    frame = wire.challenge(wire.new_nonce(), KEY)

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
    evicted = sum(closed_by_leader(sock) for sock in flood)
    assert evicted >= 36
    finish(job)
    assert not events(job.leader.events)


# --- replays (issue 12, point 5) --------------------------------------------------------------


def test_a_hello_recorded_on_another_connection_is_refused_and_logged(
    job: Job, logs: Records
) -> None:
    """A HELLO (with its connection's opening) recorded and sent again on a new connection,
    while the host's place is free: before, the replayer took the host's place."""
    genuine = RawEnd.connect(job.port)
    genuine.send({"type": "hello", "host": "algo-2", "slots": 1})
    logs.wait_for("host algo-2 joined")
    genuine.close()
    logs.wait_for("host algo-2 left before the job started")
    replayer = rogue(job.port)
    replayer.sendall(bytes(genuine.sent))
    assert refused(replayer)
    logs.wait_for("dropped a control connection", "'hello' frame bound to another connection")
    assert sum("host algo-2 joined" in line for line in logs.lines) == 1  # the genuine one only
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    assert all(isinstance(r, tuple) for r in job.joined().values())
    finish(job)
    assert not events(job.leader.events)


def test_a_whole_job_replayed_to_the_next_job_with_the_same_token_gets_nowhere(
    logs: Records,
) -> None:
    """Followers' real streams (challenge, HELLO, heartbeats, DONE) recorded on the path and
    replayed to a later job that shares the token (a derived token: same job name, same
    hosts): nothing of them is accepted, and that job's real hosts are not disturbed."""
    taps: dict[str, Tap] = {}
    first = Job(make_leader())
    try:
        for host in ("algo-2", "algo-3"):
            taps[host] = Tap(first.port)
            first.join(host, port=taps[host].port)
        first.meet()
        first.joined()
        finish(first)
    finally:
        first.close()
        for tap in taps.values():
            tap.close()
    recorded = bytes(taps["algo-2"].up[0])
    assert [frame_type(f) for f in frames(recorded)][:2] == ["challenge", "hello"]
    assert "done" in [frame_type(f) for f in frames(recorded)]
    second = Job(make_leader())
    try:
        replayer = rogue(second.port)
        replayer.sendall(recorded)
        assert refused(replayer)
        logs.wait_for("'hello' frame bound to another connection (replayed?)")
        second.join("algo-2")
        second.join("algo-3")
        second.meet()
        assert all(isinstance(r, tuple) for r in second.joined().values())
        finish(second)
        assert not events(second.leader.events)
    finally:
        second.close()


@pytest.mark.parametrize("kind", ["hello", "heartbeat"])
def test_a_frame_replayed_within_its_connection_is_refused_and_logged(
    job: Job, logs: Records, kind: str
) -> None:
    """An attacker on the path repeats one of a joined follower's own frames: refused, and
    since the stream can no longer be trusted the host is lost (the job aborts loudly)."""
    tap = Tap(job.port)
    try:
        job.join("algo-2", port=tap.port)
        job.join("algo-3")
        job.meet()
        job.joined()
        wait_until(lambda: kind in [frame_type(f) for f in frames(bytes(tap.up[0]))])
        copy = next(f for f in frames(bytes(tap.up[0])) if frame_type(f) == kind)
        tap.inject(copy)
        event = wait_event(job.leader.events)
        assert isinstance(event, RemoteAbort)
        assert event.reason.startswith(f"host algo-2 was lost (protocol error: '{kind}' frame")
        assert "(replayed?)" in event.reason
    finally:
        tap.close()


def test_a_leaders_frames_replayed_to_a_follower_are_refused(job: Job, logs: Records) -> None:
    """The other direction: what a leader sent on one connection (its PLAN among it), played
    to a follower by a fake leader, is bound to another follower nonce: no plan is taken."""
    tap = Tap(job.port)
    try:
        job.join("algo-2", port=tap.port)
        job.join("algo-3")
        job.meet()
        job.joined()
        finish(job)
    finally:
        job.close()
        tap.close()
    recorded = bytes(tap.down[0])
    assert "plan" in [frame_type(f) for f in frames(recorded)]
    server = socket.create_server(("127.0.0.1", 0))
    member = Follower(
        key=KEY,
        host="algo-2",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        leader="127.0.0.1",
        port=int(server.getsockname()[1]),
    )

    def fake_leader() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.sendall(recorded)
                with contextlib.suppress(OSError):
                    while conn.recv(4096):
                        pass

    thread = threading.Thread(target=fake_leader, daemon=True)
    thread.start()
    try:
        with pytest.raises(PeersUnreachable):
            member.join(time.monotonic() + 1.5, 1)
    finally:
        member.close()
        server.close()
        thread.join(WAIT_S)
    assert member.plan is None
    logs.wait_for("lost the leader 127.0.0.1 before the plan", "bound to another connection")


# --- free text of any size (issue 12, point 5) ------------------------------------------------

HUGE = "ValueError: " + "x" * 10_000_000  # a 10 MB root cause


def test_a_10_mb_root_cause_from_a_follower_reaches_every_host_clipped(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    job.followers["algo-3"].failed(7, HUGE)  # before: ValueError out of failed()
    event = wait_event(job.leader.events)
    assert isinstance(event, RemoteAbort) and event.exit_code == 7
    assert event.reason == wire.clip(HUGE)
    assert len(event.reason.encode()) <= wire.MAX_TEXT
    assert event.reason.startswith("ValueError: xxx")
    assert event.reason.endswith(" bytes]") and "... [truncated " in event.reason
    assert wait_event(job.followers["algo-2"].events) == event
    # No connection was lost: the barrier still reports the job's result to everyone.
    job.followers["algo-3"].close()
    assert job.followers["algo-2"].barrier() == (7, event.reason)
    assert job.leader.barrier() == (7, wire.clip(HUGE))


def test_a_10_mb_root_cause_from_the_leader_reaches_every_follower_clipped(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    job.leader.failed(1, HUGE)
    for host in ("algo-2", "algo-3"):
        assert wait_event(job.followers[host].events) == RemoteAbort(wire.clip(HUGE), 1)
    assert job.leader.decision.reason == HUGE  # the local decision keeps it whole


def test_a_message_too_large_for_a_frame_is_dropped_not_the_connection(
    job: Job, logs: Records
) -> None:
    """Every field of every message is bounded but a plan's host list: a plan for a few
    thousand hosts of 250-character names exceeds a frame. It is dropped with an error line;
    the connections live on (a backend message and the exit barrier still get through)."""
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()
    huge = Plan(tuple((f"h{i:0250d}", 1) for i in range(4500)), 29500, "r1")
    job.leader.announce(huge)
    logs.wait_for("control message 'plan' to algo-2 not sent", "exceeds")
    report = SshdReady("10.0.0.2", 2222, HOSTKEY)
    assert job.followers["algo-2"].send(report) is True
    assert wait_event(job.leader.events) == PeerMessage("algo-2", report)
    finish(job)


# --- rogue floods are summarised (issue 12, point 5) ------------------------------------------


def refusal_lines(logs: Records) -> list[str]:
    starts = ("refused", "dropped a control connection", "more than ")
    return [line for line in logs.lines if line.startswith(starts)]


def test_a_flood_of_rogue_connections_is_logged_as_a_few_summary_lines(
    job: Job, logs: Records
) -> None:
    """300 rogues of five kinds in a burst: the first is logged in full, the rest are counted
    into at most one summary line per REFUSAL_LOG_EVERY_S (and one at close), by kind and peer.
    Before, each one was a line of its own."""
    makers: list[Rogue] = [
        wrong_token,
        garbage,
        oversized,
        frame_before_challenge,
        saying({"type": "hello", "host": "algo-9", "slots": 1}),
    ]
    start = time.monotonic()
    for i in range(300):
        assert refused(makers[i % len(makers)](job.port))
    elapsed = time.monotonic() - start
    assert elapsed < 30
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    finish(job)
    during = refusal_lines(logs)
    assert 1 <= len(during) <= 1 + elapsed / leader_mod.REFUSAL_LOG_EVERY_S + 1, during
    job.leader.close()  # flushes what was counted since the last line
    lines = refusal_lines(logs)
    assert len(lines) <= len(during) + 1
    summaries = [re.match(r"refused (\d+) more control connection\(s\) in", x) for x in lines]
    counted = sum(int(m[1]) for m in summaries if m)
    assert counted + (len(lines) - sum(1 for m in summaries if m)) == 300
    last = lines[-1]
    assert "from 127.0.0.1 (" in last
    for kind in ("bad token", "bad length", "no challenge", "invalid hello"):
        assert kind in " ".join(lines)


def test_refusals_are_counted_by_kind_and_peer_between_lines(logs: Records) -> None:
    now = [0.0]
    refusals = leader_mod.Refusals(every=5.0, clock=lambda: now[0])
    refusals.record("bad token", "10.0.0.1", "first: in full")
    for i in range(20):
        refusals.record("bad token" if i % 2 else "garbage", f"10.0.0.{i % 7 + 1}", "detail")
    assert logs.lines == ["first: in full"]
    now[0] = 5.0
    refusals.flush()
    assert len(logs.lines) == 2
    assert logs.lines[1].startswith("refused 20 more control connection(s) in 5.0 s: ")
    assert (
        "10 bad token, 10 garbage" in logs.lines[1] or "10 garbage, 10 bad token" in logs.lines[1]
    )
    assert "and 2 other address(es)" in logs.lines[1]  # 7 peers, 5 named
    now[0] = 11.0
    refusals.record("silent", "10.0.0.9", "a quiet minute later: in full again")
    assert logs.lines[-1] == "a quiet minute later: in full again"
    refusals.flush(force=True)
    assert len(logs.lines) == 3  # nothing counted since


# --- the control port on loopback (issue 12, point 5) -----------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def meet_request(host: str, hosts: tuple[str, ...], port: int, **kw: Any) -> MeetRequest:
    return MeetRequest(
        host=host,
        hosts=hosts,
        slots=1,
        control_port=port,
        master_port=29500,
        peer_timeout_s=kw.pop("peer_timeout_s", 30.0),
        heartbeat_timeout_s=HEARTBEAT_S,
        job_name="meet-test",
        token=TOKEN,
        leader_addr=kw.pop("leader_addr", "127.0.0.1"),
        **kw,
    )


@pytest.mark.parametrize(
    ("addr", "bound"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("::1", "::1"),
        ("", ""),
        ("10.1.2.3", ""),
        ("algo-1", ""),
        ("localhost", ""),
    ],
)
def test_the_leader_listens_on_loopback_only_when_the_hosts_reach_it_there(
    addr: str, bound: str
) -> None:
    assert listen_address(meet_request("algo-1", HOSTS, 1, leader_addr=addr)) == bound


def test_launcher_local_hosts_reach_the_leader_at_loopback(tmp_path: Path) -> None:
    job = local.LocalJob(tmp_path, ("algo-1", "algo-2"))
    env = local.host_env(job, "algo-2", 7787, "secret")
    addr = env["LAUNCHER_LEADER_ADDR"]
    assert listen_address(meet_request("algo-1", HOSTS, 7787, leader_addr=addr)) == "127.0.0.1"


def test_a_leader_reached_at_127_0_0_1_listens_there_only() -> None:
    leader = Leader(
        key=KEY,
        host="algo-1",
        heartbeat_timeout_s=HEARTBEAT_S,
        events=queue.SimpleQueue(),
        expected=HOSTS,
        bind=listen_address(meet_request("algo-1", HOSTS, 0)),
    )
    leader.start()
    try:
        assert leader._server is not None
        assert leader._server.getsockname()[0] == "127.0.0.1"
        assert leader._server.family == socket.AF_INET
    finally:
        leader.close()


# --- a stop signal while the hosts meet (issue 12, point 3) -----------------------------------


@dataclass
class Meeting:
    """`meet` of several hosts, each in a thread, with its own `Interrupt`."""

    hosts: tuple[str, ...]
    port: int = field(default_factory=free_tcp_port)
    interrupts: dict[str, Interrupt] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # host -> (world, member) | error
    ended: dict[str, float] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, host: str) -> None:
        interrupt = self.interrupts[host] = Interrupt()

        def run() -> None:
            try:
                self.results[host] = meet(
                    meet_request(host, self.hosts, self.port), queue.SimpleQueue(), 29500, interrupt
                )
            except Exception as e:  # the test inspects it
                self.results[host] = e
            self.ended[host] = time.monotonic()

        thread = threading.Thread(target=run, name=f"test-meet-{host}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(WAIT_S)
            assert not thread.is_alive(), f"{thread.name} still meeting"
        return self.results

    def close(self) -> None:
        for result in self.results.values():
            if isinstance(result, tuple):
                result[1].close()


@pytest.fixture
def meeting() -> Iterator[Callable[[tuple[str, ...]], Meeting]]:
    made: list[Meeting] = []

    def make(hosts: tuple[str, ...]) -> Meeting:
        made.append(Meeting(hosts))
        return made[-1]

    yield make
    for m in made:
        for interrupt in m.interrupts.values():  # nobody may be left waiting
            interrupt.post(signal.SIGKILL)
        m.wait()
        m.close()


FOUR = ("algo-1", "algo-2", "algo-3", "algo-4")  # algo-4 never comes: the others meet on


def test_a_follower_stopped_while_meeting_stops_every_host_at_once(
    meeting: Callable[[tuple[str, ...]], Meeting], logs: Records
) -> None:
    m = meeting(FOUR)
    for host in FOUR[:3]:
        m.start(host)
    logs.wait_for("host algo-2 joined")
    logs.wait_for("host algo-3 joined")
    stopped = time.monotonic()
    m.interrupts["algo-2"].post(signal.SIGTERM)
    results = m.wait()
    cause = "the job was stopped by SIGTERM on algo-2 while the hosts were meeting"
    mine = results["algo-2"]
    assert isinstance(mine, MeetStopped) and isinstance(mine, StopRequested)
    assert (mine.exit_code, mine.signum, str(mine)) == (143, signal.SIGTERM, cause)
    for host in ("algo-1", "algo-3"):
        error = results[host]
        assert isinstance(error, JobAborted), error
        assert (error.exit_code, str(error)) == (143, cause)
    # Not the 30 s peer timeout: everyone knew at once.
    assert max(m.ended.values()) - stopped < 5.0
    logs.wait_for("host algo-2 failed: " + cause)


def test_the_leader_stopped_while_meeting_stops_every_host_at_once(
    meeting: Callable[[tuple[str, ...]], Meeting], logs: Records
) -> None:
    m = meeting(FOUR)
    for host in FOUR[:3]:
        m.start(host)
    logs.wait_for("host algo-2 joined")
    logs.wait_for("host algo-3 joined")
    stopped = time.monotonic()
    m.interrupts["algo-1"].post(signal.SIGINT)
    results = m.wait()
    cause = "the job was stopped by SIGINT on algo-1 while the hosts were meeting"
    mine = results["algo-1"]
    assert isinstance(mine, MeetStopped) and (mine.exit_code, str(mine)) == (130, cause)
    for host in ("algo-2", "algo-3"):
        error = results[host]
        assert isinstance(error, JobAborted), error
        assert (error.exit_code, str(error)) == (130, cause)
    assert max(m.ended.values()) - stopped < 5.0


def test_the_leaders_abort_names_the_host_and_the_signal(logs: Records) -> None:
    """What a follower receives on the wire when the leader is stopped."""
    port = free_tcp_port()
    interrupt = Interrupt()
    outcome: list[object] = []

    def lead() -> None:
        try:
            meet(meet_request("algo-1", HOSTS, port), queue.SimpleQueue(), 29500, interrupt)
        except MeetStopped as e:
            outcome.append(e)

    thread = threading.Thread(target=lead, daemon=True)
    thread.start()
    end = None
    deadline = time.monotonic() + WAIT_S
    while end is None:
        try:
            end = RawEnd.connect(port)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    end.send({"type": "hello", "host": "algo-2", "slots": 1})
    logs.wait_for("host algo-2 joined")
    interrupt.post(signal.SIGTERM)
    got = [m for m in end.receive() if m["type"] != "heartbeat"]
    assert got[0]["type"] == "abort"
    assert (got[0]["code"], got[0]["host"], got[0]["signal"]) == (143, "algo-1", "SIGTERM")
    end.close()
    thread.join(WAIT_S)
    assert len(outcome) == 1


def sigterm_once_joined(logs: Records, host: str) -> None:
    """SIGTERM to this process (its main thread is in `meet`) once `host` has joined."""
    logs.wait_for(f"host {host} joined")
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_real_sigterm_while_the_follower_waits_for_the_plan(
    meeting: Callable[[tuple[str, ...]], Meeting], logs: Records
) -> None:
    """The signal handler posts to the Interrupt while `meet` blocks in this (the main)
    thread: the handler takes no lock, the wait wakes at once."""
    m = meeting(("algo-1", "algo-2", "algo-3"))
    m.start("algo-1")
    interrupt = Interrupt()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: interrupt.post(signum))
    killer = threading.Thread(target=sigterm_once_joined, args=(logs, "algo-2"), daemon=True)
    try:
        killer.start()
        with pytest.raises(MeetStopped) as stopped:
            meet(meet_request("algo-2", m.hosts, m.port), queue.SimpleQueue(), 29500, interrupt)
        killed = time.monotonic()
    finally:
        killer.join(WAIT_S)
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.exit_code == 143
    error = m.wait()["algo-1"]
    assert isinstance(error, JobAborted) and error.exit_code == 143
    assert m.ended["algo-1"] - killed < 5.0


def test_a_stop_raised_by_a_signal_handler_inside_meet_is_told_to_the_others_too(
    meeting: Callable[[tuple[str, ...]], Meeting], logs: Records
) -> None:
    """A handler that raises `StopRequested` in the waiting thread (as the launcher's
    `raising_signals` does) instead of posting to the Interrupt: the others learn it as well."""
    m = meeting(("algo-1", "algo-2", "algo-3"))
    m.start("algo-1")

    def raising(signum: int, frame: object) -> None:
        raise StopRequested(signum, "algo-2")

    previous = signal.signal(signal.SIGTERM, raising)
    killer = threading.Thread(target=sigterm_once_joined, args=(logs, "algo-2"), daemon=True)
    try:
        killer.start()
        with pytest.raises(MeetStopped) as stopped:
            meet(meet_request("algo-2", m.hosts, m.port), queue.SimpleQueue(), 29500)
        killed = time.monotonic()
    finally:
        killer.join(WAIT_S)
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.exit_code == 143
    error = m.wait()["algo-1"]
    assert isinstance(error, JobAborted) and error.exit_code == 143
    assert str(error) == "the job was stopped by SIGTERM on algo-2 while the hosts were meeting"
    assert m.ended["algo-1"] - killed < 5.0


def test_a_follower_stopped_before_it_reached_the_leader_just_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_tcp_port()  # nobody listens
    interrupt = Interrupt()
    done: list[BaseException] = []
    attempts: list[str] = []
    real_resolve = net.resolve

    def counting_resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        attempts.append(host)
        return real_resolve(host, port)

    monkeypatch.setattr(net, "resolve", counting_resolve)

    def follow() -> None:
        try:
            meet(meet_request("algo-2", HOSTS, port), queue.SimpleQueue(), 29500, interrupt)
        except MeetStopped as e:
            done.append(e)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_until(lambda: len(attempts) >= 3)  # refused a few times: backing off between tries
    posted = time.monotonic()
    interrupt.post(signal.SIGHUP)
    thread.join(WAIT_S)
    assert time.monotonic() - posted < 3.0
    assert len(done) == 1 and isinstance(done[0], MeetStopped) and done[0].exit_code == 129


# --- `launcher local`: the control port and the job token (issue 12, point 5) -----------------

LAUNCHER = str(Path(sys.executable).with_name("launcher"))

# Each rank records whether it sees the job token, and every listening socket its launcher
# ancestors hold (the leader's control port among them, while the job runs).
INSPECT = r"""
import json, os, sys
from pathlib import Path
import psutil

listening = []
for ancestor in psutil.Process().parents():
    try:
        found = ancestor.net_connections(kind="inet")
    except psutil.Error:  # init and other processes outside the job
        continue
    for c in found:
        if c.status == psutil.CONN_LISTEN:
            listening.append([ancestor.pid, c.laddr.ip, c.laddr.port])
out = Path(sys.argv[sys.argv.index("--dir") + 1]) / f"rank-{os.environ['RANK']}.json"
out.write_text(json.dumps({
    "host": os.environ["SM_CURRENT_HOST"],
    "token": os.environ.get("LAUNCHER_JOB_TOKEN"),
    "listening": listening,
}))
"""


@pytest.fixture
def local_job(tmp_path: Path, no_leaks: object) -> dict[int, dict[str, Any]]:
    """A real `launcher local --hosts 2` job of one rank per host running INSPECT; what each
    rank saw, by rank."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "inspect_rank.py").write_text(INSPECT)
    shared = tmp_path / "shared"
    shared.mkdir()
    argv = [LAUNCHER, "local", "--hosts", "2", "--nproc-per-host", "1"]
    argv += ["--job-dir", str(tmp_path / "jobs"), str(code / "inspect_rank.py")]
    argv += ["--dir", str(shared)]
    env = {k: v for k, v in os.environ.items() if k != "LAUNCHER_JOB_TOKEN"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in shared.glob("rank-*")}


def test_launcher_local_listens_on_loopback_only(local_job: dict[int, dict[str, Any]]) -> None:
    """Before, the leader of a local job listened on every interface (::)."""
    assert sorted(local_job) == [0, 1]
    leader_side = local_job[0]["listening"]  # rank 0 runs under algo-1, the leader
    assert leader_side, "the leader's control port was not found among its sockets"
    assert {ip for _, ip, _ in leader_side} == {"127.0.0.1"}, leader_side


def test_launcher_local_ranks_never_see_the_job_token(
    local_job: dict[int, dict[str, Any]],
) -> None:
    assert sorted(local_job) == [0, 1]
    assert [r["token"] for r in local_job.values()] == [None, None]


# --- the hang's hold ------------------------------------------------------------------------------
# A hang is the one failure after which no host may stop a rank at once: every host must take its
# ranks' stacks while they still hang, or a host's teardown breaks the collective the others wait
# in and their stacks show the wreck instead (docs/hangs.md). Whoever declares the hang (the
# leader, or a follower through FAILED 124) has the leader HOLD every other host; `hang` and
# `held` block until the leader's ABORT, which goes out only when every host said HELD, was lost,
# or the hold's deadline passed.

CULPRIT = "hang: no progress for 30 s; suspect rank 3 on host algo-2 at train.py:12 in step"


def started(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def ended(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(WAIT_S)
        assert not thread.is_alive(), f"{thread.name} is still held"


def meet_all(job: Job) -> None:
    job.join("algo-2")
    job.join("algo-3")
    job.meet()
    job.joined()


def test_a_followers_hang_holds_every_host_until_each_took_its_stacks(job: Job) -> None:
    meet_all(job)
    leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
    declarer = started(lambda: f2.hang(CULPRIT), "algo-2 hang")
    # The leader and the other follower learn the verdict at once, to take their stacks...
    assert wait_event(leader.events) == RemoteAbort(CULPRIT, 124)
    assert wait_event(f3.events) == RemoteAbort(CULPRIT, 124)
    # ...and nobody is released before every host took them: algo-3 has, the leader not yet.
    other = started(f3.held, "algo-3 held")
    assert declarer.is_alive() and other.is_alive()
    start = time.monotonic()
    leader.held()  # returns once algo-3's HELD is in, and sends the ABORT that releases all
    assert time.monotonic() - start < follower_mod.HOLD_TIMEOUT_S
    ended(declarer, other)
    for member in (leader, f2, f3):
        assert (member.decision.exit_code, member.decision.reason) == (124, CULPRIT)
    assert not events(f2.events)  # the declaring host is told nothing it did not know


def test_the_leaders_hang_holds_every_follower_then_aborts_them(job: Job) -> None:
    meet_all(job)
    leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
    declarer = started(lambda: leader.hang(CULPRIT), "algo-1 hang")
    for follower in (f2, f3):
        assert wait_event(follower.events) == RemoteAbort(CULPRIT, 124)
    held2 = started(f2.held, "algo-2 held")
    assert declarer.is_alive() and held2.is_alive()  # algo-3's stacks are not taken yet
    held3 = started(f3.held, "algo-3 held")
    ended(declarer, held2, held3)
    assert f2.decision.exit_code == f3.decision.exit_code == 124


def test_two_hosts_declaring_at_once_end_in_one_release(job: Job) -> None:
    meet_all(job)
    leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
    threads = [
        started(lambda: leader.hang(CULPRIT), "algo-1 hang"),
        started(lambda: f2.hang("hang: algo-2's own verdict"), "algo-2 hang"),
    ]
    assert wait_event(f3.events).exit_code == 124  # type: ignore[union-attr]
    threads.append(started(f3.held, "algo-3 held"))
    ended(*threads)
    assert {m.decision.exit_code for m in (leader, f2, f3)} == {124}


def test_a_host_lost_during_the_hold_is_not_waited_for(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leader_mod, "HOLD_TIMEOUT_S", 60.0)  # only the loss can end it soon
    meet_all(job)
    leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
    declarer = started(lambda: leader.hang(CULPRIT), "algo-1 hang")
    assert wait_event(f3.events).exit_code == 124  # type: ignore[union-attr]
    other = started(f3.held, "algo-3 held")
    f2.close()  # algo-2 dies before it answers
    ended(declarer, other)


def test_a_silent_host_delays_the_release_only_to_the_holds_deadline(
    job: Job, monkeypatch: pytest.MonkeyPatch, logs: Records
) -> None:
    monkeypatch.setattr(leader_mod, "HOLD_TIMEOUT_S", 0.5)
    meet_all(job)
    leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
    start = time.monotonic()
    leader.hang(CULPRIT)  # neither follower answers: the hold ends at its deadline
    assert 0.5 <= time.monotonic() - start < 0.5 + WAIT_S / 2
    logs.wait_for("no stacks from algo-2, algo-3 within 0.5 s of the hang's hold")
    # The ABORT still reaches them: their late HELD returns at once, released.
    ended(started(f2.held, "algo-2 held"), started(f3.held, "algo-3 held"))
    assert f2.decision.exit_code == f3.decision.exit_code == 124


def test_declarations_and_holds_racing_in_any_order_always_release_every_host() -> None:
    """Stress (100 rounds): the leader's and a follower's verdicts race each other and the
    third host's HELD; whatever the interleaving, every host is released, with exit 124."""
    for round_ in range(100):
        job = Job(make_leader())
        try:
            meet_all(job)
            leader, f2, f3 = job.leader, job.followers["algo-2"], job.followers["algo-3"]
            calls: list[Callable[[], None]] = [
                functools.partial(leader.hang, CULPRIT),
                functools.partial(f2.hang, "hang: algo-2's own verdict"),
                f3.held,
            ]
            order = [calls[(round_ + i) % 3] for i in range(3)]
            ended(*(started(call, f"round {round_} call {i}") for i, call in enumerate(order)))
            assert {m.decision.exit_code for m in (leader, f2, f3)} == {124}, round_
        finally:
            job.close()


# --- `launcher stacks` through the leader -------------------------------------------------------


def test_the_leader_gathers_every_followers_stacks_and_names_the_silent_one(job: Job) -> None:
    meet_all(job)
    f2, f3 = job.followers["algo-2"], job.followers["algo-3"]
    f2.local_stacks = lambda: "# rank 1 on algo-2, pid 7: taken with py-spy\n  step (train.py:3)"
    assert job.leader.gather_stacks(WAIT_S) == {
        "algo-2": "# rank 1 on algo-2, pid 7: taken with py-spy\n  step (train.py:3)",
        "algo-3": "# algo-3: no stacks (its ranks are not running, or hang detection is off)",
    }
    stuck = threading.Event()
    f3.local_stacks = lambda: "late" if stuck.wait(WAIT_S) else "never"
    start = time.monotonic()
    answers = job.leader.gather_stacks(0.5)
    assert time.monotonic() - start < WAIT_S / 2
    assert answers["algo-3"] == "# algo-3: no stacks (no answer within 0.5 s)"
    stuck.set()  # its late answer is dropped: the request is over
    assert job.leader.gather_stacks(WAIT_S)["algo-3"] == "late"
