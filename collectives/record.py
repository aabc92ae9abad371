"""`record`: write a rank's uncaught exception to the launcher's error file, then re-raise.

The file is the one named by `TORCHELASTIC_ERROR_FILE` (`launcher.contract.ERROR_FILE`), in
torch's `@record` format, so torchrun's agent can read ours and our launcher can read torch's::

    {"message": {"message": "<Type>: <str(exc)>",
                 "extraInfo": {"py_callstack": "<traceback>", "timestamp": "<int seconds>"},
                 "rank": 3, "local_rank": 1, "host": "algo-2", "pid": 1234}}

`rank`, `local_rank`, `host` and `pid` are our additions (torch's reader ignores them); a key
is left out when it is unknown. As with torch: only `Exception`s are recorded;
`SystemExit` (any code) and `KeyboardInterrupt` pass through unrecorded; nothing is written
when the variable is unset or empty. The file is written atomically, so a reader never sees
half of it. A failure to write is reported on stderr and never hides the original exception.

Entering `record` also enables `faulthandler` for all threads (crashes print every thread's
stack) and, when SIGUSR1 still has its default action, makes SIGUSR1 dump all stacks: send it
to a hung rank to see where it waits.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar, overload

from collectives.files import atomic_write
from launcher import contract

F = TypeVar("F", bound=Callable[..., Any])


def enable_faulthandler() -> None:
    """Dump all threads' stacks on a fatal signal, and on SIGUSR1 if nobody else handles it."""
    stream = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    try:
        faulthandler.enable(file=stream, all_threads=True)
        if signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
            faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    except (AttributeError, ValueError, OSError, RuntimeError) as exc:
        # No usable stderr (a daemon, an odd embedding): torch also only warns here.
        print(f"collectives: faulthandler not enabled: {exc}", file=sys.stderr)


def error_payload(exc: BaseException, tb: TracebackType | None) -> dict[str, Any]:
    """The JSON object `record` writes for `exc` (pure apart from the clock and environment)."""
    message: dict[str, Any] = {
        "message": f"{type(exc).__name__}: {exc}",
        "extraInfo": {
            "py_callstack": "".join(traceback.format_exception(type(exc), exc, tb)),
            "timestamp": str(int(time.time())),
        },
    }
    try:
        rank_env = contract.read_rank_env(os.environ)
    except contract.ContractError:
        rank_env = None  # a broken environment must not hide the real error
    if rank_env is not None:
        message["rank"] = rank_env.rank
        message["local_rank"] = rank_env.local_rank
    message["host"] = (rank_env.host if rank_env is not None else "") or socket.gethostname()
    message["pid"] = os.getpid()
    return {"message": message}


def write_error_file(exc: BaseException, tb: TracebackType | None) -> Path | None:
    """Write `exc` to the error file named in the environment; return its path, or `None`."""
    name = os.environ.get(contract.ERROR_FILE, "")
    if not name:
        return None
    path = Path(name)
    try:
        data = json.dumps(error_payload(exc, tb)).encode()

        def write(f: IO[bytes]) -> None:
            f.write(data)

        atomic_write(path, write)
    except Exception as write_exc:  # reporting must never mask the real error
        print(f"collectives: could not write error file {path}: {write_exc}", file=sys.stderr)
        return None
    return path


class Recorder(contextlib.ContextDecorator):
    """The context manager (and decorator) behind `record`. Never suppresses an exception."""

    def __enter__(self) -> Recorder:
        enable_faulthandler()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, Exception):
            write_error_file(exc, tb)
        return False


@overload
def record(fn: F) -> F: ...
@overload
def record(fn: None = None) -> Recorder: ...
def record(fn: F | None = None) -> F | Recorder:
    """Record an uncaught exception in the launcher's error file and re-raise it.

    Use as `@record` or `@record()` on `main`, or as `with record(): ...`.
    """
    if fn is None:
        return Recorder()
    return Recorder()(fn)
