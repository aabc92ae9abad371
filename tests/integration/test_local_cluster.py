"""`launcher local` end to end: N real `train` launchers on this machine, meeting on loopback.

Each test runs the real command line; every simulated host has its own SageMaker tree, its own
launcher process and its own ranks. What must hold: a real gloo job across hosts, one root
cause for a failure anywhere (in every host's output/failure and exit), the exit barrier, and
nothing left running afterwards (the `no_leaks` fixture).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.procwatch import no_leaks  # noqa: F401 - fixture

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(90)]

LAUNCHER = str(Path(sys.executable).with_name("launcher"))

# One program for every scenario; hyperparameters arrive as `--key value` argv.
PROGRAM = r"""
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--mode")
p.add_argument("--dir")
p.add_argument("--fail-rank", type=int, default=-1)
p.add_argument("--slow-host", default="")
args, _ = p.parse_known_args()
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
host = os.environ["SM_CURRENT_HOST"]
shared = Path(args.dir)
(shared / f"ready-{rank}").write_text(host)

if args.mode == "gloo":
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.full((4,), float(rank + 1))
    dist.all_reduce(t)
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR")
    info = {k: os.environ[k] for k in keys}
    print("RESULT " + json.dumps({"host": host, "sum": t.tolist(), **info}), flush=True)
    if rank == 0:
        torch.save({"sum": t}, os.path.join(os.environ["SM_MODEL_DIR"], "model.pt"))
    dist.destroy_process_group()
elif args.mode == "fail":
    if rank == args.fail_rank:
        while len(list(shared.glob("ready-*"))) < world:  # every rank is up
            time.sleep(0.01)
        raise ValueError(f"boom on purpose from rank {rank}")
    time.sleep(60)  # must be stopped by the launchers, long before this
elif args.mode == "barrier":
    if host == args.slow_host:
        time.sleep(1.5)
    (shared / f"end-{rank}").write_text(repr(time.time()))
"""


@dataclass(frozen=True, slots=True)
class LocalRun:
    returncode: int
    stdout: str
    stderr: str
    job: Path
    duration_s: float

    def tree(self, host: str) -> Path:
        return self.job / host

    def failure_first_line(self, host: str) -> str:
        return (self.tree(host) / "output" / "failure").read_text().splitlines()[0]


def run_local(tmp_path: Path, hosts: int, procs: int, *hps: str, timeout: float = 60) -> LocalRun:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "prog.py").write_text(PROGRAM)
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    argv = [
        LAUNCHER,
        "local",
        "--hosts",
        str(hosts),
        "--nproc-per-host",
        str(procs),
        "--grace-period",
        "5",
        "--job-dir",
        str(tmp_path / "jobs"),
        str(code / "prog.py"),
        "--dir",
        str(shared),
        *hps,
    ]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    duration = time.monotonic() - start
    found = re.search(r"^job:\s+(\S+)$", proc.stdout, re.M)
    assert found, f"no job folder printed:\n{proc.stdout}\n{proc.stderr}"
    return LocalRun(proc.returncode, proc.stdout, proc.stderr, Path(found[1]), duration)


def test_two_hosts_of_two_ranks_all_reduce_with_gloo_and_save_the_model(tmp_path: Path) -> None:
    run = run_local(tmp_path, 2, 2, "--mode", "gloo")
    assert run.returncode == 0, run.stderr
    results = {}
    for line in run.stdout.splitlines():
        if m := re.match(r"^\[(algo-\d):(\d)\] RESULT (.*)$", line):
            results[int(m[2])] = (m[1], json.loads(m[3]))
    assert sorted(results) == [0, 1, 2, 3]
    for rank, (prefix_host, r) in results.items():
        host = "algo-1" if rank < 2 else "algo-2"
        assert prefix_host == r["host"] == host
        assert r["sum"] == [10.0] * 4  # 1 + 2 + 3 + 4: every rank of both hosts took part
        assert (r["RANK"], r["LOCAL_RANK"], r["GROUP_RANK"]) == (
            str(rank),
            str(rank % 2),
            str(rank // 2),
        )
        assert (r["WORLD_SIZE"], r["LOCAL_WORLD_SIZE"], r["MASTER_ADDR"]) == ("4", "2", "127.0.0.1")
    assert re.search(rf"^model:\s+{run.job}/algo-1/model$", run.stdout, re.M)
    assert (run.job / "algo-1" / "model" / "model.pt").stat().st_size > 0
    assert re.search(rf"^logs:\s+{run.job}/logs$", run.stdout, re.M)
    for host in ("algo-1", "algo-2"):
        assert (run.tree(host) / "output" / "success").exists()
        assert not (run.tree(host) / "output" / "failure").exists()
        assert f"[launcher {host}] job succeeded" in run.stderr
    assert "[launcher algo-1] host algo-2 joined with 2 slot(s)" in run.stderr


def test_a_rank_failing_on_a_follower_stops_every_host_with_one_root_cause(
    tmp_path: Path,
) -> None:
    run = run_local(tmp_path, 2, 2, "--mode", "fail", "--fail-rank", "3")
    cause = "rank 3 on algo-2 exited with code 1: ValueError: boom on purpose from rank 3"
    assert run.returncode == 1, run.stderr
    for host in ("algo-1", "algo-2"):
        assert run.failure_first_line(host) == cause
        assert not (run.tree(host) / "output" / "success").exists()
        assert f"[launcher {host}] error: job failed (exit 1): {cause}" in run.stderr
    # The sleeping ranks (60 s) were stopped at once, on both hosts.
    assert run.duration_s < 20
    assert "Traceback" in (run.tree("algo-2") / "output" / "failure").read_text()


def test_the_exit_barrier_keeps_every_host_until_the_last_rank_is_done(tmp_path: Path) -> None:
    run = run_local(tmp_path, 2, 1, "--mode", "barrier", "--slow-host", "algo-1")
    assert run.returncode == 0, run.stderr
    shared = tmp_path / "shared"
    slow_end = float((shared / "end-0").read_text())
    fast_end = float((shared / "end-1").read_text())
    assert slow_end - fast_end > 1.0  # algo-2's rank really finished first
    # Each launcher writes output/success only after the barrier: algo-2's waited for algo-1.
    for host in ("algo-1", "algo-2"):
        assert os.stat(run.tree(host) / "output" / "success").st_mtime >= slow_end
