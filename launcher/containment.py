"""Containment: nothing a job starts outlives it (DESIGN.md decision 14).

A rank may start helpers that leave its process group or session (`start_new_session=True`),
or daemons that double-fork and lose their parent. Process groups alone cannot find those, so
the launcher uses what the kernel offers, strongest first:

- **cgroup v2** (where the host gives us a writable cgroup v2 hierarchy, as root on most
  hosts and in privileged containers): the launcher makes one cgroup for the job under its own
  (`launcher-<pid>-<hex>`), and each process set gets a leaf in it. Every process that a rank
  starts stays in the rank's cgroup whatever it does with sessions or parents, and
  `cgroup.kill` ends all of them at once. Where the folder cannot be made (read-only cgroupfs,
  cgroup v1 only, no root), the layers below still hold; `Containment.mechanism` says which.
- **child subreaper** (`PR_SET_CHILD_SUBREAPER`, Linux 3.4+): orphans of any process below
  the launcher are re-parented to the launcher instead of to PID 1, so the tree under the
  launcher is complete while it lives: the end of a process set sweeps every orphan and its
  descendants (walked with `psutil`), and `procs` reaps orphans as they exit.
- **an environment marker** (`LAUNCHER_JOB_SCOPE`): every process the launcher starts gets the
  job's marker in its environment, and inherits it to its own children. Only the watchdog
  needs it: once the launcher (the subreaper) is dead, the tree is gone and a scan of
  `/proc/*/environ` is how a daemon is still found without a cgroup. A process that replaced
  its whole environment escapes this layer alone.

This module and `procs` are the only ones that send signals (the watchdog uses this module).
Nothing here raises on a kernel that lacks a facility: it reports what it could not do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.watchdog import Watchdog

SCOPE_VAR = "LAUNCHER_JOB_SCOPE"
CGROUP_VAR = "LAUNCHER_CGROUP"  # "off": no cgroup even where one could be made
PR_SET_CHILD_SUBREAPER = 36
CGROUP_REMOVE_WAIT_S = 2.0


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - hot path, no Path
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    return stat[stat.rfind(b")") + 2 :].split(maxsplit=4)


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is dead: only its status is left)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if is_alive(pid)}


def children(pid: int | None = None) -> set[int]:
    """The direct children of `pid` (default: this process), adopted orphans included.

    Reads /proc/PID/task/*/children (every thread's children: a child belongs to the thread
    that forked it). Falls back to a scan of /proc when the kernel lacks that file.
    """
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")  # noqa: PTH208 - names only
    except OSError:
        return found
    try:
        for task in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.update(int(c) for c in text.split())
    except OSError:  # no CONFIG_PROC_CHILDREN: one scan of every process's parent
        for name in filter(str.isdigit, os.listdir("/proc")):  # noqa: PTH208
            fields = _stat_fields(name)
            if fields is not None and int(fields[1]) == pid:
                found.add(int(name))
    return found


def descendants(roots: Iterable[int]) -> set[int]:
    """`roots` and every process below them (psutil's walk of the whole process table)."""
    import psutil  # noqa: PLC0415 - only when something is left over, which is rare

    found: set[int] = set()
    for root in roots:
        try:
            proc = psutil.Process(root)
            found.add(root)
            found.update(c.pid for c in proc.children(recursive=True))
        except psutil.Error:
            continue
    return found


def live_groups(pgids: Iterable[int]) -> set[int]:
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
    return {pgid for _, pgid in group_members(answering)}


def group_members(pgids: set[int]) -> set[tuple[int, int]]:
    """(pid, pgid) of every live process whose group is one of `pgids`: one scan of /proc
    (none for no group: every job's teardown asks about groups that are all gone)."""
    members: set[tuple[int, int]] = set()
    if not pgids:
        return members
    try:
        entries = os.listdir("/proc")  # noqa: PTH208 - names only, many times a second
    except OSError:
        return {(pgid, pgid) for pgid in pgids}  # no procfs: trust killpg
    for name in filter(str.isdigit, entries):
        fields = _stat_fields(name)
        if fields and len(fields) > 2 and fields[0] not in (b"Z", b"X"):
            pgrp = int(fields[2])
            if pgrp in pgids:
                members.add((int(name), pgrp))
    return members


def pids_with_marker(marker: str) -> set[int]:
    """Live processes (not this one) whose environment holds `marker` in `SCOPE_VAR`."""
    prefix = f"{SCOPE_VAR}=".encode()
    token = marker.encode()
    me = os.getpid()
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")  # noqa: PTH208
    except OSError:
        return found
    for name in filter(str.isdigit, entries):
        if int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:  # noqa: PTH123
                environ = f.read()
        except OSError:
            continue
        for entry in environ.split(b"\0"):
            if entry.startswith(prefix) and token in entry[len(prefix) :].split(b":"):
                found.add(int(name))
                break
    return found


# --- signals ----------------------------------------------------------------------------------


def signal_groups(groups: Iterable[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those of `pids` that are our exited children (orphans we
    adopted and killed); others are left alone."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def set_subreaper() -> bool:
    """Make this process the child subreaper of everything below it. False where the kernel
    (or the platform) does not offer it."""
    import ctypes  # noqa: PLC0415 - 1 ms of imports, only for commands that start ranks

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# --- cgroup v2 --------------------------------------------------------------------------------


class Cgroup:
    """One cgroup v2 folder. Every method is best effort: it reports, it never raises OSError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({self.path})"

    @classmethod
    def create_under_own(cls, name: str) -> Cgroup | None:
        """A new cgroup `name` below this process's own cgroup v2, or None where none can be
        made (no cgroup v2 mounted, read-only, not permitted)."""
        own = own_cgroup_dir()
        if own is None:
            return None
        return Cgroup(own).child(name)

    def child(self, name: str) -> Cgroup | None:
        path = self.path / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError:
            return None
        return Cgroup(path)

    def add(self, pid: int) -> bool:
        """Move `pid` (with all its threads) into this cgroup; False if it could not be."""
        try:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            return False
        return True

    def pids(self) -> set[int]:
        """Every process in this cgroup and in the cgroups below it."""
        found: set[int] = set()
        for folder, _, _ in os.walk(self.path):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
        return found

    def populated(self) -> bool:
        try:
            events = (self.path / "cgroup.events").read_text()
        except OSError:
            return False  # gone
        return "populated 1" in events

    def kill(self) -> None:
        """SIGKILL every process in this cgroup and below it, at once where the kernel has
        `cgroup.kill` (5.14+); otherwise freeze, kill one by one, thaw."""
        try:
            (self.path / "cgroup.kill").write_text("1\n")
            return
        except FileNotFoundError:
            if not self.path.is_dir():
                return
        except OSError:
            return
        frozen = False
        with contextlib.suppress(OSError):
            (self.path / "cgroup.freeze").write_text("1\n")
            frozen = True
        signal_pids(self.pids(), signal.SIGKILL)
        if frozen:
            with contextlib.suppress(OSError):
                (self.path / "cgroup.freeze").write_text("0\n")

    def remove(self, timeout_s: float = CGROUP_REMOVE_WAIT_S) -> bool:
        """Remove this cgroup and those below it once they are empty (bounded wait)."""
        deadline = time.monotonic() + timeout_s
        pause = 0.002
        while self.populated() and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        ok = True
        for folder, _, _ in sorted(os.walk(self.path), key=lambda w: -len(w[0])):
            try:
                Path(folder).rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                ok = False
        return ok


def own_cgroup_dir() -> Path | None:
    """This process's cgroup v2 folder, when a cgroup v2 hierarchy is mounted and we are in
    it (pure v2 hosts, and the `unified` mount of hybrid hosts)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None or own.endswith(" (deleted)"):
        return None
    for mount in mounts:
        head, _, tail = mount.partition(" - ")
        if not tail.startswith("cgroup2 "):
            continue
        fields = head.split()
        root, point = fields[3], fields[4]
        if own == root or own.startswith(root.rstrip("/") + "/"):
            rel = own[len(root.rstrip("/")) :].lstrip("/")
            path = Path(point.replace("\\040", " ")) / rel
            if path.is_dir() and os.access(path, os.W_OK):
                return path
    return None


# --- the job's containment ----------------------------------------------------------------------


class Containment:
    """This launcher's means of ending everything it started (see the module docstring).

    `enter` sets it up once per launcher process; `leaf` gives each process set its own
    cgroup; `env` is what every started process gets in its environment; `release` is the
    clean end: the watchdog is disarmed and the cgroup folders removed. Without `enter`
    (dry runs, tests of single parts), every method is a harmless no-op.
    """

    def __init__(
        self,
        watchdog: Watchdog | None = None,
        *,
        cgroup: Cgroup | None = None,
        marker: str = "",
        outer_markers: str = "",
        subreaper: bool = False,
    ) -> None:
        self.watchdog = watchdog
        self.cgroup = cgroup
        self.marker = marker
        self._markers = f"{outer_markers}:{marker}" if outer_markers else marker
        self.subreaper = subreaper
        self._leaves = 0

    @classmethod
    def enter(cls, watchdog: Watchdog, environ: dict[str, str]) -> Containment:
        """Set up containment for this launcher. Call after the watchdog started (it must fork
        before any thread) and before anything else is started."""
        marker = os.urandom(8).hex()
        name = f"launcher-{os.getpid()}-{marker[:8]}"
        wanted = environ.get(CGROUP_VAR, "auto") != "off"
        cgroup = Cgroup.create_under_own(name) if wanted else None
        if cgroup is not None:
            watchdog.guard_cgroup(cgroup.path)
        watchdog.guard_marker(marker)
        return cls(
            watchdog,
            cgroup=cgroup,
            marker=marker,
            outer_markers=environ.get(SCOPE_VAR, ""),
            subreaper=set_subreaper(),
        )

    @property
    def mechanism(self) -> str:
        parts = []
        if self.cgroup is not None:
            parts.append(f"cgroup v2 {self.cgroup.path}")
        if self.subreaper:
            parts.append("child subreaper")
        if self.watchdog is not None and self.watchdog.armed:
            parts.append("watchdog with process groups and environment marker")
        return " + ".join(parts) or "process groups only"

    def env(self) -> dict[str, str]:
        """The variable every process we start carries (appended to an outer launcher's)."""
        return {SCOPE_VAR: self._markers} if self.marker else {}

    def leaf(self, name: str) -> Cgroup | None:
        """A new cgroup for one process set (None without a job cgroup)."""
        if self.cgroup is None:
            return None
        self._leaves += 1
        return self.cgroup.child(f"{name}-{self._leaves}")

    def guard(self, pgid: int) -> None:
        if self.watchdog is not None:
            self.watchdog.guard(pgid)

    def release(self) -> None:
        """The job is over and every process set was closed: disarm the watchdog, remove the
        job's cgroup (after killing anything a process set did not own, which is none)."""
        if self.cgroup is not None:
            if self.cgroup.pids():
                self.cgroup.kill()
            self.cgroup.remove()
        if self.watchdog is not None:
            self.watchdog.disarm()
