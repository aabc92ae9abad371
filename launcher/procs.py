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

Helper processes start here too, contained like the ranks: `Helper` for a long-running one
(sshd, an ssh master; a process set of its own), `run_once` for one run to completion (pip,
ssh-keygen, an ssh login), `capture` for a short probe whose output is the answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from launcher import containment
from launcher.containment import Cgroup, Containment
from launcher.errors import SpawnError
from launcher.events import Events, RankExited
from launcher.logs import OutputPump, Tail
from launcher.plan import RankSpec

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
    """The ranks of this host (or one helper): start, signal, and make sure none survives
    `close()`.

    Each rank runs `spec.argv` with `base_env`, then `spec.env` on top (`LaunchPlan.full_env`),
    then the scope's marker; its output goes through `pump`, and its exit is posted on
    `events` as a `RankExited` for `spec.rank`.
    """

    def __init__(
        self,
        ranks: Sequence[RankSpec],
        base_env: Mapping[str, str],
        events: Events,
        pump: OutputPump,
        *,
        scope: Containment | None = None,
        log_dir: Path | None = None,
        show_ranks: frozenset[int] | None = None,
        prefix: bool = True,
        name: str = "ranks",
    ) -> None:
        self._specs = tuple(ranks)
        self._base_env = base_env
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
            for spec in self._specs:
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
                env={**self._base_env, **spec.env, **self._scope.env()},
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
            # Adopted orphans only: a rank's (or helper's) own status belongs to its waiter,
            # which would read a status taken here as exit code 0.
            containment.reap(left - known_children())
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


class Helper:
    """One long-running helper process (a follower's `sshd -D -e`, a leader's `ssh -M -N`
    master), run as a process set of its own: like a rank it gets its own session and process
    group, stdin on /dev/null, its own cgroup leaf, the watchdog's guard (so it dies with the
    launcher, even on SIGKILL) and the scope's marker; its output lines are prefixed
    `[label:0] ` and its exit is posted on `events` as `RankExited` for rank 0.

    `argv` runs in `cwd` with `env` (plus the scope's marker). `start` may follow `stop` (a
    retried connection); `close` is the end, after which `start` raises `SpawnError`. Both
    end it through `ProcessSet.close`: SIGTERM to whatever it left (its group, its cgroup leaf,
    orphans it made), SIGKILL after the grace period, reaped. Safe to use from several
    threads: an owner may close it while another thread starts, stops or watches it.
    """

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        events: Events,
        *,
        scope: Containment | None = None,
    ) -> None:
        self.label = label
        self._spec = RankSpec(0, 0, label, tuple(argv), str(cwd), {}, "")
        self._env = env
        self._events = events
        self._scope = scope
        self._lock = threading.Lock()  # start, stop and close, one at a time
        self._closed = False
        self._procs: ProcessSet | None = None
        self._pump: OutputPump | None = None

    @property
    def scope(self) -> Containment | None:
        return self._scope

    def start(self) -> None:
        """Start it. Raises `SpawnError` when the program cannot be started (nothing is left
        running then) or the helper was closed; `RuntimeError` when it was started already
        and not stopped since."""
        with self._lock:
            if self._closed:
                raise SpawnError(f"{self.label} was not started: the job is ending")
            if self._procs is not None:
                raise RuntimeError(f"{self.label} started twice")
            self._pump = OutputPump()
            self._pump.start()
            self._procs = ProcessSet(
                (self._spec,), self._env, self._events, self._pump, scope=self._scope, name="helper"
            )
            try:
                self._procs.start()
            except BaseException:
                self._end(0.0)  # a half-started helper leaves no pump, leaf or process
                raise

    def running(self) -> bool:
        """True from `start` until its process is seen to exit or it is stopped."""
        procs = self._procs
        return procs is not None and bool(procs.running())

    def log_tail(self) -> str:
        """The end of its stderr, "" when it is not started; after an exit it waits (up to
        0.5 s) for the pipe to drain first, so the last words are in."""
        procs = self._procs
        if procs is None or 0 not in procs.ranks:
            return ""
        if not procs.running():
            procs.wait_output(0.5)
        return procs.ranks[0].stderr_tail.text().strip()

    def stop(self, grace_s: float) -> None:
        """SIGTERM to it and whatever it left, SIGKILL after `grace_s`, reaped; it may be
        started again. Idempotent, and bounded like `ProcessSet.close` (plus 2 s for the output)."""
        with self._lock:
            self._end(grace_s)

    def close(self, grace_s: float) -> None:
        """`stop`, for good: a later or concurrent `start` raises `SpawnError`."""
        with self._lock:
            self._closed = True
            self._end(grace_s)

    def _end(self, grace_s: float) -> None:
        procs, pump = self._procs, self._pump
        self._procs = self._pump = None
        if procs is not None:
            procs.close(grace_s)
            procs.wait_output(1.0)
        if pump is not None:
            pump.stop(1.0)


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
