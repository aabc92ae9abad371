"""The only module that starts processes and sends signals.

Every rank runs in its own session (hence its own process group) with stdin on /dev/null, so
that a signal to the group reaches the rank and everything it started. A rank's exit is an
event: one waiter thread per rank blocks in `waitpid` and posts `RankExited` to the
supervisor's queue the moment the rank ends; nothing polls.

Ranks must not outlive the launcher, even when the launcher is killed with SIGKILL (torchrun and
mpirun leave orphans then). `Watchdog` is a tiny process forked before any thread starts; it
holds the read end of a pipe whose write end only the launcher has. When the launcher dies for
any reason the pipe reaches EOF and the watchdog terminates every rank group it was told about
(SIGTERM, then SIGKILL one second later). A clean shutdown disarms it first.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from launcher.errors import SpawnError
from launcher.logs import OutputPump, Tail
from launcher.plan import LaunchPlan, RankSpec

WATCHDOG_GRACE_S = 1.0
CAPTURE_DRAIN_S = 1.0


@dataclass(frozen=True, slots=True)
class RankExited:
    rank: int
    returncode: int  # negative: killed by that signal (subprocess's convention)
    at: float  # time.monotonic() when the exit was seen


class Watchdog:
    """Kills the rank groups if the launcher dies. Must be started before any thread exists."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the watchdog process
            try:
                os.close(write_fd)
                os.setsid()  # out of the terminal's process group: Ctrl-C is the launcher's
                for sig in (
                    signal.SIGINT,
                    signal.SIGTERM,
                    signal.SIGHUP,
                    signal.SIGUSR1,
                    signal.SIGUSR2,
                    signal.SIGPIPE,
                ):
                    signal.signal(sig, signal.SIG_IGN)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                _watch(read_fd)
            finally:
                os._exit(0)
        os.close(read_fd)
        self._fd = write_fd
        # Reap the watchdog whenever it ends, so it never lingers as a zombie of ours.
        threading.Thread(target=_reap, args=(pid,), daemon=True, name="watchdog-reaper").start()

    def _send(self, line: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode() + b"\n")

    def guard(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def disarm(self) -> None:
        """Tell the watchdog that every group was dealt with, then let it go."""
        self._send("disarm")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _watch(read_fd: int) -> None:
    groups: set[int] = set()
    buffer = b""
    while chunk := os.read(read_fd, 4096):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"disarm":
                return
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
    # EOF without "disarm": the launcher is gone. Stop everything it started.
    _signal_groups(groups, signal.SIGTERM)
    left = groups
    deadline = time.monotonic() + WATCHDOG_GRACE_S
    while time.monotonic() < deadline and (left := _live_groups(groups)):
        time.sleep(0.02)
    _signal_groups(left, signal.SIGKILL)


def _signal_groups(groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _live_groups(pgids: Iterable[int]) -> set[int]:
    """The groups among `pgids` that have a member which is not a zombie.

    `killpg(pgid, 0)` succeeds while a zombie is left in the group, and a zombie's parent may
    never reap it: an orphan whose new parent is a PID 1 that does not reap (Docker without
    `--init`, or this launcher itself as PID 1). Counting zombies would make every teardown wait
    out the whole grace period for processes that are already dead, so groups that answer
    `killpg` are confirmed with one scan of /proc.
    """
    answering: set[int] = set()
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, 0)
            answering.add(pgid)
    if not answering:
        return answering
    try:
        entries = os.listdir("/proc")  # noqa: PTH208 - names only, many times a second
    except OSError:
        return answering  # no procfs: trust killpg
    live: set[int] = set()
    for name in filter(str.isdigit, entries):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:  # noqa: PTH123 - hot loop, no Path
                stat = f.read()
        except OSError:
            continue  # gone since listdir
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split(maxsplit=3)
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) in answering:
            live.add(int(fields[2]))
    return live


