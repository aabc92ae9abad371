"""Whole-job restarts end to end on one host: `launcher run --max-restarts` with real ranks, and
`launcher local` with 3 simulated hosts whose leader decides each attempt.

The ranks are `tests/bin/fail_once.py` (standard library only: fast to start): each records its
environment and which of the previous attempt's ranks are still alive when it starts, and
fails (or hangs) in the attempts the test asks for. Every test has a timeout and fails if any
process it started survives it (`no_leaks`).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procwatch import no_leaks  # noqa: F401 - fixture
from tests.integration.conftest import Launch, Launched, prog

pytestmark = pytest.mark.timeout(90)

LAUNCHER = str(Path(sys.executable).with_name("launcher"))


def starts(out: Path, attempt: int) -> dict[int, dict[str, Any]]:
    """rank -> what each rank of `attempt` recorded at its start."""
    found = {}
    for path in out.glob(f"start-{attempt}-*.json"):
        found[int(path.stem.rsplit("-", 1)[1])] = json.loads(path.read_text())
    return found


def run(
    launch: Launch, tmp_path: Path, *args: str, opts: Sequence[str] = (), n: int = 2
) -> tuple[Launched, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    argv = ["run", "--nproc-per-host", str(n), "--output-dir", str(tmp_path / "output"), *opts]
    return launch([*argv, prog("fail_once.py"), "--out", str(out), *args]), out


def failure(tmp_path: Path) -> str:
    return (tmp_path / "output" / "failure").read_text()


def test_a_failed_rank_restarts_the_whole_job_with_fresh_ports_and_kept_logs(
    launch: Launch, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    # --together: rank 1 fails once rank 0 has started too, or attempt 0 may have no rank 0.
    job, out = run(
        launch,
        tmp_path,
        *("--ranks", "1", "--together", "1"),
        opts=["--max-restarts", "2", "--log-dir", str(logs)],
    )
    assert job.wait() == 0, job.err
    first, second = starts(out, 0), starts(out, 1)
    assert sorted(first) == sorted(second) == [0, 1]
    assert not (out / "start-2-0.json").exists()
    for attempt, ranks in ((0, first), (1, second)):
        for info in ranks.values():
            assert info["restart_count"] == str(attempt)
            assert info["max_restarts"] == "2"
            assert info["previous_alive"] == []
    assert first[0]["master_port"] != second[0]["master_port"]
    assert "job succeeded after 2 attempts" in job.err
    assert "attempt 0 failed (exit 1): rank 1 on" in job.err
    assert (tmp_path / "output" / "success").exists()
    assert not (tmp_path / "output" / "failure").exists()
    # Attempt 0's logs where a job without restarts keeps them, attempt 1's beside them.
    assert (logs / "rank-1" / "stderr.log").exists()
    assert (logs / "attempt-1" / "rank-1" / "stderr.log").exists()


@pytest.mark.parametrize("code", [2, 126, 127])
def test_exit_codes_that_fail_the_same_way_every_time_are_not_retried(
    launch: Launch, tmp_path: Path, code: int
) -> None:
    job, out = run(
        launch,
        tmp_path,
        *("--fail", "5", "--ranks", "0", "--code", str(code)),
        opts=["--max-restarts", "3"],
    )
    assert job.wait() == code, job.err
    assert not starts(out, 1)
    text = failure(tmp_path)
    assert text.startswith("rank 0 on ")
    assert f"exited with code {code}" in text.splitlines()[0]
    assert f"  attempt 0: exit {code}: " in text
    assert f"exit code {code} fails the same way every time: not restarted" in text


def test_the_same_failure_without_progress_stops_early(launch: Launch, tmp_path: Path) -> None:
    job, out = run(launch, tmp_path, "--fail", "9", "--ranks", "1", opts=["--max-restarts", "5"])
    assert job.wait() == 1, job.err
    assert starts(out, 1) and not starts(out, 2)
    text = failure(tmp_path)
    first = text.splitlines()[0]
    assert first.startswith("rank 1 on ") and first.endswith("exited with code 1"), text
    assert "attempts: 2\n  attempt 0: exit 1: rank 1" in text
    line = "attempt 1 failed the same way as attempt 0 without any progress or checkpoint"
    assert line in text and line in job.err


def test_progress_keeps_restarting_until_the_budget_is_spent(
    launch: Launch, tmp_path: Path
) -> None:
    job, out = run(
        launch,
        tmp_path,
        *("--fail", "9", "--ranks", "1", "--progress", "2", "--code", "7"),
        opts=["--max-restarts", "2"],
    )
    assert job.wait() == 7, job.err
    assert starts(out, 2) and not starts(out, 3)
    text = failure(tmp_path)
    assert text.splitlines()[0].endswith("exited with code 7")
    assert "attempts: 3\n" in text and "  attempt 2: exit 7: " in text
    assert text.rstrip().endswith("no restarts left (2 of 2 used)")


def test_a_checkpoint_advance_counts_as_progress(launch: Launch, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    job, out = run(
        launch,
        tmp_path,
        *("--fail", "2", "--ranks", "0", "--checkpoint"),
        opts=["--max-restarts", "3", "--checkpoint-dir", str(ckpt), "--hang-timeout", "0"],
    )
    assert job.wait() == 0, job.err
    assert starts(out, 2)[0]["checkpoint_dir"] == str(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "step-000000000000.ckpt",
        "step-000000000001.ckpt",
    ]  # never cleaned


def test_a_stop_signal_is_forwarded_and_never_restarted(launch: Launch, tmp_path: Path) -> None:
    job, out = run(launch, tmp_path, "--ranks", "9", opts=["--max-restarts", "3"])
    job.ready(2)  # every rank waits (none is failing)
    job.send(signal.SIGTERM)
    assert job.wait() == 128 + signal.SIGTERM, job.err
    assert not starts(out, 1)
    assert "the job was stopped from outside: not restarted" in failure(tmp_path)


def test_a_hang_verdict_restarts_the_job(launch: Launch, tmp_path: Path) -> None:
    job, out = run(
        launch,
        tmp_path,
        *("--ranks", "0,1", "--progress", "1", "--hang"),
        opts=["--max-restarts", "1", "--hang-timeout", "1"],
    )
    assert job.wait(60) == 0, job.err
    assert "attempt 0 failed (exit 124): hang: no progress for " in job.err
    assert sorted(starts(out, 1)) == [0, 1]
    assert all(info["previous_alive"] == [] for info in starts(out, 1).values())


@pytest.mark.timeout(150)
def test_ranks_failing_together_in_attempt_after_attempt_never_overlap(
    launch: Launch, tmp_path: Path
) -> None:
    """The racy part, repeated: both ranks exit at once (the second's exit lands while the
    first's teardown runs) in 100 attempts in a row; every attempt starts only when the previous
    one's ranks are all gone, with the right count, and the job ends on the first success."""
    attempts = 100
    job, out = run(
        launch,
        tmp_path,
        *("--fail", str(attempts - 1), "--ranks", "0,1", "--progress", "1", "--together", "1"),
        opts=["--max-restarts", str(attempts - 1)],
    )
    assert job.wait(140) == 0, job.err
    for attempt in range(attempts):
        ranks = starts(out, attempt)
        assert sorted(ranks) == [0, 1], attempt
        for info in ranks.values():
            assert info["restart_count"] == str(attempt)
            assert info["previous_alive"] == [], attempt
    assert f"job succeeded after {attempts} attempts" in job.err


# --- launcher local: 3 hosts, the leader decides ------------------------------------------------


def test_a_rank_failing_on_one_of_3_local_hosts_restarts_every_host(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [LAUNCHER, "local", "--hosts", "3", "--nproc-per-host", "1", "--max-restarts", "1"]
    argv += ["--job-dir", str(tmp_path / "jobs"), prog("fail_once.py"), "--out", str(out)]
    argv += ["--ranks", "2", "--together", "1"]  # rank 2 fails once every host's rank started
    done = subprocess.run(argv, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stderr
    first, second = starts(out, 0), starts(out, 1)
    assert sorted(second) == [0, 1, 2], done.stderr
    assert {info["host"] for info in second.values()} == {"algo-1", "algo-2", "algo-3"}
    assert {info["restart_count"] for info in second.values()} == {"1"}
    assert len({info["run_id"] for info in second.values()}) == 1
    assert second[0]["run_id"] != first[0]["run_id"]
    assert second[0]["master_port"] != first[0]["master_port"]
    assert all(info["previous_alive"] == [] for info in second.values())
    for host in ("algo-1", "algo-2", "algo-3"):
        assert f"[launcher {host}] job succeeded after 2 attempts" in done.stderr
    assert "[launcher algo-1] warning: restarting the job as attempt 1" in done.stderr


# --- the horovod backend: a fresh Horovod rendezvous server for every attempt -----------------

needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="needs Horovod (scripts/install-horovod.sh)"
)


def _horovod_attempts(out: Path) -> dict[int, list[dict[str, Any]]]:
    """attempt -> what each rank of it recorded at its start (hvd_train.py)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for path in sorted(out.parent.glob(f"{out.name}.start-*.json")):
        info = json.loads(path.read_text())
        found.setdefault(info["attempt"], []).append(info)
    return found


@needs_horovod
def test_the_horovod_backend_restarts_on_a_fresh_rendezvous_server(
    launch: Launch, tmp_path: Path
) -> None:
    out = tmp_path / "result.json"
    argv = ["run", "--backend", "horovod", "--nproc-per-host", "2", "--max-restarts", "1"]
    argv += [prog("hvd_train.py"), "--out", str(out), "--fail-rank", "1", "--fail-attempts", "1"]
    job = launch(argv)
    assert job.wait(80) == 0, job.err
    tries = _horovod_attempts(out)
    assert sorted(tries) == [0, 1] and len(tries[1]) == 2, tries
    ports = {attempt: {info["port"] for info in infos} for attempt, infos in tries.items()}
    assert len(ports[0]) == len(ports[1]) == 1 and ports[0] != ports[1], ports
    result = json.loads(out.read_text())
    assert result["size"] == 2 and result["weights_agree"], result
    assert "job succeeded after 2 attempts" in job.err


@needs_horovod
def test_horovod_on_2_local_hosts_restarts_every_host(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [LAUNCHER, "local", "--hosts", "2", "--nproc-per-host", "1", "--max-restarts", "1"]
    argv += ["--backend", "horovod", "--job-dir", str(tmp_path / "jobs"), prog("hvd_train.py")]
    argv += ["--out", str(out), "--fail-rank", "1", "--fail-attempts", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stderr
    tries = _horovod_attempts(out)
    assert sorted(tries) == [0, 1] and len(tries[1]) == 2, (tries, done.stderr)
    assert len({info["port"] for info in tries[1]}) == 1
    assert {info["port"] for info in tries[0]} != {info["port"] for info in tries[1]}
    result = json.loads(out.read_text())
    assert result["size"] == 2 and result["weights_agree"], result
    for host in ("algo-1", "algo-2"):
        assert f"[launcher {host}] job succeeded after 2 attempts" in done.stderr
