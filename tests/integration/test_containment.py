"""Nothing a rank starts survives the job: sessions of their own, double-forked daemons.

Every ending is covered (success, failure, SIGTERM to the launcher, SIGKILL of the launcher),
with the job's cgroup (where this host allows one) and without it (`LAUNCHER_CGROUP=off`:
subreaper, process tree and the watchdog's environment marker only). The rank program
`tests/bin/escape.py` leaves a child in its own session and a double-forked daemon behind,
both optionally ignoring SIGTERM.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from launcher import containment
from tests.helpers.waiting import wait_for
from tests.integration.conftest import Launch, Launched, gone, prog

pytestmark = pytest.mark.timeout(60)

MODES = ["cgroup", "no-cgroup"]


def start(launch: Launch, mode: str, *args: str) -> Launched:
    env = {"LAUNCHER_CGROUP": "off" if mode == "no-cgroup" else "auto"}
    argv = ["run", "--nproc-per-host", "2", "--grace-period", "1", prog("escape.py"), *args]
    return launch(argv, env=env)


def escapees(ranks: list[dict[str, Any]]) -> list[int]:
    return [r["session"] for r in ranks] + [r["daemon"] for r in ranks]


def cgroups_of(job: Launched) -> list[str]:
    """The job cgroups this test's launcher made and left (named `launcher-<pid>-<hex>`): other
    launchers on the same machine have their own, and are none of this test's business."""
    own = containment.own_cgroup_dir()
    return [] if own is None else sorted(p.name for p in own.glob(f"launcher-{job.pid}-*"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("code", "ignore"), [(0, False), (3, False), (0, True), (3, True)])
def test_escapees_die_with_a_job_that_ends(
    launch: Launch, mode: str, code: int, ignore: bool
) -> None:
    job = start(launch, mode, "--exit", str(code), *(["--ignore-term"] if ignore else []))
    assert job.wait() == code, job.err
    ranks = job.ready(2)
    left = [pid for pid in escapees(ranks) if not gone(pid)]
    assert not left, f"alive after the launcher exited: {left}"
    assert cgroups_of(job) == []


@pytest.mark.parametrize("mode", MODES)
def test_escapees_die_when_the_launcher_is_stopped(launch: Launch, mode: str) -> None:
    job = start(launch, mode, "--ignore-term")
    ranks = job.ready(2)
    job.send(signal.SIGTERM)
    assert job.wait() == 128 + signal.SIGTERM, job.err
    left = [pid for pid in escapees(ranks) if not gone(pid)]
    assert not left, f"alive after the launcher exited: {left}"


@pytest.mark.parametrize("mode", MODES)
def test_escapees_die_when_the_launcher_is_killed(launch: Launch, mode: str) -> None:
    """The watchdog's work: the launcher (their subreaper) is gone, so the cgroup or the
    environment marker is what finds them."""
    job = start(launch, mode, "--ignore-term")
    ranks = job.ready(2)
    pids = [r["pid"] for r in ranks] + escapees(ranks)
    job.send(signal.SIGKILL)
    job.wait()
    wait_for(lambda: all(map(gone, pids)), 5, "every rank and escapee to be gone")
    wait_for(lambda: cgroups_of(job) == [], 5, "the job's cgroup to be removed")


def test_the_job_cgroup_holds_the_ranks(launch: Launch, tmp_path: Path) -> None:
    own = containment.own_cgroup_dir()
    if own is None:
        pytest.skip("no writable cgroup v2 here: the other layers are tested without it")
    job = start(launch, "cgroup")
    ranks = job.ready(2)
    members = {
        int(pid)
        for path in own.glob(f"launcher-{job.pid}-*/**/cgroup.procs")
        for pid in path.read_text().split()
    }
    assert set(escapees(ranks)) | {r["pid"] for r in ranks} <= members
    job.send(signal.SIGTERM)
    assert job.wait() == 128 + signal.SIGTERM
