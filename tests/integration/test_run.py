"""`launcher run` on one host with real ranks: collectives, failures, signals, teardown, logs.

Every test starts real processes through `python -m launcher run` (the `launch` fixture of
conftest.py), has a timeout, and fails if any process it started survives it (`no_leaks`).
Only the gloo tests import torch in their ranks (0.8 s a process on the CI machine).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import pytest

from launcher.contract import read_rank_env
from tests.bin.flood import BAD, expected
from tests.integration.conftest import (
    HOST,
    PYTHON,
    REPO,
    Launch,
    Launched,
    gone,
    prog,
    rank_lines,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


def run(
    launch: Launch,
    n: int,
    program: str,
    *args: str,
    opts: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Launched:
    """`launcher run --nproc-per-host n [opts] tests/bin/<program> [args]`."""
    return launch(["run", "--nproc-per-host", str(n), *opts, prog(program), *args], env=env)


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def first_difference(got: list[bytes], want: list[bytes]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )


@pytest.mark.parametrize("n", [2, 4])
def test_gloo_all_reduce_across_ranks(launch: Launch, n: int) -> None:
    job = run(launch, n, "gloo_allreduce.py")
    assert job.wait(60) == 0, job.err
    total = n * (n + 1) // 2
    for rank in range(n):
        assert rank_lines(job.out, rank) == [f"allreduce rank {rank} world {n} sum {total}"]
    assert f"started {n} rank(s) on {HOST}" in job.err


def test_rank_environment_stdin_and_process_groups(launch: Launch, tmp_path: Path) -> None:
    out = tmp_path / "env"
    out.mkdir()
    job = run(launch, 3, "print_env.py", "a b", "--flag", env={"OUT_DIR": str(out)})
    assert job.wait() == 0, job.err
    records = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(3)]
    ports = set()
    for rank, got in enumerate(records):
        env = read_rank_env(got["env"])
        assert env is not None
        assert (env.rank, env.local_rank) == (rank, rank)
        assert (env.world_size, env.local_world_size) == (3, 3)
        assert (env.node_rank, env.num_nodes, env.host) == (0, 1, HOST)
        assert env.master_addr == "127.0.0.1" and env.master_port > 0
        ports.add(env.master_port)
        assert env.error_file.endswith(f"rank-{rank}/error.json")
        assert got["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
        assert got["env"]["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert got["argv"][1:] == ["a b", "--flag"]
        assert got["stdin"] == "/dev/null" and got["stdin_read"] == ""
        # Its own session, hence its own process group, led by the rank itself.
        assert got["pgid"] == got["pid"] == got["sid"]
        assert got["pgid"] != os.getpgrp()
    assert len(ports) == 1
    assert len({got["pgid"] for got in records}) == 3


def test_module_mode_runs_python_dash_m(launch: Launch) -> None:
    job = launch(["run", "--nproc-per-host", "2", "-m", "tests.bin.ok", "extra"])
    assert job.wait() == 0, job.err
    for rank in range(2):
        assert rank_lines(job.out, rank) == [f"ok rank {rank} of 2 extra"]


def test_failing_rank_sets_exit_code_and_terminates_the_others(
    launch: Launch, tmp_path: Path
) -> None:
    job = run(
        launch,
        3,
        "exit_code.py",
        "3",
        "--rank",
        "1",
        opts=["--output-dir", str(tmp_path / "output")],
    )
    assert job.wait() == 3, job.err
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.splitlines()[0] == f"rank 1 on {HOST} exited with code 3: rank 1 exits with 3"
    # The others were stopped by the launcher and are never blamed (listed in exit order).
    stopped = next(ln for ln in failure.splitlines() if ln.endswith("terminated by the launcher"))
    assert sorted(re.findall(rf"(\d+) \({HOST}\)", stopped)) == ["0", "2"]
    assert f"error: job failed (exit 3): rank 1 on {HOST} exited with code 3" in job.err
    assert not (tmp_path / "output" / "success").exists()


def test_exception_line_and_error_file_make_the_root_cause(launch: Launch, tmp_path: Path) -> None:
    plain = run(
        launch,
        2,
        "raise.py",
        "--rank",
        "0",
        "--message",
        "disk full",
        "--after",
        "warning: leaked semaphore",
        opts=["--output-dir", str(tmp_path / "a")],
    )
    assert plain.wait() == 1, plain.err
    # The exception line, not the warning printed after the traceback.
    assert first_line(tmp_path / "a" / "failure") == (
        f"rank 0 on {HOST} exited with code 1: RuntimeError: disk full"
    )
    recorded = run(
        launch,
        2,
        "raise.py",
        "--rank",
        "1",
        "--record",
        "RecordedError: from the error file",
        opts=["--output-dir", str(tmp_path / "b")],
    )
    assert recorded.wait() == 1, recorded.err
    failure = (tmp_path / "b" / "failure").read_text()
    assert failure.splitlines()[0] == (
        f"rank 1 on {HOST} exited with code 1: RecordedError: from the error file"
    )
    assert "recorded traceback" in failure


def test_segfault_gives_139_and_names_sigsegv(launch: Launch, tmp_path: Path) -> None:
    job = run(launch, 2, "segfault.py", "--rank", "1", opts=["--output-dir", str(tmp_path / "out")])
    assert job.wait() == 139, job.err
    head = first_line(tmp_path / "out" / "failure")
    assert head.startswith(f"rank 1 on {HOST} was killed by SIGSEGV (exit 139)")


def test_rank_ignoring_sigterm_is_killed_after_the_grace_period(
    launch: Launch, tmp_path: Path
) -> None:
    grace = 0.5
    stamp = tmp_path / "failed-at"
    job = run(
        launch,
        2,
        "exit_code.py",
        "4",
        "--rank",
        "0",
        "--others-ignore-term",
        "--stamp",
        str(stamp),
        opts=["--grace-period", str(grace)],
    )
    ranks = job.ready(2)
    assert job.wait() == 4, job.err
    teardown = time.monotonic() - float(stamp.read_text())
    assert gone(ranks[1]["pid"])
    # SIGTERM was ignored, so only the SIGKILL at the end of the grace period stopped rank 1.
    assert grace <= teardown < grace + 5
    assert f"rank 0 on {HOST} exited with code 4" in job.err


def test_children_ignoring_sigterm_do_not_survive(launch: Launch, tmp_path: Path) -> None:
    """Rank 1 exits 5 leaving a SIGTERM-proof child; rank 0 and its child both ignore SIGTERM.

    When the launcher exits none of the four may be left, and one grace period must be enough
    for all of them: the failed rank's group is signalled at once, with the others, not only
    after they are gone.
    """
    grace = 1.5
    stamp = tmp_path / "failed-at"
    job = run(
        launch,
        2,
        "spawn_grandchild.py",
        "--exit",
        "5",
        "--rank",
        "1",
        "--stamp",
        str(stamp),
        "--others-ignore-term",
        opts=["--grace-period", str(grace)],
    )
    ranks = job.ready(2)
    assert job.wait() == 5, job.err
    teardown = time.monotonic() - float(stamp.read_text())
    pids = [r["pid"] for r in ranks] + [r["child"] for r in ranks]
    assert [p for p in pids if not gone(p)] == []
    assert grace <= teardown < grace + 1.0  # signalled only after the others: 2 x grace


def test_a_zombie_left_in_a_group_does_not_hold_the_launcher(launch: Launch) -> None:
    """The zombie is re-parented to this test (a subreaper that does not reap it during the
    test), as it would be to a PID 1 that never reaps. Its group must count as gone."""
    job = run(launch, 1, "leave_zombie.py", opts=["--grace-period", "20"])
    assert job.wait() == 0, job.err
    assert time.monotonic() - job.started < 10
    assert rank_lines(job.out, 0)[0].startswith("left zombie ")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_to_every_rank(
    launch: Launch, tmp_path: Path, stop: signal.Signals
) -> None:
    sig_dir = tmp_path / "signals"
    sig_dir.mkdir()
    job = run(
        launch,
        2,
        "record_signal.py",
        opts=["--output-dir", str(tmp_path / "out")],
        env={"SIG_DIR": str(sig_dir)},
    )
    job.ready(2)
    logs = [sig_dir / f"rank-{r}.log" for r in range(2)]

    def got(names: list[str]) -> bool:
        return all(p.exists() and p.read_text().split() == names for p in logs)

    sent: list[str] = []
    for sig in (signal.SIGUSR1, signal.SIGUSR2, stop):
        job.send(sig)
        sent.append(sig.name)
        if sig is not stop:
            # USR1/USR2 reach every rank and the job carries on.
            wait_for(f"{sig.name} at every rank", partial(got, list(sent)), 10, proc=job)
    assert job.wait() == 128 + stop, job.err
    assert got(sent), [p.read_text() if p.exists() else None for p in logs]
    assert first_line(tmp_path / "out" / "failure") == (
        f"the job was stopped by {stop.name}, which was forwarded to every rank"
    )


def test_sigkill_of_the_launcher_takes_every_rank_and_grandchild(launch: Launch) -> None:
    """torchrun and mpirun leave their ranks running (PPID 1) when they are SIGKILLed."""
    job = run(launch, 2, "spawn_grandchild.py")
    ranks = job.ready(2)
    pids = [r["pid"] for r in ranks] + [r["child"] for r in ranks]
    job.send(signal.SIGKILL)
    job.wait()
    took = wait_for("every rank and grandchild to be gone", lambda: all(map(gone, pids)), 5)
    assert took < 2.0


def test_flood_of_four_ranks_loses_and_splits_no_line(launch: Launch, tmp_path: Path) -> None:
    n, long = 100_000, 300_000
    job = run(
        launch,
        4,
        "flood.py",
        str(n),
        "--long",
        str(long),
        opts=["--log-dir", str(tmp_path / "logs")],
    )
    assert job.wait(60) == 0, job.err
    console = job.out_bytes.split(b"\n")
    assert console[-1] == b""  # the launcher ended the last partial line
    by_rank: dict[int, list[bytes]] = {r: [] for r in range(4)}
    for line in console[:-1]:
        prefix, _, rest = line.partition(b"] ")
        host, _, number = prefix.partition(b":")
        assert host == f"[{HOST}".encode(), line[:80]
        by_rank[int(number)].append(rest)
    for rank in range(4):
        want = expected(rank, n, long)
        got = by_rank[rank]
        assert got == want, f"rank {rank}: lines differ first at {first_difference(got, want)}"
        assert BAD in by_rank[rank]
        # The per-rank file holds the rank's bytes exactly as written: no prefix, no newline
        # added to the partial last line.
        log = tmp_path / "logs" / f"rank-{rank}" / "stdout.log"
        assert log.read_bytes() == b"\n".join(want)
        err = tmp_path / "logs" / f"rank-{rank}" / "stderr.log"
        assert err.read_bytes() == f"rank {rank} flooded {n} lines\n".encode()


def test_ranks_filter_limits_the_console_not_the_log_files(launch: Launch, tmp_path: Path) -> None:
    job = run(launch, 4, "ok.py", opts=["--ranks", "0,3", "--log-dir", str(tmp_path / "logs")])
    assert job.wait() == 0, job.err
    shown = {int(line.split(":")[1].split("]")[0]) for line in job.out.splitlines()}
    assert shown == {0, 3}
    for rank in range(4):
        text = (tmp_path / "logs" / f"rank-{rank}" / "stdout.log").read_text()
        assert text == f"ok rank {rank} of 4\n"


def test_a_program_that_cannot_start_is_an_error_not_a_hang(launch: Launch) -> None:
    job = launch(["run", "--nproc-per-host", "2", "--no-python", "/nonexistent/program"])
    assert job.wait() == 1
    assert "cannot start rank 0 (/nonexistent/program)" in job.err


def test_launcher_imports_no_torch_and_no_pynvml_on_a_cpu_host() -> None:
    code = (
        "import sys, launcher.cli, launcher.app; from launcher import gpus\n"
        "found = gpus.discover({})\n"
        "assert 'torch' not in sys.modules\n"
        "assert found or 'pynvml' not in sys.modules\n"
    )
    subprocess.run([PYTHON, "-c", code], cwd=REPO, check=True, timeout=30)
