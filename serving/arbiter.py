"""The master side of `serve`'s stop semantics: gunicorn's arbiter, subclassed.

gunicorn answers SIGTERM (graceful) and SIGINT/SIGQUIT (quick) by stopping its workers and
exiting 0. `serve` keeps that for a server that has served, and reports a stop during start-up
(before every worker was ready at once) as 128+N; that needs the first stop signal, noted here
(`server.run` turns it into the exit status). The worker side is `serving.stopping`.
"""

from __future__ import annotations

import signal

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from gunicorn.errors import HaltServer  # type: ignore[import-untyped]

from serving import stopping
from serving.errors import EXIT_SUCCESS
from serving.readiness import ReadyTable


class ServeArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter, plus: `stopped_by` records the first stop signal and whether the
    server had never been ready by then; stop signals are held across each fork; a worker
    that fails to boot while the arbiter already stops no longer breaks its stop()."""

    def __init__(self, app: BaseApplication, table: ReadyTable) -> None:
        self.table = table
        # (signal, the server had not been ready yet) of the first stop signal handled.
        self.stopped_by: tuple[int, bool] | None = None
        self._halting = False
        super().__init__(app)

    def halt(self, reason: str | None = None, exit_status: int = EXIT_SUCCESS) -> None:
        self._halting = True
        super().halt(reason, exit_status)

    def reap_workers(self) -> None:
        try:
            super().reap_workers()
        except HaltServer:
            # gunicorn halts when a worker failed to boot (exit 3), and reaps inside its own
            # stop() as well: a second worker failing the same way (every worker of a GPU host
            # loads the same broken model) would raise this out of halt() as a traceback.
            # Once stopping, one more failed worker changes nothing; the rest are reaped on the
            # next round of stop()'s loop.
            if not self._halting and self.stopped_by is None:
                raise

    def _note_stop(self, signum: int) -> None:
        if self.stopped_by is None:
            self.stopped_by = (signum, not self.table.was_ready())

    def handle_term(self) -> None:
        self._note_stop(signal.SIGTERM)
        super().handle_term()

    def handle_int(self) -> None:
        self._note_stop(signal.SIGINT)
        super().handle_int()

    def handle_quit(self) -> None:
        self._note_stop(signal.SIGQUIT)
        super().handle_quit()

    def spawn_worker(self) -> int:
        # The new worker starts with the master's queueing signal handlers, whose queue nobody
        # reads in a worker: a stop signal landing there before the worker's own start-up is
        # lost, and the worker would load its model in full before the master's SIGKILL. So
        # stop signals are held across the fork; the worker releases them in its start-up.
        # (In the worker this `finally` runs only as it exits.)
        mask = stopping.block()
        try:
            return int(super().spawn_worker())
        finally:
            stopping.restore(mask)
