"""Hang detection across real network namespaces: a follower's rank stuck before a collective.

Three simulated hosts run the real `train` (the Job helper of test_multihost.py, with a rank
program of its own): every rank joins through `collectives.init` and runs all_reduce; rank 1
on algo-2 sleeps instead of joining the 4th. With `LAUNCHER_HANG_TIMEOUT=3`, algo-2 declares
the hang and names its rank; the leader's ABORT carries the culprit line to every host; each
host takes its own ranks' stacks, every launcher exits 124 with the same first line in
output/failure, and nothing is left in any namespace. No host stops a rank before every host
has taken its stacks (the leader's HOLD): the healthy hosts' ranks are caught inside the
all_reduce they wait in, not after a peer's teardown broke it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multihost.conftest import ClusterFactory
from tests.multihost.test_multihost import Job, first_line

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(150)]

WINDOW_S = 3

PROGRAM = r"""
import argparse, json, os, sys, time
from pathlib import Path

import torch
import collectives

p = argparse.ArgumentParser()
p.add_argument("--dir")
p.add_argument("--stuck-host", default="")
args, _ = p.parse_known_args()
shared = Path(args.dir)
host = os.environ["SM_CURRENT_HOST"]


def stall():
    while True:
        time.sleep(3600)


collectives.init("gloo", timeout=300)
rank = collectives.rank()
x = torch.ones(4)
for _ in range(3):
    collectives.all_reduce(x)
if host == args.stuck_host:
    (shared / f"stuck-{rank}").write_text(host)
    stall()
(shared / f"ready-{rank}").write_text(json.dumps({"rank": rank, "host": host}))
collectives.all_reduce(x)
"""


class HangJob(Job):
    """`Job` with the program above."""

    program = PROGRAM


def test_a_follower_rank_stuck_before_a_collective_ends_every_host_with_124(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = HangJob(cluster, tmp_path, **{"stuck-host": "algo-2"})
    job.start_all(LAUNCHER_HANG_TIMEOUT=str(WINDOW_S))
    job.wait_until((job.shared / "stuck-1").exists, 90, "rank 1 to be stuck")
    codes = job.wait_exits(2 * WINDOW_S + 5 + 10)
    assert codes == {"algo-1": 124, "algo-2": 124, "algo-3": 124}, job.report("expected 124")
    lines = {name: first_line(launcher.failure()) for name, launcher in job.launchers.items()}
    line = lines["algo-2"]
    assert set(lines.values()) == {line}, lines
    assert line.startswith("hang: no progress for "), line
    assert "; suspect rank 1 on host algo-2 at " in line, line
    assert "prog.py:" in line and " in stall (" in line, line
    for rank, (name, launcher) in enumerate(job.launchers.items()):
        stacks = launcher.tree / "output" / "stacks"
        assert [p.name for p in stacks.iterdir()] == [f"rank-{rank}.txt"], name
        text = (stacks / f"rank-{rank}.txt").read_text()
        assert text.startswith(f"# rank {rank} on {name}, pid "), (name, text[:200])
        if name == "algo-2":  # the culprit's stack is taken before anything is stopped
            assert "stall" in text, text
        else:  # held until taken: still inside the collective, no peer torn down yet
            assert "all_reduce" in text and "stall" not in text, (name, text)
    job.assert_nothing_left()


IDLE_PROGRAM = r"""
import argparse, json, os, time
from pathlib import Path

import torch
import collectives

p = argparse.ArgumentParser()
p.add_argument("--dir")
args, _ = p.parse_known_args()
shared = Path(args.dir)
collectives.init("gloo", timeout=300)
rank = collectives.rank()
collectives.all_reduce(torch.ones(4))


def wait_here():
    (shared / f"ready-{rank}").write_text(json.dumps({"rank": rank}))
    while True:
        time.sleep(3600)


wait_here()
"""


class IdleJob(Job):
    """Every rank waits in `wait_here` once it has joined one all_reduce."""

    program = IDLE_PROGRAM


def run_stacks(job: Job, env: dict[str, str], *args: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "launcher", "stacks", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, (shown.stderr, job.output())
    return shown.stdout


def test_launcher_stacks_on_the_leaders_host_prints_every_hosts_ranks(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = IdleJob(cluster, tmp_path)
    env = {"TMPDIR": str(tmp_path)}  # the registry of running jobs: this test's own
    job.start_all(**env)
    job.wait_ready(3, 60)
    leader = str(job.launchers["algo-1"].proc.pid)
    everyone = run_stacks(job, env, "--pid", leader)
    for rank, name in enumerate(job.names):
        assert f"# rank {rank} on {name}, pid " in everyone, everyone
    assert everyone.count("wait_here") >= 3, everyone
    mine = run_stacks(job, env, "--pid", leader, "--local")
    assert "# rank 0 on algo-1, pid " in mine and "algo-2" not in mine, mine
    assert job.exited_early() is None, job.output()  # nothing was stopped
    job.launchers["algo-1"].proc.send_signal(signal.SIGTERM)
    codes = job.wait_exits(30)
    assert codes["algo-1"] == 128 + signal.SIGTERM, job.report("leader stopped")
    assert not list(tmp_path.glob("launcher-running/*.sock"))
    job.assert_nothing_left()
