"""Whole-job restarts across real network namespaces: three hosts each run the real `train`.

Every rank joins through `collectives.init` (gloo), runs one all_reduce and records its restart
variables in the shared folder. A follower's rank that fails in the first attempt makes the
leader restart the whole job: every host meets again, and every rank of attempt 1, on every
host, sees TORCHELASTIC_RESTART_COUNT=1 with one new run id. A follower launcher SIGKILLed
cannot come back: the leader restarts, waits for it up to the peer deadline, and every host
left exits 3 with that root cause first and the lost host's attempt listed under it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.multihost.conftest import ClusterFactory
from tests.multihost.test_multihost import GRACE_S, HEARTBEAT_S, Job, first_line

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(150)]

PROGRAM = r"""
import argparse, json, os, time
from pathlib import Path

import torch
import collectives

p = argparse.ArgumentParser()
p.add_argument("--dir")
p.add_argument("--fail-host", default="")
p.add_argument("--hold", default="")
args, _ = p.parse_known_args()
shared = Path(args.dir)
host = os.environ["SM_CURRENT_HOST"]
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])

collectives.init("gloo", timeout=120)
rank = collectives.rank()
x = torch.ones(4)
collectives.all_reduce(x)
keys = ("TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
        "MASTER_PORT")
me = {"host": host, "pid": os.getpid(), **{k: os.environ.get(k) for k in keys}}
(shared / f"start-{attempt}-{rank}").write_text(json.dumps(me))
if args.hold and attempt == 0:
    time.sleep(120)  # the launchers must stop this long before
if host == args.fail_host and attempt == 0:
    raise RuntimeError(f"rank {rank} failed on purpose")
collectives.all_reduce(x)
collectives.shutdown()
"""


class RestartJob(Job):
    """`Job` with the program above."""

    program = PROGRAM

    def starts(self, attempt: int) -> dict[int, dict[str, Any]]:
        found = {}
        for path in self.shared.glob(f"start-{attempt}-*"):
            found[int(path.name.rsplit("-", 1)[1])] = json.loads(path.read_text())
        return found


def test_a_follower_rank_failing_once_restarts_every_host_as_one_attempt(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = RestartJob(cluster, tmp_path, **{"fail-host": "algo-2"})
    job.start_all(LAUNCHER_MAX_RESTARTS="2")
    codes = job.wait_exits(120)
    assert codes == {"algo-1": 0, "algo-2": 0, "algo-3": 0}, job.report("expected success")
    first, second = job.starts(0), job.starts(1)
    assert sorted(second) == [0, 1, 2], job.report("attempt 1's ranks")
    assert {r["host"] for r in second.values()} == {"algo-1", "algo-2", "algo-3"}
    assert {r["TORCHELASTIC_RESTART_COUNT"] for r in second.values()} == {"1"}
    assert {r["TORCHELASTIC_MAX_RESTARTS"] for r in second.values()} == {"2"}
    (run_id,) = {r["TORCHELASTIC_RUN_ID"] for r in second.values()}
    assert run_id not in {r["TORCHELASTIC_RUN_ID"] for r in first.values()}
    assert len({r["MASTER_PORT"] for r in second.values()}) == 1
    for name, launcher in job.launchers.items():
        assert launcher.succeeded, name
        assert "job succeeded after 2 attempts" in launcher.output(), name
    assert "warning: restarting the job as attempt 1" in job.launchers["algo-1"].output()
    job.assert_nothing_left()


def test_a_follower_launcher_sigkilled_does_not_come_back_and_every_host_exits_3(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = RestartJob(cluster, tmp_path, hold="yes")
    peer_s = 4
    job.start_all(LAUNCHER_MAX_RESTARTS="3", LAUNCHER_PEER_TIMEOUT=str(peer_s))
    job.wait_until(lambda: len(job.starts(0)) == 3, 90, "attempt 0's ranks")
    job.launchers["algo-2"].proc.send_signal(signal.SIGKILL)
    codes = job.wait_exits(HEARTBEAT_S + GRACE_S + peer_s + 20)
    assert codes == {"algo-1": 3, "algo-2": -signal.SIGKILL, "algo-3": 3}, job.report("codes")
    assert not job.starts(1)  # no rank of a second attempt ever started
    for name in ("algo-1", "algo-3"):
        text = job.launchers[name].failure()
        line = first_line(text)
        assert line.startswith(f"hosts never arrived within {peer_s} s: algo-2"), text
    leader = job.launchers["algo-1"].failure()
    assert "  attempt 0: exit 1: host algo-2 was lost (" in leader
    job.assert_nothing_left()
