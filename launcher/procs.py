"""The only module that starts processes; with `containment`, the only one that signals them.

Every rank runs in its own session (hence its own process group) with stdin on /dev/null, so
that a signal to the group reaches the rank and everything it started. A rank's exit is an
event: one waiter thread per rank blocks in `waitpid` and posts `RankExited` to the
supervisor's queue the moment the rank ends; nothing polls. Every rank's exit is posted, also
when it happens before anyone reads the queue: the supervisor fixes the set of ranks it waits
for from `ProcessSet.started()`, never from what is still running.

Every process started here is registered (under a lock held across the fork) so that the
orphan reaper, which collects the exit status of processes re-parented to this launcher
(it is their child subreaper, see `containment`), never takes the status of one of ours:
`subprocess.Popen.wait` would read a stolen status as exit code 0. Nothing else in the
launcher may start a child process while the reaper runs.

`ProcessSet.close` is the end of a process set: whatever is left of it (a rank's group, its
cgroup, orphans adopted by the launcher and everything below them) gets SIGTERM, then SIGKILL
after the grace period, on every ending, success included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from launcher import containment
from launcher.containment import Cgroup, Containment
from launcher.errors import SpawnError
from launcher.events import Events, RankExited
from launcher.logs import OutputPump, Tail
from launcher.plan import LaunchPlan, RankSpec

log = logging.getLogger("launcher")

CAPTURE_DRAIN_S = 1.0
HELPER_STOP_GRACE_S = 2.0


class _Registry:
    """The pids of every child this process started on purpose (see the module docstring)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.known: set[int] = set()
        self.reaper: threading.Thread | None = None
        self.adopted = 0  # orphans reaped, for the log

    @contextlib.contextmanager
    def spawning(self) -> Iterator[set[int]]:
        """Hold the registry while a child is forked and registered (add its pid to the set)."""
        with self.cond:
            yield self.known
            self.cond.notify_all()

    def forget(self, pid: int) -> None:
        with self.cond:
            self.known.discard(pid)
            self.cond.notify_all()


_REGISTRY = _Registry()


def register(pid: int) -> None:
    """Register a child started outside this module (the watchdog's fork)."""
    with _REGISTRY.spawning() as known:
        known.add(pid)


def known_children() -> set[int]:
    with _REGISTRY.cond:
        return set(_REGISTRY.known)


def reap_orphans() -> None:
    """Start (once) the thread that collects orphans re-parented to this launcher.

    It blocks in `waitid(WNOWAIT)` until some child has exited, without collecting it; a
    registered child is left to its own waiter, anything else is an adopted orphan and is
    collected here, so none lingers as a zombie for the rest of the job.
    """
    if _REGISTRY.reaper is None:
        _REGISTRY.reaper = threading.Thread(target=_reaper, daemon=True, name="orphan-reaper")
        _REGISTRY.reaper.start()


def _reaper() -> None:
    cond = _REGISTRY.cond
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # no child at all: none can be adopted until one starts
            with cond:
                cond.wait(1.0)
            continue
        if info is None:
            continue
        with cond:
            if info.si_pid in _REGISTRY.known:
                cond.wait(0.05)  # its waiter collects it in a moment
                continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
            _REGISTRY.adopted += 1


def _popen(argv: list[str] | tuple[str, ...], **kwargs: object) -> subprocess.Popen[bytes]:
    """`subprocess.Popen`, registered before the reaper can see the child exit."""
    with _REGISTRY.spawning() as known:
        popen: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        known.add(popen.pid)
    return popen


