"""gunicorn as the process manager and HTTP server: pre-forked workers running the ASGI app.

gunicorn's master binds the socket (backlog 2048), forks the workers after the app (and, on
CPU hosts, the model) was built, replaces a worker that dies, and on SIGTERM stops accepting,
lets in-flight requests finish within the graceful timeout, reaps every worker and exits 0. Its
`asgi` worker gives keep-alive HTTP/1.1 with TCP_NODELAY on an asyncio loop. The hooks here keep
the readiness table in step with the worker set. gunicorn's own lines (its error log on stderr)
are written in `serve`'s prefixed format (`serving.console`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import signal
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from gunicorn.workers.gasgi import ASGIWorker  # type: ignore[import-untyped]

from serving import console
from serving.app import App
from serving.arbiter import ServeArbiter
from serving.config import ServeConfig
from serving.errors import EXIT_FAILURE, EXIT_SUCCESS, ServerError, signal_exit_code
from serving.readiness import ReadyTable, SlotBook

log = logging.getLogger("serving")

# gunicorn kills a worker whose heartbeat stops for this long beyond the request timeout; the
# SIGALRM timeout answers 504 first, so this only catches a worker stuck inside native code.
HEARTBEAT_GRACE_S = 30


def options(config: ServeConfig) -> dict[str, Any]:
    """gunicorn settings for `config` (pure)."""
    return {
        "bind": [f"{config.host}:{config.port}"],
        "workers": config.workers,
        "worker_class": ServeWorker,
        "asgi_lifespan": "on",
        "backlog": 2048,
        "timeout": math.ceil(config.timeout_s) + HEARTBEAT_GRACE_S,
        # In-flight requests get the full request timeout to finish after SIGTERM.
        "graceful_timeout": math.ceil(config.timeout_s) + 1,
        "keepalive": config.keepalive_s,
        "preload_app": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.log_level,
        "logger_class": ServeLogger,
        "proc_name": "serve",
        "control_socket_disable": True,
        "limit_request_line": 8190,
    }


class ServeLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with its error log on stderr in `serve`'s prefixed format.

    Only the formatter of the stderr handler gunicorn made changes: levels (`loglevel`), the
    access log (off) and gunicorn's handling of log files on SIGUSR1 stay gunicorn's.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setFormatter(console.FORMATTER)


class ServeWorker(ASGIWorker):  # type: ignore[misc]
    """gunicorn's asgi worker, telling the batchers when one of its connections closed.

    The batchers run a batch early once every open connection of the worker has a request
    waiting in it (`serving.batching.Waiting`); a connection that closes can make that true
    without any request arriving. gunicorn's protocol counts the worker's connections in
    `nr_conns` (one added when made, one taken when lost, on the event loop's thread): as a
    property here, a decrease reaches `on_close`.
    """

    on_close: Callable[[], None] | None = None

    @property
    def nr_conns(self) -> int:
        return self._open_connections

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        closed = value < getattr(self, "_open_connections", 0)
        self._open_connections = value
        if closed and self.on_close is not None:
            self.on_close()


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose app object was built before gunicorn started."""

    def __init__(self, app: App, settings: dict[str, Any]) -> None:
        self._app = app
        self._settings = settings
        self.arbiter: ServeArbiter | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._settings.items():
            self.cfg.set(key, value)

    def load(self) -> App:
        return self._app

    def run(self) -> None:
        """BaseApplication.run with our arbiter. Raises ServerError where BaseApplication.run
        prints a configuration gunicorn refuses and exits 1."""
        try:
            self.arbiter = ServeArbiter(self, self._app.table)
            self.arbiter.run()
        except RuntimeError as exc:
            raise ServerError(f"gunicorn refused to start: {exc}") from exc


def _preimport() -> None:
    """Import in the master what every worker imports after fork (the asgi worker's protocol
    module and its event loop), so that each worker starts without paying for it."""
    for name in ("gunicorn.workers.gasgi", "gunicorn.asgi.protocol", "uvloop"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def run(config: ServeConfig, app: App) -> int:
    """Serve until stopped, then return the exit status of the process returning (the master,
    or a worker: both leave gunicorn through here): gunicorn's (0 after SIGTERM,
    `EXIT_WORKER_BOOT` when a worker could not boot), or 128+N when stop signal N came before
    every worker had been ready at once (a server stopped during its start-up). Raises
    ServerError when gunicorn refuses its settings.

    The readiness table is the app's; slots are handed out in the master before each fork
    and freed when the master reaps a worker, whose flag is then cleared.
    """
    table: ReadyTable = app.table
    book = SlotBook(config.workers)

    def pre_fork(server: Any, worker: Any) -> None:
        book.assign(worker.age)

    def post_fork(server: Any, worker: Any) -> None:
        # In the new worker: the book was copied by fork, so its own entry is there.
        app.slot = book.slot_of(worker.age)
        # The batchers' count of open connections (see ServeWorker).
        if isinstance(worker, ServeWorker):
            app.waiting.open_connections = lambda: worker.nr_conns
            worker.on_close = app.waiting.connection_closed
        if app.slot is not None:
            console.set_worker(app.slot)

    def child_exit(server: Any, worker: Any) -> None:
        slot = book.release(worker.age)
        if slot is not None:
            table.clear(slot)

    settings = options(config)
    settings.update(pre_fork=pre_fork, post_fork=post_fork, child_exit=child_exit)
    _preimport()
    code: object = EXIT_SUCCESS
    gunicorn = _Gunicorn(app, settings)
    try:
        gunicorn.run()
    except SystemExit as stop:
        code = stop.code
    arbiter = gunicorn.arbiter
    if (
        code in (EXIT_SUCCESS, None)
        and arbiter is not None
        and arbiter.pid == os.getpid()  # the master, not a worker leaving through here
        and arbiter.stopped_by is not None
        and arbiter.stopped_by[1]
    ):
        # Stopped before every worker was ready: the server never served, so it does not end
        # with gunicorn's 0 (a server's normal end) but 128+N, as the launcher reports a
        # process stopped by signal N.
        signum = arbiter.stopped_by[0]
        log.error("serve stopped by %s during start-up", signal.Signals(signum).name)
        code = signal_exit_code(signum)
    # Both the master (arbiter halt) and every worker (forked deep inside run) leave through
    # here; `cli` ends the process with the status (see `stopping.leave` for why os._exit).
    if code is None:
        return EXIT_SUCCESS
    if not isinstance(code, int):
        log.error("%s", code)  # sys.exit("message"), as SystemExit reports it: status 1
        return EXIT_FAILURE
    return code
