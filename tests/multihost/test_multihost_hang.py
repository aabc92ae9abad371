"""Hang detection across real network namespaces: a follower's rank stuck before a collective.

Three simulated hosts run the real `train` (the Job helper of test_multihost.py, with a rank
program of its own): every rank joins through `collectives.init` and runs all_reduce; rank 1
on algo-2 sleeps instead of joining the 4th. With `LAUNCHER_HANG_TIMEOUT=3`, algo-2 declares
the hang and names its rank; the leader's ABORT carries the culprit line to every host; each
host takes its own ranks' stacks, every launcher exits 124 with the same first line in
output/failure, and nothing is left in any namespace.
"""

from __future__ import annotations

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
        # The other hosts take theirs when the ABORT arrives: by then a rank may already have
        # seen a peer's teardown and left its all_reduce (docs/hangs.md, "Limits").
    job.assert_nothing_left()
