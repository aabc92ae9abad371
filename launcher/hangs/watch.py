"""`Monitor`: the thread that samples the progress files and reports a hang, once.

The supervisor never polls (it waits on its event queue), so sampling happens here: every
`interval_s` the monitor reads every rank's file (`progress.ProgressReader`), advances the
pure `verdict.Tracker` and, the first time it returns a verdict, calls `on_hang` with it (the
wiring posts an event to the supervisor's queue) and ends. The last state stays readable
(`state()`), for `launcher stacks` and status lines.

A hang is reported at most `interval_s` after the window ran out: with the default 0.5 s,
within the issue's "window + 2 s" with room left to take the stacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from launcher import containment
from launcher.hangs.progress import ProgressReader
from launcher.hangs.verdict import Hung, Policy, Tracker

log = logging.getLogger("launcher")

INTERVAL_S = 0.5


class Monitor:
    """Watches one attempt's ranks. `start` once, `stop` always (idempotent)."""

    def __init__(
        self,
        files: Mapping[int, Path],
        policy: Policy,
        on_hang: Callable[[Hung], None],
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"sampling interval {interval_s!r} must be > 0")
        self._reader = ProgressReader(files)
        self._on_hang = on_hang
        self._interval_s = interval_s
        self._clock = clock
        self._state = Tracker(policy)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling; with the policy off nothing starts (no thread, no reads)."""
        if self._thread is not None or self._state.policy.off:
            return
        self._thread = threading.Thread(target=self._run, name="hang-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop sampling and close the files. A verdict being reported is let finish."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._reader.close()

    def state(self) -> Tracker:
        """The tracker after the latest sample (progress per rank, the window in force)."""
        with self._lock:
            return self._state

    def sample(self) -> Hung | None:
        """Take one sample now and return the verdict it gives (the thread's step; callable
        directly, e.g. by a test or by `launcher stacks`)."""
        # A rank whose process is gone is done with: its file may still say it is exiting.
        ranks = tuple(
            r for r in self._reader.read() if not (r.exiting and not containment.is_alive(r.pid))
        )
        now = self._clock()
        with self._lock:
            self._state = self._state.observe(ranks, now)
            state = self._state
        return state.check(now)

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(self._interval_s):
            try:
                verdict = self.sample()
            except Exception:  # a monitor that died would silently turn detection off
                if not failed:  # once: a failure that repeats every sample is one failure
                    log.exception("hang monitor: a sample failed; sampling goes on")
                failed = True
                continue
            if verdict is not None:
                try:
                    self._on_hang(verdict)
                except Exception:
                    log.exception("hang monitor: reporting the verdict failed")
                return
