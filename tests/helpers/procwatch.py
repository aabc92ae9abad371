"""Process-leak checking for tests that start processes.

The project rule: every process-spawning test checks afterwards that no process it started
survives. Two nets catch survivors:

* **Descendants**: processes under the test process (``psutil`` children, recursive) that did not
  exist when the test began.
* **Tagged processes**: the ``no_leaks`` fixture puts ``LAUNCHER_TEST_TAG=<uuid>`` into
  ``os.environ`` for the duration of the test, so everything the test starts with an inherited
  environment carries it, including processes that double-forked or called ``setsid`` and so
  left the process tree. ``/proc/*/environ`` is scanned for it. A test that builds a child's
  environment from scratch should copy the tag in (``watch.env()`` returns it).

After the test, survivors get a short grace period (a poll with a deadline: launchers may still
be reaping their ranks), then they are killed with SIGKILL and the test fails, naming each
survivor's pid and command line.

Usage from any test directory, once ``tests/conftest.py`` imports the fixture::

    def test_something(no_leaks: LeakWatch) -> None: ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

TAG_VAR = "LAUNCHER_TEST_TAG"
DEFAULT_GRACE_S = 5.0
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Survivor:
    """A process that outlived the test that started it."""

    pid: int
    cmdline: str
    why: str  # "descendant" or "tagged"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.why}): {self.cmdline}"


class LeakError(AssertionError):
    """Processes survived a test; they have been killed by the time this is raised."""


def pids_with_env(var: str, value: str) -> set[int]:
    """Return the pids (other than this process) whose initial environment has ``var=value``.

    Reads ``/proc/<pid>/environ``; processes that vanish or cannot be read are skipped, and so
    are zombies (their environ reads empty). Needs root to see other users' processes.
    """
    needle = f"{var}={value}".encode()
    found: set[int] = set()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> psutil.Process | None:
    """The process if it exists and is not a zombie, else None."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited; it only awaits reaping)."""
    return _alive(pid) is not None


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring those that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], deadline_s: float) -> set[int]:
    """Poll until none of ``pids`` is alive or ``deadline_s`` passes; return those still alive."""
    pending = set(pids)
    deadline = time.monotonic() + deadline_s
    while True:
        pending = {p for p in pending if is_alive(p)}
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(_POLL_S)


def _describe(pid: int, why: str) -> Survivor | None:
    proc = _alive(pid)
    if proc is None:
        return None
    try:
        cmdline = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmdline = "?"
    return Survivor(pid, cmdline, why)


class LeakWatch:
    """Remembers what ran before a test and finds what the test left running afterwards."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children(recursive=True)}

    def env(self) -> dict[str, str]:
        """The marker variable, for tests that build a child's environment from scratch."""
        return {TAG_VAR: self.tag}

    def survivors(self) -> list[Survivor]:
        """Live (non-zombie) processes started since this watch began, by either net."""
        found: dict[int, Survivor] = {}
        for child in self._me.children(recursive=True):
            if child.pid not in self._before and (s := _describe(child.pid, "descendant")):
                found[child.pid] = s
        for pid in pids_with_env(TAG_VAR, self.tag):
            if pid not in found and (s := _describe(pid, "tagged")):
                found[pid] = s
        return sorted(found.values(), key=lambda s: s.pid)

    def check(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Wait up to ``grace_s`` for survivors to exit; kill any left and raise LeakError."""
        deadline = time.monotonic() + grace_s
        left = self.survivors()
        while left and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            left = self.survivors()
        if not left:
            return
        signal_all((s.pid for s in left), signal.SIGKILL)
        # Wait for the kills to land so the next test does not see these processes.
        wait_gone((s.pid for s in left), 5.0)
        lines = "\n  ".join(str(s) for s in left)
        raise LeakError(
            f"{len(left)} process(es) survived the test {grace_s:.1f} s after it ended "
            f"(now killed):\n  {lines}"
        )


@pytest.fixture
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[LeakWatch]:
    """Tag every process the test starts and fail the test if any survives it.

    Fixtures are torn down in reverse order, so any fixture that requests ``no_leaks`` (like
    ``cluster_factory``) has finished its own cleanup before this check runs.
    """
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VAR, tag)
    watch = LeakWatch(tag)
    yield watch
    failure = None
    try:
        watch.check()
    except LeakError as exc:
        failure = str(exc)
    if failure is not None:  # outside the except: no "during handling" chain in the report
        pytest.fail(failure, pytrace=False)
