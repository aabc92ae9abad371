"""Real gloo jobs of 2-3 ranks through `collectives`, plus the mpirun and Horovod paths.

Ranks are started by `spawn_ranks.run_ranks`: the real `launcher run`, or a stand-in where the
scenario needs ranks to outlive a failed peer (see spawn_ranks.py).
Every test has a pytest timeout and checks that no rank survives it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from tests.helpers.procwatch import no_leaks  # noqa: F401 - fixture
from tests.integration.spawn_ranks import RankRun, free_port, run_ranks

PROG = str(Path(__file__).with_name("collectives_prog.py"))
pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(60)]


def results(run: RankRun) -> dict[int, dict[str, object]]:
    """The RESULT lines of each rank, by rank."""
    out: dict[int, dict[str, object]] = {}
    for r in run.ranks:
        for line in r.stdout.splitlines():
            if line.startswith("RESULT "):
                out[r.rank] = json.loads(line.removeprefix("RESULT "))
    return out


def test_every_collective_on_two_hosts_of_two_ranks(tmp_path: Path) -> None:
    order = tmp_path / "order"
    model = tmp_path / "model"
    run = run_ranks(
        [sys.executable, PROG, "ops"],
        4,
        tmp_path / "job",
        nnodes=2,
        env={"ORDER_FILE": str(order), "SM_MODEL_DIR": str(model)},
    )
    run.check_no_survivors()
    assert [r.returncode for r in run.ranks] == [0, 0, 0, 0], run.describe()
    res = results(run)
    for r in range(4):
        got = res[r]
        assert (got["rank"], got["world"], got["env_rank"]) == (r, 4, r)
        assert (got["local_rank"], got["local_world"], got["node_rank"]) == (r % 2, 2, r // 2)
        assert got["primary"] is (r == 0)
        assert got["same_env"] is True
        assert got["total"] == 1 + 2 + 3 + 4
        assert got["mean"] == 1.5
        assert got["max"] == 3
        assert got["prod"] == 24
        assert got["bcast"] == [3.0, 3.0, 3.0]  # from the last rank
        assert got["gathered"] == [[k, 10 * k] for k in range(4)]
        assert got["saved"] == (str(model / "state.pt") if r == 0 else None)
    # primary_first: rank 0 wrote its line before anyone else wrote theirs.
    lines = order.read_text().split()
    assert lines[0] == "0" and sorted(lines) == ["0", "1", "2", "3"]
    assert torch.load(model / "state.pt")["w"].tolist() == [0, 1, 2, 3]
    assert [p.name for p in model.iterdir()] == ["state.pt"]  # no temporary file left


def test_all_reduce_timeout_names_the_rank_that_did_not_arrive(tmp_path: Path) -> None:
    env = {"TIMEOUT_S": "1", "DONE_DIR": str(tmp_path)}
    run = run_ranks([sys.executable, PROG, "timeout"], 2, tmp_path / "job", env=env)
    run.check_no_survivors()
    got = results(run)[0]
    assert got["op"] == "all_reduce", run.describe()
    assert got["missing"] == [1]
    assert "all_reduce on rank 0 of 2 timed out after 1 s" in str(got["message"])
    assert "ranks that did not arrive: 1" in str(got["message"])


def test_barrier_timeout_in_three_ranks_names_the_missing_one(tmp_path: Path) -> None:
    env = {"TIMEOUT_S": "1.5", "DONE_DIR": str(tmp_path)}
    run = run_ranks([sys.executable, PROG, "barrier_timeout"], 3, tmp_path / "job", env=env)
    run.check_no_survivors()
    res = results(run)
    assert res[0]["kind"] == "CollectiveTimeout", run.describe()
    assert res[0]["op"] == "barrier"
    assert res[0]["missing"] == [1]  # monitored_barrier names it on rank 0
    # Rank 2 arrived but cannot know who is missing in a world of three: it must not guess.
    assert res[2]["kind"] == "CollectiveTimeout"
    assert res[2]["missing"] is None
    assert "did not say which ranks" in str(res[2]["message"])


def test_a_dead_peer_is_an_error_and_the_survivor_exits_cleanly(tmp_path: Path) -> None:
    done = tmp_path / "done"
    done.mkdir()
    run = run_ranks(
        [sys.executable, PROG, "peer_dies"], 2, tmp_path / "job", env={"DONE_DIR": str(done)}
    )
    run.check_no_survivors()
    got = results(run)[0]
    assert got["kind"] == "CollectiveError" and got["op"] == "all_reduce", run.describe()
    assert "a peer closed its connection" in str(got["message"])
    # Rank 0 caught the error and returned without `shutdown`: it must still exit 0 (this once
    # failed with SIGABRT at interpreter exit; test_collectives_exit.py runs it 50 times).
    assert [r.returncode for r in run.ranks] == [0, 3], run.describe()


def test_record_writes_an_error_file_torch_can_read(tmp_path: Path) -> None:
    run = run_ranks([sys.executable, PROG, "fail"], 2, tmp_path)
    run.check_no_survivors()
    ok, failed = run.ranks
    assert ok.returncode == 0, run.describe()
    assert failed.returncode == 1
    assert "ValueError: boom from rank 1" in failed.stderr  # re-raised, so Python printed it
    assert not ok.error_file.exists()
    failure = ProcessFailure(
        local_rank=1, pid=failed.pid, exitcode=1, error_file=str(failed.error_file)
    )
    data = json.loads(failed.error_file.read_text())
    assert data["message"]["message"] == "ValueError: boom from rank 1"
    assert data["message"]["rank"] == 1 and data["message"]["host"] == "algo-1"
    assert "raise ValueError" in data["message"]["extraInfo"]["py_callstack"]
    assert failure.timestamp == int(data["message"]["extraInfo"]["timestamp"])
    assert failure.message == data["message"]


def test_bench_prints_a_table_and_json_lines(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "collectives.bench", "--max-bytes", "8K", "--iters", "3"]
    run = run_ranks([*argv, "--warmup", "1", "--json"], 2, tmp_path, real_launcher=True)
    run.check_no_survivors()
    assert [r.returncode for r in run.ranks] == [0, 0], run.describe()
    rows = [json.loads(line) for line in run.ranks[0].stdout.splitlines()]
    assert run.ranks[1].stdout == ""  # only the primary prints
    ops = ("all_reduce", "all_gather", "broadcast")
    assert [(r["op"], r["size"]) for r in rows] == [
        (op, size) for op in ops for size in (1024, 2048, 4096, 8192)
    ]
    for r in rows:
        assert r["world_size"] == 2 and r["backend"] == "gloo" and r["time_us"] > 0
        factor = {"all_reduce": 1.0, "all_gather": 0.5, "broadcast": 1.0}[r["op"]]
        assert r["busbw"] == pytest.approx(r["algbw"] * factor)
    assert "# all_reduce  ranks 2  backend gloo" in run.ranks[0].stderr


MPI_SCRIPT = """
import collectives, torch
from mpi4py import MPI
env = collectives.init(timeout=30)
assert (env.backend, env.rank, env.world_size) == ("mpi", MPI.COMM_WORLD.Get_rank(), 2), env
t = collectives.all_reduce(torch.tensor([env.rank + 1.0]))
print(f"RESULT rank={env.rank} local={env.local_rank} sum={t.item()}", flush=True)
collectives.shutdown()
"""


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed")
def test_under_mpirun_ranks_come_from_ompi(tmp_path: Path) -> None:
    pytest.importorskip("mpi4py")
    script = tmp_path / "mpi_job.py"
    script.write_text(MPI_SCRIPT)
    port = str(free_port())
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]
    argv += ["-x", "MASTER_ADDR=127.0.0.1", "-x", f"MASTER_PORT={port}", "-x", "OMP_NUM_THREADS=1"]
    proc = subprocess.run(
        [*argv, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # mpirun forwards each rank's output in chunks that may share a line: search, don't split.
    found = sorted(re.findall(r"RESULT rank=(\d) local=(\d) sum=([\d.]+)", proc.stdout))
    assert found == [("0", "0", "3.0"), ("1", "1", "3.0")], proc.stdout


def test_under_the_horovod_backend(tmp_path: Path) -> None:
    pytest.importorskip("horovod.torch", reason="Horovod is built from source only in CI")
    horovodrun = Path(sys.executable).with_name("horovodrun")
    if not horovodrun.exists():
        pytest.skip("horovodrun is not installed beside this Python")
    script = tmp_path / "hvd_job.py"
    script.write_text(
        "import collectives, torch\n"
        "env = collectives.init(timeout=30)  # auto: the env says horovod\n"
        "t = collectives.all_reduce(torch.tensor([env.rank + 1.0]))\n"
        "g = collectives.all_gather(torch.tensor([env.rank]))\n"
        "m = collectives.all_reduce(torch.tensor([env.rank * 2.0]), 'mean')\n"
        "b = collectives.broadcast(torch.tensor([env.rank + 5]), src=1)\n"
        "collectives.barrier()\n"
        "print(f'RESULT rank={env.rank} sum={t.item()} gathered={[x.item() for x in g]} '\n"
        "      f'mean={m.item()} bcast={b.item()}')\n"
        "collectives.shutdown()\n"
    )
    proc = subprocess.run(
        [str(horovodrun), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("sum=3.0 gathered=[0, 1] mean=1.0 bcast=6") == 2, proc.stdout


SAVE_SCRIPT = """
import sys, torch, collectives
collectives.save({"w": torch.ones(int(sys.argv[1]) // 4)}, "model.pt")
"""


def test_a_save_killed_mid_write_leaves_the_old_model_whole(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"w": torch.arange(3)}, model / "model.pt")  # the previous, complete model
    nbytes = 256 << 20
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_SCRIPT, str(nbytes)],
        env={**os.environ, "SM_MODEL_DIR": str(model)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill as soon as the temporary file holds some bytes, i.e. in the middle of the write.
        deadline = time.monotonic() + 30
        partial: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in model.glob(".model.pt.*.tmp") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert partial and partial[0].stat().st_size < nbytes  # it really was cut off mid-write
    assert torch.load(model / "model.pt")["w"].tolist() == [0, 1, 2]


def test_torchrun_reads_our_error_file(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--log-dir", str(tmp_path), PROG, "fail"],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The agent's root-cause report quotes the traceback it read from our file; without a
    # file it would print a link to the docs instead.
    report = proc.stderr[proc.stderr.index("Root Cause") :]
    assert "rank      : 1" in report and "error_file: " + str(tmp_path) in report, report
    assert 'raise ValueError("boom from rank 1")' in report, report
    assert "To enable traceback" not in report


def test_a_checkpoint_saved_on_the_primary_is_loaded_on_every_rank(tmp_path: Path) -> None:
    """Each rank has its own checkpoint folder, as each SageMaker host has: only rank 0's holds
    files (the two latest of three, atomically written), and every rank loads step 2 from it."""
    program = str(Path(__file__).parents[1] / "bin" / "checkpoint_rank.py")
    run = run_ranks(
        [sys.executable, program],
        2,
        tmp_path / "work",
        rank_env=lambda rank: {"LAUNCHER_CHECKPOINT_DIR": str(tmp_path / f"ckpt-{rank}")},
    )
    assert all(r.returncode == 0 for r in run.ranks), run.describe()
    found = results(run)
    for rank in (0, 1):
        assert found[rank]["before"] is False
        assert found[rank]["step"] == 2
        assert found[rank]["w"] == [2.0, 2.0]
    assert found[0]["files"] == ["step-000000000001.ckpt", "step-000000000002.ckpt"]
    assert found[1]["files"] == []
    run.check_no_survivors()
