"""Hang detection's building blocks against real ranks: real gloo processes on loopback, real
progress files, real py-spy, real signals. No launcher: the ranks are started here with the
environment the contract defines (`RankEnv.torch_env` and `RankFiles.env`), as the launcher
will start them.

Each test polls with a deadline (never sleeps to synchronise), carries a timeout, and kills
every rank it started (`no_leaks` checks that none survives).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launcher.contract import RankEnv
from launcher.hangs.progress import ProgressReader, RankFiles, prepare
from launcher.hangs.stacks import Target, collect, find_py_spy
from launcher.hangs.summary import culprit_line
from launcher.hangs.verdict import NS, Hung, Policy, RankProgress, suspects
from launcher.hangs.watch import Monitor
from tests.helpers.procwatch import LeakWatch

BIN = Path(__file__).resolve().parents[1] / "bin"
HANG_RANK = str(BIN / "hang_rank.py")
HOSTS = {0: "algo-1", 1: "algo-1"}
POLL_S = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ranks:
    """Rank processes started by `start_ranks`, their files and announcements."""

    procs: list[subprocess.Popen[bytes]]
    files: dict[int, RankFiles]
    ready_dir: Path
    logs: Path

    @property
    def progress(self) -> dict[int, Path]:
        return {rank: f.progress for rank, f in self.files.items()}

    def announced(self, rank: int) -> dict[str, Any] | None:
        path = self.ready_dir / f"rank-{rank}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def stage(self, rank: int) -> str | None:
        got = self.announced(rank)
        return None if got is None else str(got["stage"])

    def output(self) -> str:
        return "\n".join(
            f"--- rank {r}:\n{(self.logs / f'rank-{r}.err').read_text(errors='replace')}"
            for r in range(len(self.procs))
        )

    def until(self, what: str, condition: Callable[[], object], timeout: float = 60) -> None:
        """Poll `condition` until it holds; fail at the deadline, or when a rank exits."""
        deadline = time.monotonic() + timeout
        while not condition():
            ended = [p.returncode for p in self.procs if p.poll() is not None]
            if ended:
                pytest.fail(f"a rank exited ({ended}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{self.output()}")
            time.sleep(POLL_S)


@contextmanager
def start_ranks(tmp_path: Path, argv: list[str], n: int = 2) -> Iterator[Ranks]:
    """`n` ranks of `argv` on loopback, each in its own session; all killed on the way out."""
    files = prepare(tmp_path / "progress", range(n))
    ready_dir, logs = tmp_path / "ready", tmp_path / "logs"
    ready_dir.mkdir()
    logs.mkdir()
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(n):
            place = RankEnv(rank, rank, n, n, 0, 1, "127.0.0.1", port, host="algo-1")
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "READY_DIR": str(ready_dir),
                **place.torch_env(),
                **files[rank].env(),
            }
            with (logs / f"rank-{rank}.err").open("wb") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *argv],
                        env=env,
                        cwd=tmp_path,
                        stdin=subprocess.DEVNULL,
                        stdout=err,
                        stderr=err,
                        start_new_session=True,
                    )
                )
        yield Ranks(procs, files, ready_dir, logs)
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()


def watch(ranks: Ranks, policy: Policy) -> tuple[Monitor, list[Hung]]:
    verdicts: list[Hung] = []
    monitor = Monitor(ranks.progress, policy, verdicts.append, interval_s=0.1)
    monitor.start()
    return monitor, verdicts


def targets(ranks: Ranks, samples: tuple[RankProgress, ...]) -> list[Target]:
    return [Target(s.rank, s.pid, ranks.files[s.rank].stacks, s.stack_signal) for s in samples]


def counts(ranks: Ranks) -> list[int]:
    with ProgressReader(ranks.progress) as reader:
        return [s.count for s in reader.read()]


@pytest.fixture(scope="module")
def py_spy() -> str:
    exe = find_py_spy()
    if exe is None:
        pytest.fail("py-spy is not installed in this environment (requirements/constraints.txt)")
    return exe


WINDOW_S = 1.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("scenario", "function"), [("sleep", "stall"), ("spin", "spin")])
def test_a_stuck_rank_is_named_with_both_stacks(
    tmp_path: Path, no_leaks: LeakWatch, py_spy: str, scenario: str, function: str
) -> None:
    with start_ranks(tmp_path, [HANG_RANK, scenario, "--stuck", "1", "--at", "4"]) as ranks:
        monitor, verdicts = watch(ranks, Policy(window_s=WINDOW_S))
        try:
            ranks.until("the hang verdict", lambda: verdicts)
        finally:
            monitor.stop()
        hung = verdicts[0]
        # Joining counts once, every all_reduce on the way in: rank 0 entered the 4th, rank 1
        # stopped before it.
        assert [r.count for r in hung.ranks] == [5, 4]
        assert [r.pid for r in hung.ranks] == [p.pid for p in ranks.procs]
        assert all(r.stack_signal > 0 for r in hung.ranks)
        assert WINDOW_S < hung.quiet_s <= WINDOW_S + 2, hung
        assert ranks.stage(1) == "stuck" and ranks.stage(0) == "waiting"

        for method in ("py-spy", "signal"):
            got = collect(targets(ranks, hung.ranks), methods=(method,), py_spy=py_spy)
            stuck, waiting = got[1], got[0]
            assert stuck.method == method and waiting.method == method, (stuck, waiting)
            assert stuck.innermost is not None and stuck.innermost.function == function
            assert stuck.innermost.file.endswith("hang_rank.py") and not stuck.in_collective
            assert waiting.in_collective and waiting.op == "all_reduce"
            assert waiting.caller is not None and waiting.caller.function == "step"
            found = suspects(hung, got)
            assert [s.rank for s in found] == [1]
            line = culprit_line(hung, found, got, HOSTS)
            assert line.startswith(f"hang: no progress for {hung.quiet_s:.0f} s (window 1 s); ")
            assert "; suspect rank 1 on host algo-1 at " in line
            assert f"hang_rank.py:{stuck.innermost.line} in {function} (" in line
            assert line.endswith("; 1 rank waits in all_reduce")
        # Taking stacks stopped nothing.
        assert all(p.poll() is None for p in ranks.procs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("scenario", "stage"), [("steady", "steady"), ("long_step", "long step")])
def test_a_job_that_keeps_progressing_is_never_hung(
    tmp_path: Path, no_leaks: LeakWatch, scenario: str, stage: str
) -> None:
    """A slow all_reduce loop, and one long step without a collective that calls
    `collectives.progress()`: watched for three windows, no verdict."""
    window = 1.5
    with start_ranks(tmp_path, [HANG_RANK, scenario]) as ranks:
        ranks.until("both ranks started", lambda: ranks.stage(0) == ranks.stage(1) == stage)
        monitor, verdicts = watch(ranks, Policy(window_s=window))
        try:
            before = counts(ranks)
            end = time.monotonic() + 3 * window
            ranks.until("three windows", lambda: verdicts or time.monotonic() > end)
        finally:
            monitor.stop()
        assert verdicts == []
        after = counts(ranks)
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.timeout(60)
def test_a_section_pauses_the_timing_until_its_limit(
    tmp_path: Path, no_leaks: LeakWatch, py_spy: str
) -> None:
    """Rank 0 stays inside `collectives.section("save")`; rank 1 waits in a barrier. Not hung
    after the window, hung once the section outlives its limit, with rank 0 to blame."""
    limit = 3.0
    with start_ranks(tmp_path, [HANG_RANK, "section"]) as ranks:
        ranks.until("the section", lambda: ranks.stage(0) == "in section")
        ranks.until("the barrier", lambda: ranks.stage(1) == "barrier")
        monitor, verdicts = watch(ranks, Policy(window_s=WINDOW_S, section_limit_s=limit))
        try:
            ranks.until("the hang verdict", lambda: verdicts)
        finally:
            monitor.stop()
        hung = verdicts[0]
        assert hung.overrun == (0,)
        inside = hung.ranks[0]
        assert inside.in_section and inside.section == "save"
        assert (hung.at_ns - inside.section_since_ns) / NS > limit
        got = collect(targets(ranks, hung.ranks), py_spy=py_spy)
        assert got[1].op == "monitored_barrier"  # gloo's barrier names missing ranks
        found = suspects(hung, got)
        assert [s.rank for s in found] == [0]
        line = culprit_line(hung, found, got, HOSTS)
        assert line.startswith("hang: a section outlived its limit (3 s); suspect rank 0 ")
        assert line.endswith("; 1 rank waits in monitored_barrier")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", ["progress_stdlib.py", "progress_raw.py"])
def test_a_script_without_torch_reports_progress(
    tmp_path: Path, no_leaks: LeakWatch, program: str
) -> None:
    with start_ranks(tmp_path, [str(BIN / program), "7"], n=1) as ranks:
        ranks.until("the ticks", lambda: ranks.stage(0) == "ticked")
        with ProgressReader(ranks.progress) as reader:
            (sample,) = reader.read()
        assert sample.count == 7 and sample.pid == ranks.procs[0].pid
        assert sample.attached and sample.last_ns >= sample.attached_ns
        if program == "progress_stdlib.py":
            announced = ranks.announced(0)
            assert announced is not None and announced["torch"] is False
            assert sample.stack_signal == announced["signal"] > 0
            got = collect(targets(ranks, (sample,)), methods=("signal",))
            frame = got[0].innermost
            assert frame is not None and frame.function == "stall", got[0]
