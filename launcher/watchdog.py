"""The watchdog: whatever a launcher started dies with it, even when it is SIGKILLed.

torchrun and mpirun leave orphans when they are killed; a launcher must not. `Watchdog` is a
tiny process forked before any thread starts. It holds the read end of a pipe whose write end
only the launcher has, and is told over that pipe what to clean up: process groups (`+PGID`),
the job's cgroup (`cgroup PATH`) and the job's environment marker (`marker VALUE`). When the
launcher dies for any reason the pipe reaches EOF and the watchdog, in this order:

1. kills every process in the job's cgroup (`cgroup.kill`): exact, whatever the processes did;
2. sends SIGTERM to every group it was told about and to every process whose environment
   carries the marker (those that left their group or session and lost their parent, which
   is the only way to find a double-forked daemon once the launcher, its subreaper, is gone);
3. after `WATCHDOG_GRACE_S`, SIGKILL to whatever of those is still alive, then removes the
   cgroup folders.

A clean shutdown disarms it first (`disarm`), after which it exits without touching anything.
The watchdog ignores the stop signals (a Ctrl-C is the launcher's to handle) and never writes
to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from launcher import containment

WATCHDOG_GRACE_S = 1.0


class Watchdog:
    """Kills the job's processes if the launcher dies. Must be started before any thread exists
    (a fork with threads running may copy a held lock into the child)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.pid: int | None = None

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
        self.pid = pid
        # Reap the watchdog whenever it ends, so it never lingers as a zombie of ours.
        threading.Thread(target=_reap, args=(pid,), daemon=True, name="watchdog-reaper").start()

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def _send(self, line: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode() + b"\n")

    def guard(self, pgid: int) -> None:
        """Kill process group `pgid` if the launcher dies."""
        self._send(f"+{pgid}")

    def guard_cgroup(self, path: Path) -> None:
        """Kill everything in the cgroup at `path` (and below) if the launcher dies."""
        self._send(f"cgroup {path}")

    def guard_marker(self, marker: str) -> None:
        """Kill every process whose environment holds `marker` if the launcher dies."""
        self._send(f"marker {marker}")

    def disarm(self) -> None:
        """Tell the watchdog that every process was dealt with, then let it go."""
        self._send("disarm")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _watch(read_fd: int) -> None:
    groups: set[int] = set()
    cgroups: list[Path] = []
    markers: list[str] = []
    buffer = b""
    while chunk := os.read(read_fd, 4096):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"disarm":
                return
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"cgroup "):
                cgroups.append(Path(os.fsdecode(line[7:])))
            elif line.startswith(b"marker "):
                markers.append(line[7:].decode())
    # EOF without "disarm": the launcher is gone. Stop everything it started.
    for group in cgroups:
        containment.Cgroup(group).kill()
    marked = {pid for m in markers for pid in containment.pids_with_marker(m)}
    containment.signal_groups(groups, signal.SIGTERM)
    containment.signal_pids(marked, signal.SIGTERM)
    deadline = time.monotonic() + WATCHDOG_GRACE_S
    left_groups, left_pids = groups, marked
    while time.monotonic() < deadline:
        left_groups = containment.live_groups(groups)
        left_pids = containment.alive(marked)
        if not left_groups and not left_pids:
            break
        time.sleep(0.02)
    containment.signal_groups(left_groups, signal.SIGKILL)
    containment.signal_pids(left_pids, signal.SIGKILL)
    for group in cgroups:
        containment.Cgroup(group).remove(timeout_s=WATCHDOG_GRACE_S)