@dataclass(eq=False)
class RankProcess:
    spec: RankSpec
    popen: subprocess.Popen[bytes]
    stderr_tail: Tail
    output_done: list[threading.Event]
    started_at: float
    returncode: int | None = None

    @property
    def pgid(self) -> int:
        return self.popen.pid


class ProcessSet:
    """The ranks of this host: start, signal, and make sure none survives `close()`."""

    def __init__(
        self,
        plan: LaunchPlan,
        events: queue.SimpleQueue[object],
        pump: OutputPump,
        *,
        watchdog: Watchdog | None = None,
        log_dir: Path | None = None,
        show_ranks: frozenset[int] | None = None,
        prefix: bool = True,
    ) -> None:
        self.plan = plan
        self._events = events
        self._pump = pump
        self._watchdog = watchdog
        self._log_dir = log_dir
        self._show = show_ranks
        self._prefix = prefix
        self.ranks: dict[int, RankProcess] = {}

    def start(self) -> None:
        """Start every rank. Raises `SpawnError` (after stopping those already started)."""
        try:
            for spec in self.plan.ranks:
                self.ranks[spec.rank] = self._spawn(spec)
        except SpawnError:
            self.kill()
            raise

    def _spawn(self, spec: RankSpec) -> RankProcess:
        if spec.error_file:
            Path(spec.error_file).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                Path(spec.error_file).unlink()  # a stale file would fake a root cause
        try:
            popen = subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env=self.plan.full_env(spec),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SpawnError(
                f"cannot start rank {spec.rank} ({spec.argv[0]}): {e.strerror or e}",
                hint="check that the program exists and is executable",
            ) from None
        if self._watchdog is not None:
            self._watchdog.guard(popen.pid)
        assert popen.stdout is not None and popen.stderr is not None
        tail = Tail()
        shown = self._show is None or spec.rank in self._show
        prefix = f"[{spec.host}:{spec.rank}] ".encode() if self._prefix else b""
        done = [
            self._pump.add(
                os.dup(stream.fileno()),
                prefix=prefix,
                console=(1, 2)[i] if shown else None,
                log_file=self._log_file(spec, ("stdout", "stderr")[i]),
                tail=tail if i == 1 else None,
            )
            for i, stream in enumerate((popen.stdout, popen.stderr))
        ]
        popen.stdout.close()
        popen.stderr.close()
        proc = RankProcess(spec, popen, tail, done, time.monotonic())
        threading.Thread(
            target=self._wait, args=(proc,), daemon=True, name=f"wait-rank-{spec.rank}"
        ).start()
        return proc

    def _log_file(self, spec: RankSpec, name: str) -> BinaryIO | None:
        if self._log_dir is None:
            return None
        folder = self._log_dir / f"rank-{spec.rank}"
        folder.mkdir(parents=True, exist_ok=True)
        return (folder / f"{name}.log").open("ab")

    def _wait(self, proc: RankProcess) -> None:
        returncode = proc.popen.wait()
        proc.returncode = returncode
        self._events.put(RankExited(proc.spec.rank, returncode, time.monotonic()))

    def running(self) -> list[int]:
        return [r for r, p in self.ranks.items() if p.returncode is None]

    def signal(self, sig: int, ranks: list[int] | None = None) -> None:
        """Send `sig` to the process group of each rank (default: every group still alive)."""
        for rank in self.ranks if ranks is None else ranks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.ranks[rank].pgid, sig)

    def groups_alive(self) -> list[int]:
        """Ranks whose process group still has live (non-zombie) members: the rank or what it
        left behind."""
        live = _live_groups(p.pgid for p in self.ranks.values())
        return [r for r, p in self.ranks.items() if p.pgid in live]

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self, grace: float) -> None:
        """Make sure nothing of ours survives: stragglers get SIGTERM, then SIGKILL.

        Bounded: at most `grace` for the stragglers to go, then at most `grace` in all for
        the ranks to be reaped (a rank in uninterruptible sleep may never be).
        """
        left = self.groups_alive()
        if left:
            self.signal(signal.SIGTERM, left)
            deadline = time.monotonic() + grace
            # Nothing signals the end of a grandchild, so this polls; each poll scans /proc,
            # hence the back-off from 5 ms to 100 ms for a group that takes its time.
            pause = 0.005
            while (left := self.groups_alive()) and time.monotonic() < deadline:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(2 * pause, 0.1)
            self.signal(signal.SIGKILL, left)
        deadline = time.monotonic() + grace
        for proc in self.ranks.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.disarm()

    def wait_output(self, timeout: float) -> None:
        """Wait (bounded) until every rank's pipes reached EOF, so tails are complete."""
        deadline = time.monotonic() + timeout
        for proc in self.ranks.values():
            for done in proc.output_done:
                done.wait(max(0.0, deadline - time.monotonic()))


