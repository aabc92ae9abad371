"""Shared fixtures for the single-host integration tests: real launchers, real ranks.

`launch` starts `python -m launcher ...` (or `train`) as a real process, with its stdout and
stderr in files (no pipe can fill up and stall it), `READY_DIR` set for the rank programs of
tests/bin, and the test process made a *child subreaper* for the duration of the test: ranks
and grandchildren orphaned by a dying launcher are re-parented to the test, so the test can see
them die and reap them instead of leaving zombies behind. Every test that uses `launch` also
gets `no_leaks` (tests/helpers/procwatch.py): anything it started that is still alive
afterwards fails the test.

Waiting is always a poll with a deadline (tests/helpers/waiting.py; `Launched.wait_until` stops
at once when the launcher exits first), never a fixed sleep. Trees come from
tests/helpers/trees.py (`sm_tree` is its one-host form).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import waiting
from tests.helpers.procwatch import LeakWatch, no_leaks  # noqa: F401 - fixture re-export
from tests.helpers.trees import TRAIN_CHANNEL, write_tree

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "tests" / "bin"
PYTHON = sys.executable
HOST = "testhost"  # LAUNCHER_HOST_NAME: ranks' output is prefixed "[testhost:R] "
PR_SET_CHILD_SUBREAPER = 36


def prog(name: str) -> str:
    """The path of a rank program in tests/bin."""
    return str(BIN / name)


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float, *, proc: Launched | None = None
) -> float:
    """`tests.helpers.waiting.wait_for` in the argument order older tests use (`what` first);
    with `proc`, `proc.wait_until`. New tests call those directly."""
    if proc is not None:
        return proc.wait_until(condition, timeout, what)
    return waiting.wait_for(condition, timeout, what)


def gone(pid: int) -> bool:
    """True when `pid` no longer runs: it does not exist, or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(keep: set[int]) -> None:
    """Reap zombie children of this process other than `keep` (our own Popen objects)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)


@dataclass
class Launched:
    """One launcher process and where its output goes."""

    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    ready_dir: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def out(self) -> str:
        return self.out_bytes.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.err_path.read_bytes().decode("utf-8", "replace")

    @property
    def out_bytes(self) -> bytes:
        return self.out_path.read_bytes()

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher still running after {timeout} s:\n{self.err}")

    def send(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def exited(self) -> str | None:
        """Once it has exited, "launcher exited (CODE)"; None while it runs (a `stop_if`)."""
        code = self.popen.poll()
        return None if code is None else f"launcher exited ({code})"

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> float:
        """`waiting.wait_for` that gives up as soon as this launcher exits; its stderr is shown
        either way. Returns the seconds the wait took."""
        return waiting.wait_for(
            condition,
            timeout,
            what,
            stop_if=self.exited,
            describe=lambda: f"launcher stderr:\n{self.err}",
        )

    def ready(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ranks 0..n-1 announced themselves; return their announcements."""
        names = [self.ready_dir / f"rank-{r}.json" for r in range(n)]
        self.wait_until(lambda: all(p.exists() for p in names), timeout, f"{n} ranks to be ready")
        return [json.loads(p.read_text()) for p in names]

    def stderr_lines(self) -> list[str]:
        return self.err.splitlines()


Launch = Callable[..., Launched]


@pytest.fixture
def launch(tmp_path: Path, no_leaks: LeakWatch) -> Iterator[Launch]:  # noqa: F811
    """Start launchers: `launch(["run", "--nproc-per-host", "2", prog("ok.py")], env={...})`.

    `argv` follows `python -m launcher`; `command=[...]` replaces the whole command (for
    `train`). Every launcher still running at the end of the test is killed (and the test's
    leak check then names what it left behind).
    """
    started: list[Launched] = []
    before = {c.pid for c in psutil.Process().children()}
    _set_subreaper(True)

    def start(
        argv: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> Launched:
        n = len(started)
        ready_dir = tmp_path / f"ready-{n}"
        ready_dir.mkdir()
        full_env = {
            **os.environ,
            "LAUNCHER_HOST_NAME": HOST,
            "READY_DIR": str(ready_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        out_path, err_path = tmp_path / f"launcher-{n}.out", tmp_path / f"launcher-{n}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            popen = subprocess.Popen(
                list(command) if command else [PYTHON, "-m", "launcher", *argv],
                cwd=cwd or REPO,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        launched = Launched(popen, out_path, err_path, ready_dir)
        started.append(launched)
        return launched

    try:
        yield start
    finally:
        for launched in started:
            if launched.popen.poll() is None:
                launched.popen.kill()
            launched.popen.wait()
        _set_subreaper(False)
        # Orphans re-parented to us that are dead by now are reaped; one that dies later (during
        # the leak check's grace) stays a zombie until the next test's teardown reaps it.
        reap_orphans(keep=before)


def rank_lines(text: str, rank: int, host: str = HOST) -> list[str]:
    """The lines of `text` that rank `rank` printed, prefix removed."""
    prefix = f"[{host}:{rank}] "
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name


def sm_tree(base: Path, script: str, hyperparameters: Mapping[str, str] | None = None) -> Path:
    """A one-host SageMaker tree at `base` whose entry point `train.py` is `script`.

    `hyperparameters` are written as SageMaker writes them (every value a JSON string);
    `sagemaker_program` is added. One File-mode channel, `train`. Returns `base`, for
    `SAGEMAKER_BASE_DIR`.
    """
    hps = hyperparameters or {}
    return write_tree(base, "algo-1", ["algo-1"], hps, script, channels=TRAIN_CHANNEL)
