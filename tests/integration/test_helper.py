"""`procs.Helper`: one long-running helper process (sshd, an ssh master), run like a rank.

Real processes. In this process: its exit reaches the event queue as `RankExited` with its last
words in the tail; `stop` ends it and its process group (SIGKILL after the grace); it may start
again after `stop`, never after `close`; a program that cannot start leaves nothing behind.
In a launcher-shaped process (`tests/bin/helper_driver.py`: watchdog, subreaper, cgroup, as
every command sets up), with and without the job's cgroup: what the helper left outside its
group (a double-forked daemon ignoring SIGTERM) ends with `stop`, and everything ends with the
launcher even when it is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from launcher import containment, procs
from launcher.errors import SpawnError
from launcher.events import Event, RankExited
from tests.helpers.procwatch import LeakWatch
from tests.helpers.waiting import wait_for
from tests.integration.conftest import PYTHON, REPO, Launch, Launched, gone, prog

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
MODES = ["cgroup", "no-cgroup"]

# Ignores SIGTERM, starts a child in its own process group that ignores it too, announces
# both pids on stderr, then sleeps until killed.
STUBBORN = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, b"x")
    while True:
        signal.pause()
os.read(r, 1)
print("armed", os.getpid(), file=sys.stderr, flush=True)
while True:
    signal.pause()
"""


def helper(argv: list[str], tmp_path: Path, events: queue.SimpleQueue[Event]) -> procs.Helper:
    return procs.Helper("test helper", argv, tmp_path, dict(os.environ), events)


def armed(h: procs.Helper) -> list[int]:
    """The helper's pid and its child's, once the STUBBORN program announced itself."""
    wait_for(lambda: "armed" in h.log_tail(), WAIT_S, "the helper to arm", stop_if=_exited(h))
    found = re.search(r"armed (\d+)", h.log_tail())
    assert found, h.log_tail()
    pid = int(found[1])
    return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def _exited(h: procs.Helper) -> Callable[[], str | None]:
    return lambda: None if h.running() else f"the helper exited ({h.log_tail()!r})"


def test_a_helpers_exit_reaches_the_queue_with_its_last_words(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    code = "import sys; print('going away', file=sys.stderr); sys.exit(3)"
    h = helper([sys.executable, "-c", code], tmp_path, events)
    try:
        h.start()
        event = events.get(timeout=WAIT_S)
        assert isinstance(event, RankExited)
        assert (event.rank, event.returncode) == (0, 3)
        assert not h.running()
        assert h.log_tail() == "going away"
    finally:
        h.close(1.0)
    assert h.log_tail() == ""  # closed: nothing left to read


def test_stop_ends_its_group_then_it_may_start_again_until_closed(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    h = helper([sys.executable, "-c", STUBBORN], tmp_path, events)
    try:
        h.start()
        first = armed(h)
        assert len(first) == 2
        h.stop(0.2)  # both ignore SIGTERM: SIGKILL after the grace
        assert all(map(gone, first))
        event = events.get(timeout=WAIT_S)
        assert isinstance(event, RankExited)
        assert event.returncode == -signal.SIGKILL
        assert not h.running()
        h.stop(0.2)  # idempotent

        h.start()  # a retried connection: the same helper, started again
        second = armed(h)
        assert set(second).isdisjoint(first)
        h.close(0.2)
        assert all(map(gone, second))
        with pytest.raises(SpawnError, match="test helper was not started"):
            h.start()  # closed for good
        assert not h.running()
    finally:
        h.close(0.0)


def test_a_helper_killed_by_stop_reports_sigkill_not_a_status_taken_by_the_sweep(
    tmp_path: Path, no_leaks: LeakWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ProcessSet.close` collects the orphans it killed, never one of its own processes: a
    status collected there would reach the helper's waiter as exit code 0. The sweep is made
    to find every one of its own children dead (it waits for them, without collecting), so
    that the race it would lose now and then is lost every time."""
    real_reap = containment.reap

    def reap_once_dead(pids: Iterable[int]) -> None:
        pids = set(pids)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):  # not our child: not waited for
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        real_reap(pids)

    monkeypatch.setattr(containment, "reap", reap_once_dead)
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    h = helper([sys.executable, "-c", STUBBORN], tmp_path, events)
    try:
        h.start()
        armed(h)
        h.stop(0.2)
        event = events.get(timeout=WAIT_S)
        assert isinstance(event, RankExited)
        assert event.returncode == -signal.SIGKILL
    finally:
        h.close(0.0)


def test_a_helper_that_cannot_start_leaves_nothing_behind(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    threads = {t.name for t in threading.enumerate()}
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    h = helper([str(tmp_path / "absent")], tmp_path, events)
    for _ in range(2):  # a failed start leaves it startable: the second try fails the same way
        with pytest.raises(SpawnError, match="cannot start"):
            h.start()
        assert not h.running()
        assert h.log_tail() == ""
    assert {t.name for t in threading.enumerate()} <= threads  # no output pump left running
    assert events.empty()
    h.close(0.0)


# --- contained like a rank, in a launcher-shaped process --------------------------------------


def drive(launch: Launch, mode: str, what: str) -> Launched:
    env = {"LAUNCHER_CGROUP": "off" if mode == "no-cgroup" else "auto", "PYTHONPATH": str(REPO)}
    return launch(command=[PYTHON, prog("helper_driver.py"), what], env=env)


def reports(job: Launched) -> list[dict[str, Any]]:
    return [json.loads(line) for line in job.out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("mode", MODES)
def test_stop_and_close_end_what_the_helper_left_outside_its_group(
    launch: Launch, mode: str
) -> None:
    job = drive(launch, mode, "stop")
    assert job.wait() == 0, job.err
    got = reports(job)
    assert [next(iter(r)) for r in got] == ["armed", "left", "armed", "left", "closed"], got
    assert got[1]["left"] == [] and got[3]["left"] == []  # the daemons too, at once
    assert "not started" in got[4]["closed"]
    assert all(gone(pid) for pid in got[0]["armed"] + got[2]["armed"])


@pytest.mark.parametrize("mode", MODES)
def test_a_helper_and_what_it_left_die_with_a_killed_launcher(launch: Launch, mode: str) -> None:
    """The watchdog's work: the cgroup, or the marker in the helper's environment, finds the
    helper and its daemon once the launcher (their subreaper) is gone."""
    job = drive(launch, mode, "hold")
    job.wait_until(lambda: reports(job), WAIT_S, "the helper to arm")
    pids = reports(job)[0]["armed"]
    job.send(signal.SIGKILL)
    job.wait()
    wait_for(lambda: all(map(gone, pids)), 5, "the helper and its daemon to be gone")
