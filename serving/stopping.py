"""Stop signals while `serve` starts: SIGTERM, SIGINT or SIGQUIT end the start-up at once.

Until gunicorn's arbiter takes the signals over (configuration, pip, the user's module, the
model preloaded in the master) and while a worker prepares itself (its own `model_fn` on GPU
hosts, `model_warmup_fn`), a stop signal raises `Stopped` in the main thread: a slow load is
interrupted where it is (a blocking call returns with the exception at once) instead of being
finished first and thrown away. The master then ends with 128 + N (`cli`; `server` tells it when
its workers were still starting); a worker leaves quietly and its master reports.

Stop signals for a worker are blocked from just before its fork (`server`) to the moment its
start-up can act on them (`interruptible`), so none is lost in between: a signal that arrives
then is held by the kernel and raises `Stopped` as soon as the start-up begins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

from serving.errors import Stopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def leave(code: int) -> NoReturn:
    """End this process now with `code` (a status of `serving.errors`), after flushing the logs
    and standard streams. Called by `cli`, and by a worker stopped during its start-up.

    `os._exit`, skipping interpreter finalisation: in a process holding torch and a model (or
    half of one) it touches every object, seconds of copy-on-write faults per process, and
    gunicorn's own exit path is no better for a worker stopped inside its lifespan start-up.
    multiprocessing ends its forked children the same way.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def raise_on_stop() -> None:
    """From now on (until gunicorn installs its own handlers) a stop signal raises `Stopped`
    in the main thread. Call from the main thread only."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)


def block() -> set[int | signal.Signals]:
    """Hold stop signals in the calling thread; returns the previous mask for `restore`."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def restore(mask: set[int | signal.Signals]) -> None:
    """Put back a signal mask returned by `block`; held signals are delivered now."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside, a stop signal raises `Stopped`; afterwards the previous handlers apply again.

    A stop signal held since the fork is delivered on entry (raising `Stopped` there). On the
    way out the signals are held while the handlers are swapped back, so that one arriving
    then is not lost: it goes to the restored handler (the worker's event loop) once unblocked.
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    raise_on_stop()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        yield
    finally:
        block()
        for signum, handler in previous.items():
            # None: a handler not installed from Python; the default is the closest thing.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
