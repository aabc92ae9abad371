"""The failure report: root cause first, errors from files or stderr, grouping, the files."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from launcher import report
from launcher.events import Outcome, RankExited, RemoteAbort, RunState

HOST = "algo-1"
TRACEBACK = """\
Traceback (most recent call last):
  File "/opt/ml/code/train.py", line 12, in <module>
    main()
  File "/opt/ml/code/train.py", line 9, in main
    raise ValueError("loss is nan at step 1200")
ValueError: loss is nan at step 1200
"""


def outcome(
    exits: dict[int, tuple[int, float]],
    root: int | None,
    terminated: frozenset[int] | set[int] = frozenset(),
    state: RunState = RunState.FAILED,
    **kw: object,
) -> Outcome:
    events = {r: RankExited(r, code, at) for r, (code, at) in exits.items()}
    return Outcome(state, events, root, frozenset(terminated), **kw)  # type: ignore[arg-type]


def traces(
    n: int, text: str = "", error_files: dict[int, str] | None = None
) -> dict[int, report.RankTrace]:
    """The traces of ranks 0..n-1, as `report.failures` takes them."""
    return {r: report.RankTrace(HOST, (error_files or {}).get(r, ""), text) for r in range(n)}


# --- exception lines -------------------------------------------------------------------------


def test_exception_line_of_a_traceback() -> None:
    assert report.exception_line(TRACEBACK) == "ValueError: loss is nan at step 1200"


def test_exception_line_ignores_what_is_printed_after_the_traceback() -> None:
    after = TRACEBACK + "[W1125 ProcessGroupGloo.cpp:123] Warning: destroy_process_group\n"
    assert report.exception_line(after) == "ValueError: loss is nan at step 1200"


def test_exception_line_of_chained_exceptions_is_the_last_one() -> None:
    chained = (
        TRACEBACK.replace("ValueError", "KeyError")
        + "\nDuring handling of the above exception, another exception occurred:\n\n"
        + TRACEBACK.replace("ValueError: loss", "RuntimeError: wrapped")
    )
    assert report.exception_line(chained) == "RuntimeError: wrapped is nan at step 1200"


def test_exception_line_of_a_multi_line_message_is_its_first_line() -> None:
    text = TRACEBACK.replace("step 1200\n", "step 1200\nsecond line of the message\n")
    assert report.exception_line(text) == "ValueError: loss is nan at step 1200"


def test_exception_line_of_a_syntax_error() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/opt/ml/code/train.py", line 3\n'
        "    print(\n"
        "         ^\n"
        "SyntaxError: '(' was never closed\n"
    )
    assert report.exception_line(text) == "SyntaxError: '(' was never closed"


def test_without_a_traceback_the_last_unindented_line() -> None:
    assert report.exception_line("loading\nCUDA error: out of memory\n  detail\n") == (
        "CUDA error: out of memory"
    )
    assert report.exception_line("") == ""
    assert report.exception_line("   \n\t\n") == ""


def test_exception_line_under_torch_rank_prefixes() -> None:
    # torch.distributed prefixes every line of an uncaught exception with "[rankN]: ".
    tail = (
        "[rank3]: Traceback (most recent call last):\n"
        '[rank3]:   File "train.py", line 4, in <module>\n'
        '[rank3]:     raise RuntimeError("broke")\n'
        "[rank3]: RuntimeError: broke\n"
        "[rank3]: note printed afterwards\n"
    )
    assert report.exception_line(tail) == "RuntimeError: broke"


def test_long_exception_lines_are_cut() -> None:
    line = report.exception_line("Traceback (most recent call last):\nE: " + "x" * 1000)
    assert len(line) == 300 and line.endswith("...")


# --- error files -----------------------------------------------------------------------------


def test_error_file_in_torch_record_format(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    callstack = 'Traceback (most recent call last):\n  File "x.py"\nOSError: disk full\n'
    message = {"message": "OSError: disk full", "extraInfo": {"py_callstack": callstack}}
    path.write_text(json.dumps({"message": {**message, "timestamp": "1"}}))
    assert report.read_error_file(str(path)) == ("OSError: disk full", callstack)


def test_error_file_in_the_plain_string_format(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    path.write_text(json.dumps({"message": "RuntimeError: boom", "timestamp": 3}))
    assert report.read_error_file(str(path)) == ("RuntimeError: boom", "")


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '{"message": 3}', '{"x": 1}'])
def test_unusable_error_files_are_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "error.json"
    path.write_text(content)
    assert report.read_error_file(str(path)) is None


def test_absent_error_file_is_ignored(tmp_path: Path) -> None:
    assert report.read_error_file(str(tmp_path / "missing.json")) is None
    assert report.read_error_file("") is None


def test_the_error_file_wins_over_the_stderr_tail(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    path.write_text(json.dumps({"message": {"message": "RecordedError: from file"}}))
    found = report.failures(outcome({0: (1, 1.0)}, 0), traces(1, TRACEBACK, {0: str(path)}))
    assert found[0].message == "RecordedError: from file"


# --- root cause, grouping --------------------------------------------------------------------


def test_root_cause_first_then_the_order_of_exit() -> None:
    result = outcome({0: (-15, 3.0), 1: (-15, 2.0), 2: (3, 5.0), 3: (0, 1.0)}, 2, {0, 1})
    found = report.failures(result, traces(4, TRACEBACK))
    assert [f.rank for f in found] == [2, 1, 0]  # rank 3 succeeded: not a failure
    assert [f.terminated for f in found] == [False, True, True]


def test_a_terminated_rank_is_never_the_root_cause_even_if_it_exited_first() -> None:
    result = outcome({0: (1, 1.0), 1: (2, 2.0)}, 1, {0})
    found = report.failures(result, traces(2))
    assert report.headline(result, found) == f"rank 1 on {HOST} exited with code 2"


def test_headline_names_the_signal_and_the_exception() -> None:
    result = outcome({0: (-signal.SIGSEGV, 1.0)}, 0)
    found = report.failures(result, traces(1, "Fatal Python error: Segmentation fault\n"))
    assert report.headline(result, found) == (
        f"rank 0 on {HOST} was killed by SIGSEGV (exit 139): Fatal Python error: Segmentation fault"
    )
    assert report.exit_code(result) == 139


def test_headline_of_a_stopped_job_and_of_a_remote_abort() -> None:
    stopped = outcome({0: (-15, 1.0)}, None, {0}, RunState.INTERRUPTED, stop_signal=15)
    assert report.headline(stopped, report.failures(stopped, traces(1))) == (
        "the job was stopped by SIGTERM, which was forwarded to every rank"
    )
    assert report.exit_code(stopped) == 143
    remote = RemoteAbort("rank 9 on algo-3 exited with code 4: KeyError: 'x'", 4)
    aborted = outcome({0: (-15, 1.0)}, None, {0}, RunState.ABORTED, remote=remote)
    assert report.headline(aborted, []) == remote.reason
    assert report.exit_code(aborted) == 4


def test_identical_errors_are_grouped() -> None:
    result = outcome({r: (1, float(r)) for r in range(4)} | {4: (-15, 9.0)}, 0, {4})
    found = report.failures(result, traces(5, TRACEBACK))
    text = report.failure_text(report.headline(result, found), found)
    lines = text.splitlines()
    assert lines[0] == f"rank 0 on {HOST} exited with code 1: ValueError: loss is nan at step 1200"
    assert f"  ranks 0 ({HOST}), 1 ({HOST}), 2 ({HOST}), 3 ({HOST}): ValueError" in text
    assert f"  ranks 4 ({HOST}): terminated by the launcher" in lines
    assert "Last lines of rank 0's stderr:" in lines


def test_the_first_1024_characters_hold_the_root_cause() -> None:
    noise = "".join(f"step {i} loss {i / 7:.5f}\n" for i in range(5000)) + TRACEBACK
    result = outcome({r: (1, float(r)) for r in range(64)}, 17)
    found = report.failures(result, traces(64, noise))
    text = report.failure_text(report.headline(result, found), found)
    head = text[:1024]
    assert f"rank 17 on {HOST} exited with code 1: ValueError: loss is nan at step 1200" in head
    assert text.startswith("rank 17 ")


def test_the_traceback_from_the_error_file_is_in_the_report(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    payload = {"message": "E: x", "extraInfo": {"py_callstack": "the recorded stack\n"}}
    path.write_text(json.dumps({"message": payload}))
    result = outcome({0: (1, 1.0)}, 0)
    found = report.failures(result, traces(1, "", {0: str(path)}))
    text = report.failure_text(report.headline(result, found), found)
    assert "Traceback of the root cause:\nthe recorded stack" in text


# --- files -----------------------------------------------------------------------------------


def test_failure_file_is_written_once_and_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "output"
    assert report.write_failure(out, "first\n") is True
    assert report.write_failure(out, "second\n") is False
    assert (out / "failure").read_text() == "first\n"
    assert sorted(p.name for p in out.iterdir()) == ["failure"]  # no temporary file left


def test_the_scripts_failure_file_is_kept_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "failure").write_bytes(b"user reason \xff\n")
    assert report.write_failure(out, "launcher reason\n") is False
    assert (out / "failure").read_bytes() == b"user reason \xff\n"


def test_success_file(tmp_path: Path) -> None:
    report.write_success(tmp_path / "output")
    assert (tmp_path / "output" / "success").read_bytes() == b""
