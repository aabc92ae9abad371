"""Stacks (`launcher.hangs.stacks`): the two dump formats parsed, the main thread found, what a
stack says (in a collective? which one? who called it?), and the fallbacks between methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.hangs.stacks import (
    Frame,
    RankStack,
    Target,
    Thread,
    collect,
    main_thread,
    parse_faulthandler,
    parse_pyspy,
    take,
    write,
)

# What py-spy 0.4.3 printed for a gloo rank waiting in all_reduce (tests/bin/hang_rank.py).
PYSPY_WAITING = """\
Process 9846: /work/main/.venv/bin/python tests/bin/hang_rank.py sleep
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 9846 (idle): "MainThread"
    all_reduce (torch/distributed/distributed_c10d.py:3252)
    _exception_logger.<locals>.wrapper (torch/distributed/c10d_logger.py:83)
    all_reduce (collectives/ops.py:83)
    step (hang_rank.py:45)
    stuck (hang_rank.py:60)
    main (hang_rank.py:97)
    <module> (hang_rank.py:108)
Thread 9850 (idle): "pin_memory"
    wait (threading.py:327)
    _bootstrap (threading.py:1002)
"""

# What faulthandler wrote on the stack signal for a rank spinning in Python, with a second
# Python thread (threads started by `threading` begin in its _bootstrap).
FAULTHANDLER_SPINNING = """\
Thread 0x00007f2fc5d16640 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f88ac41db80 (most recent call first):
  File "/work/main/tests/bin/hang_rank.py", line 39 in spin
  File "/work/main/tests/bin/hang_rank.py", line 56 in stuck
  File "/work/main/tests/bin/hang_rank.py", line 97 in main
  File "/work/main/tests/bin/hang_rank.py", line 108 in <module>
"""


def test_py_spy_output_is_parsed_innermost_first() -> None:
    threads = parse_pyspy(PYSPY_WAITING)
    assert [t.name for t in threads] == ["MainThread", "pin_memory"]
    main = main_thread(threads)
    assert main is not None and main.frames[0] == Frame(
        "all_reduce", "torch/distributed/distributed_c10d.py", 3252
    )
    assert main.frames[-1] == Frame("<module>", "hang_rank.py", 108)


def test_a_faulthandler_dump_is_parsed_and_its_main_thread_found() -> None:
    threads = parse_faulthandler(FAULTHANDLER_SPINNING)
    assert len(threads) == 2
    main = main_thread(threads)
    assert main is not None
    assert main.frames[0] == Frame("spin", "/work/main/tests/bin/hang_rank.py", 39)


def test_the_single_thread_faulthandler_form_and_odd_lines() -> None:
    text = 'Stack (most recent call first):\n  File "a.py", line 3 in f\n  <no Python frame>\n'
    threads = parse_faulthandler(text)
    assert threads == (Thread("stack", (Frame("f", "a.py", 3),)),)
    assert parse_pyspy("garbage\n\n") == () and parse_faulthandler("") == ()
    assert main_thread(()) is None


def test_a_stack_in_a_collective_names_it_and_its_caller() -> None:
    main = main_thread(parse_pyspy(PYSPY_WAITING))
    assert main is not None
    stack = RankStack(0, 9846, "py-spy", PYSPY_WAITING, main.frames)
    assert stack.ok and stack.in_collective and stack.op == "all_reduce"
    assert stack.caller == Frame("step", "hang_rank.py", 45)


def test_a_stack_outside_collectives() -> None:
    main = main_thread(parse_faulthandler(FAULTHANDLER_SPINNING))
    assert main is not None
    stack = RankStack(1, 7, "signal", "", main.frames)
    assert not stack.in_collective and stack.op is None
    assert stack.caller == stack.innermost == main.frames[0]


@pytest.mark.parametrize(
    ("frame", "op"),
    [
        (Frame("synchronize", "/x/site-packages/torch/cuda/__init__.py", 1), "synchronize"),
        (Frame("barrier", "/x/collectives/ops.py", 124), "barrier"),
        (Frame("allreduce_", "/x/site-packages/horovod/torch/mpi_ops.py", 9), "allreduce_"),
        (Frame("_store_based_barrier", "/x/torch/distributed/distributed_c10d.py", 9), None),
    ],
)
def test_waits_that_count_as_collectives(frame: Frame, op: str | None) -> None:
    stack = RankStack(0, 1, "py-spy", "", (frame, Frame("<module>", "t.py", 1)))
    assert stack.in_collective
    assert stack.op == (op or frame.function)


def fake_py_spy(code: int | None, out: str = "", err: str = "") -> object:
    calls: list[list[str]] = []

    def run(argv: list[str], timeout_s: float) -> tuple[int | None, str, str]:
        calls.append(argv)
        return code, out, err

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_py_spy_is_asked_for_the_targets_pid() -> None:
    run = fake_py_spy(0, PYSPY_WAITING)
    got = take(Target(0, 9846), methods=("py-spy",), py_spy="/bin/py-spy", run=run)  # type: ignore[arg-type]
    assert got.ok and got.method == "py-spy" and got.op == "all_reduce"
    assert run.calls == [["/bin/py-spy", "dump", "--pid", "9846"]]  # type: ignore[attr-defined]


def test_every_reason_is_kept_when_no_method_works() -> None:
    denied = fake_py_spy(1, err="Error: Permission Denied: try running as root\n")
    got = take(Target(3, 1234), py_spy="/bin/py-spy", run=denied)  # type: ignore[arg-type]
    assert not got.ok and got.method == "" and got.pid == 1234
    assert got.error == (
        "py-spy: Error: Permission Denied: try running as root; "
        "signal: the rank announced no stack signal"
    )
    timed_out = take(Target(3, 1), methods=("py-spy",), py_spy="x", run=fake_py_spy(None))  # type: ignore[arg-type]
    assert timed_out.error == "py-spy: timed out"


def test_a_dead_process_is_not_waited_for(tmp_path: Path) -> None:
    stacks = tmp_path / "rank-0.stacks"
    stacks.write_bytes(b"")
    got = take(Target(0, 2**22 + 12345, stacks, 38), methods=("signal",), timeout_s=30)
    assert not got.ok and "is gone" in got.error


def test_unknown_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stack method"):
        collect([Target(0, 1)], methods=("gdb",))


def test_write_puts_one_file_per_rank(tmp_path: Path) -> None:
    main = main_thread(parse_pyspy(PYSPY_WAITING))
    assert main is not None
    stacks = {
        0: RankStack(0, 9846, "py-spy", PYSPY_WAITING, main.frames),
        1: RankStack(1, 9847, "", "", error="py-spy: Permission Denied"),
    }
    paths = write(tmp_path / "stacks", stacks, {0: "algo-1", 1: "algo-2"})
    assert [p.name for p in paths] == ["rank-0.txt", "rank-1.txt"]
    first = paths[0].read_text()
    assert first.startswith("# rank 0 on algo-1, pid 9846: taken with py-spy\nProcess 9846")
    assert (
        paths[1].read_text()
        == "# rank 1 on algo-2, pid 9847: no stack: py-spy: Permission Denied\n"
    )
