"""Hang detection through the launcher, end to end: `launcher run --hang-timeout` with real
gloo ranks (tests/bin/hang_rank.py), and `launcher stacks` against a running job.

A stuck rank must end the job with exit 124 within 2 x the window + 5 s of the last progress,
`output/failure` must begin with the culprit line (rank 1 and its innermost frame), every rank's
stack must be in `stacks/`, and nothing may survive (`no_leaks`). A job that keeps progressing
is never hung; `--hang-timeout 0` turns detection off. Tests poll with deadlines; the checks
that nothing happens wait on the launcher's exit with a timeout, never sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.errors import EXIT_HANG
from tests.integration.conftest import HOST, REPO, Launch, Launched, prog

pytestmark = pytest.mark.timeout(90)

WINDOW_S = 3


def hang_job(
    launch: Launch, tmp_path: Path, scenario: str, *opts: str, window: float = WINDOW_S
) -> Launched:
    out = tmp_path / "output"
    return launch(
        [
            "run",
            "--nproc-per-host",
            "2",
            "--hang-timeout",
            f"{window:g}",
            "--output-dir",
            str(out),
            *opts,
            prog("hang_rank.py"),
            scenario,
            "--stuck",
            "1",
            "--at",
            "4",
        ],
        env={"TMPDIR": str(tmp_path)},
    )


def stages(job: Launched) -> dict[int, str]:
    """The stage each rank announced last (tests/bin/_common.ready writes atomically)."""
    found = {}
    for path in job.ready_dir.glob("rank-*.json"):
        info = json.loads(path.read_text())
        found[int(info["rank"])] = str(info.get("stage", ""))
    return found


def wait_stage(job: Launched, rank: int, stage: str, timeout: float = 60) -> float:
    """Poll until `rank` announced `stage`; returns when it was seen (monotonic)."""
    job.wait_until(lambda: stages(job).get(rank) == stage, timeout, f"rank {rank} {stage}")
    return time.monotonic()


@pytest.mark.parametrize(
    ("scenario", "function", "with_log_dir"), [("sleep", "stall", False), ("spin", "spin", True)]
)
def test_a_stuck_rank_ends_the_job_with_124_and_is_named(
    launch: Launch, tmp_path: Path, scenario: str, function: str, with_log_dir: bool
) -> None:
    logs = tmp_path / "logs"
    opts = ("--log-dir", str(logs)) if with_log_dir else ()
    job = hang_job(launch, tmp_path, scenario, *opts)
    stuck_at = wait_stage(job, 1, "stuck")
    code = job.wait(2 * WINDOW_S + 5 + 5)
    took = time.monotonic() - stuck_at
    assert code == EXIT_HANG, job.err
    assert took <= 2 * WINDOW_S + 5, took
    text = (tmp_path / "output" / "failure").read_text()
    first = text.splitlines()[0]
    assert first.startswith("hang: no progress for "), first
    assert f"; suspect rank 1 on host {HOST} at " in first, first
    assert "hang_rank.py:" in first and f" in {function} (" in first, first
    assert first.endswith("; 1 rank waits in all_reduce"), first
    stacks = (logs if with_log_dir else tmp_path / "output") / "stacks"
    assert sorted(p.name for p in stacks.iterdir()) == ["rank-0.txt", "rank-1.txt"]
    assert function in (stacks / "rank-1.txt").read_text()
    assert f"stacks: {stacks}" in text
    assert "rank 0 (testhost): progress 5" in text and "waiting in all_reduce" in text
    assert first in job.err  # the launcher's log names the culprit too
    # The run's private files are gone (no log dir) and the job is no longer announced.
    assert not list(tmp_path.glob("launcher-errors-*")) or with_log_dir
    assert not list((tmp_path / "launcher-running").iterdir())


@pytest.mark.parametrize(("scenario", "stage"), [("steady", "steady"), ("long_step", "long step")])
def test_a_job_that_keeps_progressing_is_never_hung(
    launch: Launch, tmp_path: Path, scenario: str, stage: str
) -> None:
    window = 2
    job = hang_job(launch, tmp_path, scenario, window=window)
    wait_stage(job, 0, stage)
    wait_stage(job, 1, stage)
    with pytest.raises(subprocess.TimeoutExpired):
        job.popen.wait(3 * window + 1)  # three windows and more: still running
    job.send(signal.SIGTERM)
    assert job.wait(30) == 128 + signal.SIGTERM, job.err
    assert "hang" not in (tmp_path / "output" / "failure").read_text().splitlines()[0]


def test_hang_timeout_0_turns_detection_off(launch: Launch, tmp_path: Path) -> None:
    job = hang_job(launch, tmp_path, "sleep", window=0)
    wait_stage(job, 1, "stuck")
    with pytest.raises(subprocess.TimeoutExpired):
        job.popen.wait(2 * WINDOW_S + 2)  # a 3 s window would have ended it by now
    job.send(signal.SIGTERM)
    assert job.wait(30) == 128 + signal.SIGTERM, job.err
    assert not (tmp_path / "output" / "stacks").exists()
    assert not (tmp_path / "launcher-running").exists()  # nothing of hang detection ran


def test_a_rank_that_starts_late_is_not_a_hang_while_the_others_wait_to_rendezvous(
    launch: Launch, tmp_path: Path
) -> None:
    """A skewed start-up (one rank, or a whole host, still importing or downloading while
    the others wait in the rendezvous) is bounded by the rendezvous' own timeout, not the
    hang window: before the rendezvous became a section, this ended with 124 after 2 s."""
    window = 2.0
    job = launch(
        [
            "run",
            "--nproc-per-host",
            "2",
            "--hang-timeout",
            f"{window:g}",
            prog("hang_rank.py"),
            "late_init",
            "--stuck",
            "1",
            "--late",
            f"{2 * window + 1:g}",
        ],
        env={"TMPDIR": str(tmp_path)},
    )
    assert job.wait(60) == 0, job.err
    assert "hang:" not in job.err


def launcher_stacks(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`launcher stacks` as a user runs it, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", "stacks"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_launcher_stacks_prints_every_rank_of_a_running_job(launch: Launch, tmp_path: Path) -> None:
    job = hang_job(launch, tmp_path, "steady", window=60)
    wait_stage(job, 0, "steady")
    wait_stage(job, 1, "steady")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    shown = launcher_stacks(env)
    assert shown.returncode == 0, shown.stderr
    for rank in (0, 1):
        assert f"# rank {rank} on {HOST}, pid " in shown.stdout, shown.stdout
    assert "hang_rank.py" in shown.stdout and "steady" in shown.stdout
    assert job.exited() is None  # taking the stacks stopped nothing
    job.send(signal.SIGTERM)
    assert job.wait(30) == 128 + signal.SIGTERM, job.err
    nothing = launcher_stacks(env)
    assert nothing.returncode == 1 and "no running job" in nothing.stderr, nothing


LOCAL_PROGRAM = """
import argparse, sys
sys.path.insert(0, {bin!r})
p = argparse.ArgumentParser()
p.add_argument("--scenario")
p.add_argument("--stuck")
args, _ = p.parse_known_args()
sys.argv = [sys.argv[0], args.scenario, "--stuck", args.stuck, "--at", "4"]
import hang_rank
sys.exit(hang_rank.main())
"""


@pytest.mark.timeout(150)
@pytest.mark.usefixtures("no_leaks")
def test_a_stuck_rank_on_one_of_3_local_hosts_ends_every_host_with_124(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "prog.py").write_text(LOCAL_PROGRAM.format(bin=str(REPO / "tests" / "bin")))
    ready_dir = tmp_path / "ready"
    ready_dir.mkdir()
    argv = [
        sys.executable,
        "-m",
        "launcher",
        "local",
        "--hosts",
        "3",
        "--nproc-per-host",
        "1",
        "--hang-timeout",
        str(WINDOW_S),
        "--grace-period",
        "5",
        "--job-dir",
        str(tmp_path / "jobs"),
        str(code / "prog.py"),
        "--scenario",
        "sleep",
        "--stuck",
        "1",
    ]
    env = {**os.environ, "READY_DIR": str(ready_dir), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == EXIT_HANG, done.stderr
    job = Path(re.search(r"^job:\s+(\S+)$", done.stdout, re.M)[1])  # type: ignore[index]
    firsts = {
        host: (job / host / "output" / "failure").read_text().splitlines()[0]
        for host in ("algo-1", "algo-2", "algo-3")
    }
    line = firsts["algo-2"]
    assert set(firsts.values()) == {line}, firsts
    assert line.startswith("hang: no progress for "), line
    assert "; suspect rank 1 on host algo-2 at " in line and " in stall (" in line, line
    for host in ("algo-1", "algo-2", "algo-3"):
        assert f"[launcher {host}] error: job failed (exit 124): {line}" in done.stderr
    stacks = job / "logs" / "stacks"
    assert sorted(p.name for p in stacks.iterdir()) == ["rank-0.txt", "rank-1.txt", "rank-2.txt"]
    assert "stall" in (stacks / "rank-1.txt").read_text()
    assert "all_reduce" in (stacks / "rank-0.txt").read_text()
