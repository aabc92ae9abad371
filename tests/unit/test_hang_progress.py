"""The progress file: the rank's writer (`launcher.contract`) and the launcher's reader
(`launcher.hangs.progress`), on real files in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import contract
from launcher.contract import PROGRESS_FILE, PROGRESS_MAGIC, PROGRESS_SIZE, ProgressFile
from launcher.hangs.progress import ProgressReader, decode, prepare
from launcher.hangs.verdict import Policy, RankProgress, Tracker
from launcher.hangs.watch import Monitor
from tests.helpers.waiting import wait_for


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The contract's per-process progress state as in a new process (restored afterwards)."""
    monkeypatch.setattr(contract, "_progress", None)
    monkeypatch.setattr(contract, "_progress_words", None)
    monkeypatch.setattr(contract, "_progress_tried", False)
    monkeypatch.delenv(PROGRESS_FILE, raising=False)
    yield


def sample(path: Path, rank: int = 0) -> RankProgress:
    with ProgressReader({rank: path}) as reader:
        return reader.read()[0]


def test_prepare_makes_blank_files_that_read_as_not_attached(tmp_path: Path) -> None:
    files = prepare(tmp_path / "progress", [0, 1, 2])
    assert sorted(files) == [0, 1, 2]
    entry = files[1]
    data = entry.progress.read_bytes()
    assert len(data) == PROGRESS_SIZE and data.startswith(PROGRESS_MAGIC)
    words = memoryview(data).cast("Q")
    assert words[contract.P_TRACER_PID] == os.getpid()
    assert sum(words[1:]) == os.getpid()  # every other word zero
    assert entry.stacks.read_bytes() == b""
    assert entry.env() == {
        contract.PROGRESS_FILE: str(entry.progress),
        contract.STACK_FILE: str(entry.stacks),
    }
    assert (entry.progress.stat().st_mode & 0o777) == 0o600
    assert sample(entry.progress, 1) == RankProgress(1)


@pytest.mark.parametrize(("scope", "attempted"), [(None, False), (b"0\n", False), (b"1\n", True)])
def test_the_launcher_may_ptrace_its_ranks_where_yama_allows_only_ancestors(
    tmp_path: Path, scope: bytes | None, attempted: bool
) -> None:
    scope_file = tmp_path / "ptrace_scope"
    if scope is not None:
        scope_file.write_bytes(scope)
    # With scope 1 the prctl runs for real (on this process: naming its own parent is harmless);
    # its answer depends on the kernel, so only whether it was asked is checked.
    got = contract.allow_tracer(os.getppid(), str(scope_file))
    assert (got is not None) == attempted
    assert contract.allow_tracer(0, str(scope_file)) is None


def test_a_tick_is_a_count_and_a_monotonic_time(tmp_path: Path) -> None:
    path = prepare(tmp_path, [0])[0].progress
    before = time.monotonic_ns()
    writer = ProgressFile(path)
    for _ in range(3):
        writer.tick()
    got = sample(path)
    assert got.count == 3 and got.pid == os.getpid() and got.attached
    assert before <= got.attached_ns <= got.last_ns <= time.monotonic_ns()


def test_sections_nest_are_named_and_leaving_counts(tmp_path: Path) -> None:
    path = prepare(tmp_path, [0])[0].progress
    writer = ProgressFile(path)
    writer.enter_section("checkpoint-with-a-name-longer-than-thirty-two-bytes")
    writer.enter_section("inner")
    got = sample(path)
    assert got.in_section and got.section_depth == 2 and got.section_since_ns > 0
    assert got.section == "checkpoint-with-a-name-longer-th"  # the outermost, 32 bytes
    writer.leave_section()
    writer.leave_section()
    got = sample(path)
    assert not got.in_section and got.count == 2 and got.section == ""


def test_the_writer_creates_a_missing_file_and_continues_an_existing_count(tmp_path: Path) -> None:
    path = tmp_path / "new.progress"
    ProgressFile(path).tick()
    second = ProgressFile(path)
    second.tick()
    assert sample(path).count == 2