def _wait(popen: subprocess.Popen[bytes], timeout: float | None = None) -> int:
    """Wait for a registered child and forget it once collected."""
    code = popen.wait(timeout)
    _REGISTRY.forget(popen.pid)
    return code


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
        events: Events,
        pump: OutputPump,
        *,
        scope: Containment | None = None,
        log_dir: Path | None = None,
        show_ranks: frozenset[int] | None = None,
        prefix: bool = True,
        name: str = "ranks",
    ) -> None:
        self.plan = plan
        self._events = events
        self._pump = pump
        self._scope = scope if scope is not None else Containment()
        self._log_dir = log_dir
        self._show = show_ranks
        self._prefix = prefix
        self._name = name
        self._cgroup: Cgroup | None = None
        self.ranks: dict[int, RankProcess] = {}

    def start(self) -> None:
        """Start every rank. Raises `SpawnError` (after stopping those already started).

        Every rank's exit is posted on the event queue as `RankExited`, however early it
        comes; `started()` is the set to wait for.
        """
        self._cgroup = self._scope.leaf(self._name)
        try:
            for spec in self.plan.ranks:
                self.ranks[spec.rank] = self._spawn(spec)
        except SpawnError:
            self.kill()
            raise

    def started(self) -> list[int]:
        """Every rank that was started: each posts exactly one `RankExited`."""
        return list(self.ranks)

    def _spawn(self, spec: RankSpec) -> RankProcess:
        if spec.error_file:
            Path(spec.error_file).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                Path(spec.error_file).unlink()  # a stale file would fake a root cause
        try:
            popen = _popen(
                spec.argv,
                cwd=spec.cwd,
                env={**self.plan.full_env(spec), **self._scope.env()},
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
        # Into the cgroup at once: a process the rank forks from now on is inside it too. (A
        # fork in the microseconds before is still under our subreaper and in the group.)
        if self._cgroup is not None:
            self._cgroup.add(popen.pid)
        self._scope.guard(popen.pid)
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
        returncode = _wait(proc.popen)
        proc.returncode = returncode
        self._events.put(RankExited(proc.spec.rank, returncode, time.monotonic()))

    def running(self) -> list[int]:
        return [r for r, p in self.ranks.items() if p.returncode is None]

    def signal(self, sig: int, ranks: list[int] | None = None) -> None:
        """Send `sig` to the process group of each rank (default: every rank ever started)."""
        containment.signal_groups(
            (self.ranks[r].pgid for r in (self.ranks if ranks is None else ranks)), sig
        )

    def groups_alive(self) -> list[int]:
        """Ranks whose process group still has live (non-zombie) members: the rank or what it
        left behind."""
        live = containment.live_groups(p.pgid for p in self.ranks.values())
        return [r for r, p in self.ranks.items() if p.pgid in live]

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self._cgroup is not None:
            self._cgroup.kill()

    def close(self, grace: float) -> None:
        """Make sure nothing of ours survives: whatever is left gets SIGTERM, then SIGKILL.

        "Left" is every live member of a rank's process group, every process in this set's
        cgroup, and every orphan the launcher adopted with everything below it (see
        `leftovers`). Bounded: at most `grace` for them to go, then at most `grace` in all
        for the ranks to be reaped (a rank in uninterruptible sleep may never be).
        """
        left = self.leftovers()
        if left:
            log.debug("stopping %d process(es) left by %s", len(left), self._name)
            self._signal_leftovers(left, signal.SIGTERM)
            deadline = time.monotonic() + grace
            # Nothing signals the end of a grandchild, so this polls; each poll scans /proc,
            # hence the back-off from 5 ms to 100 ms for a process that takes its time.
            pause = 0.005
            while (left := containment.alive(left | self.leftovers())) and (
                time.monotonic() < deadline
            ):
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(2 * pause, 0.1)
            self.kill()
            self._signal_leftovers(left, signal.SIGKILL)
            containment.reap(left)
        deadline = time.monotonic() + grace
        for proc in self.ranks.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                _wait(proc.popen, timeout=max(0.0, deadline - time.monotonic()))
        if self._cgroup is not None:
            self._cgroup.remove()

    def leftovers(self) -> set[int]:
        """Live processes that belong to this set: members of the ranks' groups, of its
        cgroup, and orphans adopted by the launcher (which only exist when something we
        started left them) with their descendants."""
        pgids = {p.pgid for p in self.ranks.values()}
        found = {pid for pid, _ in containment.group_members(containment.live_groups(pgids))}
        if self._cgroup is not None:
            found |= self._cgroup.pids()
        return containment.alive(found) | orphans()

    def _signal_leftovers(self, pids: set[int], sig: int) -> None:
        self.signal(sig)
        containment.signal_pids(pids, sig)

    def wait_output(self, timeout: float) -> None:
        """Wait (bounded) until every rank's pipes reached EOF, so tails are complete."""
        deadline = time.monotonic() + timeout
        for proc in self.ranks.values():
            for done in proc.output_done:
                done.wait(max(0.0, deadline - time.monotonic()))


def orphans() -> set[int]:
    """Live processes re-parented to this launcher (it is their subreaper) and everything
    below them: what a rank left when its parent died, a double-forked daemon above all.
    Cheap when there are none (one read per thread of this process)."""
    adopted = containment.children() - known_children()
    return containment.alive(containment.descendants(adopted)) if adopted else set()


def sweep(grace: float) -> set[int]:
    """End every orphan left with this launcher: SIGTERM, SIGKILL after `grace`. Returns the
    pids that were signalled (empty, and no cost beyond a read of /proc, when none)."""
    left = orphans()
    victims = set(left)
    if left:
        containment.signal_pids(left, signal.SIGTERM)
        deadline = time.monotonic() + grace
        pause = 0.005
        while (left := containment.alive(left | orphans())) and time.monotonic() < deadline:
            victims |= left
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(2 * pause, 0.1)
        containment.signal_pids(left, signal.SIGKILL)
        containment.reap(victims)
    return victims


@contextlib.contextmanager
def contained(scope: Containment, grace: float) -> Iterator[Containment]:
    """The lifetime of a launcher's containment: on the way out, by any path, every orphan is
    ended, the job's cgroup emptied and removed, and the watchdog disarmed."""
    try:
        yield scope
    finally:
        sweep(grace)
        scope.release()


def _start_helper(
    argv: list[str] | tuple[str, ...],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    *,
    stderr: int,
    scope: Containment | None = None,
    leaf: Cgroup | None = None,
) -> subprocess.Popen[bytes]:
    """A helper command (pip, sshd, ssh, a probe) in its own session, stdin on /dev/null,
    stdout piped; in the scope's care (cgroup leaf, watchdog, marker) when one is given.

    Raises `SpawnError` when the program cannot be started.
    """
    if scope is not None and scope.marker:
        env = {**(os.environ if env is None else env), **scope.env()}
    try:
        popen = _popen(
            argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as e:
        raise SpawnError(
            f"cannot start {argv[0]}: {e.strerror or e}", hint="install it, or put it on PATH"
        ) from None
    if leaf is not None:
        leaf.add(popen.pid)
    if scope is not None:
        scope.guard(popen.pid)
    return popen


def _stop_helper(popen: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the helper's group, SIGKILL after `grace`; collected either way."""
    containment.signal_groups([popen.pid], signal.SIGTERM)
    try:
        _wait(popen, timeout=grace)
    except subprocess.TimeoutExpired:
        containment.signal_groups([popen.pid], signal.SIGKILL)
        _wait(popen)
    deadline = time.monotonic() + grace
    while containment.live_groups([popen.pid]) and time.monotonic() < deadline:
        time.sleep(0.01)
    containment.signal_groups([popen.pid], signal.SIGKILL)


def run_once(
    argv: list[str], cwd: Path, env: dict[str, str], scope: Containment | None = None
) -> tuple[int, str]:
    """Run a helper command (pip) to completion, its output passed through; returns (rc, tail).

    Runs in its own process group (and cgroup leaf) in the scope's care. Any exception while
    it runs, a stop signal turned into `StopRequested` above all, stops it (SIGTERM, SIGKILL
    after `HELPER_STOP_GRACE_S`) before it propagates; so does anything it left in its group.
    """
    tail = Tail()
    pump = OutputPump()
    pump.start()
    leaf = scope.leaf("helper") if scope is not None else None
    try:
        popen = _start_helper(argv, cwd, env, stderr=subprocess.STDOUT, scope=scope, leaf=leaf)
        assert popen.stdout is not None
        done = pump.add(os.dup(popen.stdout.fileno()), prefix=b"", console=1, tail=tail)
        popen.stdout.close()
        try:
            returncode = _wait(popen)
        finally:
            _stop_helper(popen, 0.0 if popen.returncode is not None else HELPER_STOP_GRACE_S)
        done.wait(5.0)
    finally:
        pump.stop(1.0)
        if leaf is not None:
            leaf.kill()
            leaf.remove()
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
    popen = _start_helper(argv, cwd, env, stderr=subprocess.PIPE)
    returncode: int | None = None
    try:
        out, err = popen.communicate(timeout=timeout_s)
        returncode = popen.returncode
    except subprocess.TimeoutExpired:
        containment.signal_groups([popen.pid], signal.SIGKILL)
        try:
            out, err = popen.communicate(timeout=CAPTURE_DRAIN_S)
        except subprocess.TimeoutExpired:  # something that left the group still holds the pipes
            popen.wait()
            out, err = b"", b""
    except BaseException:
        containment.signal_groups([popen.pid], signal.SIGKILL)
        popen.wait()
        raise
    finally:
        _REGISTRY.forget(popen.pid)
    return Captured(returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
