"""The launcher's errors and the one table that maps outcomes to exit codes.

Every error the launcher raises on purpose is a `LauncherError`: it carries its context (the
file and key for configuration, the hosts for peers) and an exit code, and its `str()` is the
single line printed to the user and written first into `output/failure`. `cli` is the only
place that turns them into `sys.exit`.
"""

from __future__ import annotations

import signal
from pathlib import Path

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad configuration or command line
EXIT_PEERS = 3  # peers (hosts, sshd) never arrived
# The job made no progress for longer than the hang window (docs/hangs.md): every host exits
# with it. 124 is what `timeout(1)` returns for a command it had to stop, which a hung job is.
EXIT_HANG = 124
# A preflight check failed (docs/preflight.md): every host exits with it before any user code.
# 78 is sysexits' EX_CONFIG: the machine the job was given is not fit to run it.
EXIT_PREFLIGHT = 78


class LauncherError(Exception):
    """Base class. `exit_code` says how the launcher exits; `hint` says what to do next."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(LauncherError):
    """A configuration file, key or value is wrong. Names the file and the key."""

    exit_code = EXIT_USAGE

    def __init__(self, path: Path | str, key: str | None, problem: str, *, hint: str = "") -> None:
        where = f"{path}: {key}" if key else f"{path}"
        super().__init__(f"{where}: {problem}", hint=hint)
        self.path = str(path)
        self.key = key


class UsageError(LauncherError):
    """The command line is wrong."""

    exit_code = EXIT_USAGE


class PeersUnreachable(LauncherError):
    """Some hosts of the job never arrived before the peer deadline."""

    exit_code = EXIT_PEERS

    def __init__(self, missing: list[str], waited_s: float, *, what: str = "hosts") -> None:
        names = ", ".join(missing)
        super().__init__(
            f"{what} never arrived within {waited_s:.0f} s: {names}",
            hint="check that every host runs `train` with the same job, and the network between"
            " them; raise LAUNCHER_PEER_TIMEOUT if hosts start slowly",
        )
        self.missing = tuple(missing)


class SpawnError(LauncherError):
    """A process could not be started (missing executable, permission, ...)."""


class InstallError(LauncherError):
    """Installing the user's requirements or package failed."""


class JobAborted(LauncherError):
    """The job was aborted from elsewhere (another host failed or was lost)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class PreflightFailed(LauncherError):
    """The preflight found bad hosts; the message names them and what failed (one line per
    failure), as output/failure shows it. Exit 78 on every host."""

    exit_code = EXIT_PREFLIGHT


class StopRequested(LauncherError):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) reached the launcher before the ranks ran: while
    requirements installed, the hosts met or sshd started. Exits 128+N like a stopped job."""

    def __init__(self, signum: int, host: str = "") -> None:
        where = f" on {host}" if host else ""
        super().__init__(f"the job was stopped by {signal_name(signum)}{where} before it started")
        self.signum = signum
        self.exit_code = signal_exit_code(signum)


def signal_exit_code(signum: int) -> int:
    """128+N, the shell's convention for a process killed by signal N."""
    return 128 + signum


def exit_code_for_rank(returncode: int) -> int:
    """The launcher's exit code when `returncode` is the root-cause rank's status.

    A negative returncode (killed by signal N) gives 128+N, so a segfault gives 139; codes
    1-125 are passed through; anything else (126-255 from a shell) is passed through as well,
    because it already follows the shell's convention.
    """
    if returncode < 0:
        return signal_exit_code(-returncode)
    return returncode if returncode != 0 else EXIT_FAILURE


def signal_name(signum: int) -> str:
    """`SIGSEGV` for 11; `signal 99` for numbers Python does not know."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