def _start_helper(
    argv: list[str], cwd: Path | None, env: dict[str, str] | None, *, stderr: int
) -> subprocess.Popen[bytes]:
    """A helper command (pip, a probe) in its own session, stdin on /dev/null, stdout piped.

    Raises `SpawnError` when the program cannot be started.
    """
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as e:
        raise SpawnError(
            f"cannot start {argv[0]}: {e.strerror or e}", hint="install it, or put it on PATH"
        ) from None


def run_once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run a helper command (pip) to completion, its output passed through; returns (rc, tail).

    Runs in its own process group like a rank, so a signal to the launcher during an install
    is handled the same way (the caller's signal handling forwards it).
    """
    tail = Tail()
    pump = OutputPump()
    pump.start()
    popen = _start_helper(argv, cwd, env, stderr=subprocess.STDOUT)
    assert popen.stdout is not None
    done = pump.add(os.dup(popen.stdout.fileno()), prefix=b"", console=1, tail=tail)
    popen.stdout.close()
    try:
        returncode = popen.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    done.wait(5.0)
    pump.stop(1.0)
    return returncode, tail.text()


@dataclass(frozen=True, slots=True)
class Captured:
    """What a helper command printed and how it ended; `returncode` None: killed at the timeout."""

    returncode: int | None
    stdout: str
    stderr: str


def capture(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float,
) -> Captured:
    """Run a short helper command (a `doctor` probe) to completion and return its output.

    It runs in its own session with stdin on /dev/null, so a timeout kills everything it
    started: at `timeout_s` its process group gets SIGKILL and `returncode` is None. Output is
    decoded as UTF-8 with replacement. Raises `SpawnError` when the program cannot be started.
    """
    popen = _start_helper(argv, cwd, None if env is None else dict(env), stderr=subprocess.PIPE)
    returncode: int | None = None
    try:
        out, err = popen.communicate(timeout=timeout_s)
        returncode = popen.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        try:
            out, err = popen.communicate(timeout=CAPTURE_DRAIN_S)
        except subprocess.TimeoutExpired:  # something that left the group still holds the pipes
            popen.wait()
            out, err = b"", b""
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return Captured(returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def fork_each(envs: list[dict[str, str]], body: Callable[[], int]) -> list[int]:
    """Fork one child per environment; each applies its variables, runs `body`, exits with it.

    For `launcher local`: its host launchers are forked from one process that has already
    imported the pipeline, which saves every host the interpreter start and the imports
    (about 60 ms of CPU each on 2 cores). The caller must not have started any thread. A
    child restores the default signal dispositions first and never returns.
    """
    pids = []
    for env in envs:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.environ.update(env)
                code = body()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    return pids


def wait_each(pids: list[int]) -> list[int]:
    """Wait for every child of `fork_each`; their statuses as returncodes (-N: signal N)."""
    codes = []
    for pid in pids:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        codes.append(os.waitstatus_to_exitcode(status))
    return codes