@pytest.mark.parametrize("content", [b"not a progress file", b"x" * PROGRESS_SIZE])
def test_the_writer_refuses_a_file_that_is_not_a_progress_file_and_leaves_it(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "precious"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a progress file"):
        ProgressFile(path)
    assert path.read_bytes() == content


def test_progress_without_a_file_is_a_silent_no_op(
    fresh: None, capsys: pytest.CaptureFixture[str]
) -> None:
    contract.progress()
    with contract.progress_section("save"):
        contract.progress()
    assert contract.attach_progress() is None
    assert capsys.readouterr().err == ""


def test_progress_attaches_on_first_use(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = prepare(tmp_path, [0])[0].progress
    monkeypatch.setenv(PROGRESS_FILE, str(path))
    contract.progress()
    contract.progress()
    with contract.progress_section("save"):
        assert sample(path).section == "save"
    assert sample(path).count == 3


def test_an_unusable_file_is_said_once_and_progress_goes_on(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PROGRESS_FILE, str(tmp_path / "no" / "such" / "folder" / "p"))
    for _ in range(3):
        contract.progress()
    err = capsys.readouterr().err
    assert err.count("progress is not reported: LAUNCHER_PROGRESS_FILE=") == 1


def test_prepare_gives_a_new_file_so_an_old_rank_cannot_touch_the_new_attempt(
    tmp_path: Path,
) -> None:
    path = prepare(tmp_path, [0])[0].progress
    old = ProgressFile(path)
    old.tick()
    prepare(tmp_path, [0])
    old.tick()  # the old attempt's rank writes on
    assert sample(path) == RankProgress(0)


def test_a_truncated_or_foreign_file_reads_as_not_attached(tmp_path: Path) -> None:
    path = prepare(tmp_path, [0])[0].progress
    ProgressFile(path).tick()
    with ProgressReader({0: path, 1: tmp_path / "missing"}) as reader:
        assert reader.read()[0].count == 1
        os.truncate(path, 10)  # through a mapping this read would be SIGBUS
        assert reader.read() == (RankProgress(0), RankProgress(1))
    assert decode(3, b"garbage" * 40) == RankProgress(3)


def test_one_sample_of_eight_ranks_is_cheap(tmp_path: Path) -> None:
    files = prepare(tmp_path, range(8))
    writers = [ProgressFile(f.progress) for f in files.values()]
    for w in writers:
        w.tick()
    monitor = Monitor({r: f.progress for r, f in files.items()}, Policy(window_s=60), print)
    start = time.process_time()
    for _ in range(200):
        monitor.sample()
    per_sample = (time.process_time() - start) / 200
    monitor.stop()
    # At the default two samples a second, 1 % of a core is 5 ms per sample; we need far less.
    assert per_sample < 0.005


def test_the_monitor_samples_on_its_clock_and_reports_one_verdict(tmp_path: Path) -> None:
    files = prepare(tmp_path, [0, 1])
    now = [0]
    monitor = Monitor(
        {r: f.progress for r, f in files.items()},
        Policy(window_s=60),
        print,
        clock=lambda: now[0],
    )
    writer = ProgressFile(files[0].progress)
    writer.tick()
    t = sample(files[0].progress).last_ns
    now[0] = t + 59 * 10**9
    assert monitor.sample() is None
    now[0] = t + 61 * 10**9
    verdict = monitor.sample()
    assert verdict is not None and [r.count for r in verdict.ranks] == [1, 0]
    assert isinstance(monitor.state(), Tracker) and monitor.state().armed()
    monitor.stop()


def test_a_monitor_with_the_policy_off_starts_no_thread(tmp_path: Path) -> None:
    files = prepare(tmp_path, [0])
    monitor = Monitor({0: files[0].progress}, Policy(window_s=0), print)
    monitor.start()
    assert monitor._thread is None
    monitor.stop()


SHUTDOWN = """
import atexit, sys
from pathlib import Path
from launcher import contract
contract.progress()  # attaches, and hooks the interpreter's shutdown
def user_cleanup():  # a script's own exit handler, registered after the attach
    Path(sys.argv[1]).write_text("in atexit")
    sys.stdin.read()  # a slow teardown: until the test lets it go
atexit.register(user_cleanup)
"""


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_leaks")
def test_a_rank_says_it_is_exiting_before_any_exit_handler_runs(tmp_path: Path) -> None:
    path = prepare(tmp_path, [0])[0].progress
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", SHUTDOWN, str(marker)],
        stdin=subprocess.PIPE,
        env={**os.environ, PROGRESS_FILE: str(path)},
    )
    try:
        wait_for(marker.exists, 30, "the child's exit handler to run")
        seen = sample(path)
        assert seen.count == 1 and seen.exiting and seen.exiting_ns >= seen.last_ns
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(30) == 0
