"""The ASGI application: routes, body limits, and the worker's start-up through lifespan.

Routes: `GET /ping` (200 only while every worker slot is ready, else 503), `POST /invocations`
(the hooks, run inline on the worker's event loop: one request at a time per worker, which is
what a CPU-bound model wants, with no thread hop), `GET /execution-parameters` (what batch
transform asks for). The model work is synchronous on purpose; SIGALRM bounds it (see
`runtime`). A worker's lifespan start-up pins its GPU, sets its threads, loads the model if the
master did not, and only then marks its slot ready; a failure there fails the start-up, and
gunicorn stops rather than serving without a model. A stop signal during that start-up
interrupts it (`serving.stopping`) and the worker exits quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving import codecs, stopping
from serving.errors import (
    EXIT_SUCCESS,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Stopped,
)
from serving.readiness import ReadyTable
from serving.runtime import Reply, Runtime, error_reply

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("serving")
_MB = 1024 * 1024
# How much of an oversized body is read and dropped before answering 413 (see _read_body).
_DRAIN_FACTOR = 4


class _Disconnected(Exception):
    """The client went away before its body arrived; nothing is answered."""


class App:
    """The ASGI callable gunicorn's asgi worker runs; one instance, built before fork."""

    def __init__(self, runtime: Runtime, table: ReadyTable) -> None:
        self.runtime = runtime
        self.table = table
        # Set in the forked worker by the post_fork hook; None in the master.
        self.slot: int | None = None
        config = runtime.config
        self._limit = config.max_payload_bytes
        self._params = orjson.dumps(
            {
                "MaxConcurrentTransforms": config.workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": max(1, config.max_payload_bytes // _MB),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        try:
            if path == "/invocations":
                if method != "POST":
                    raise MethodNotAllowed("/invocations takes POST")
                reply = await self._invocations(scope, receive)
            elif path == "/ping":
                if method not in ("GET", "HEAD"):
                    raise MethodNotAllowed("/ping takes GET")
                reply = self._ping()
            elif path == "/execution-parameters":
                reply = Reply(200, codecs.JSON, self._params)
            else:
                raise NotFound(f"no route {path}")
        except HttpError as error:
            reply = error_reply(error.status, type(error).__name__, error.message)
        except _Disconnected:
            return
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", reply.content_type.encode("latin-1")),
                    (b"content-length", str(len(reply.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    def _ping(self) -> Reply:
        pids = self.table.ready_pids()
        ready = sum(1 for pid in pids if pid)
        status = 200 if ready == len(pids) else 503
        body = orjson.dumps({"ready": ready, "workers": len(pids)})
        return Reply(status, codecs.JSON, body)

    async def _invocations(self, scope: Scope, receive: Receive) -> Reply:
        content_type: str | None = None
        accept: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
        body = await self._read_body(receive)
        return self.runtime.invoke(body, content_type, accept)

    def _too_large(self) -> str:
        return f"request body is larger than {self._limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body; PayloadTooLarge past the limit.

        An oversized body is still read (and dropped) up to `_DRAIN_FACTOR` times the limit
        before the 413 goes out: closing a socket with unread data makes the kernel send a
        reset that can destroy the answer before the client reads it.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self._limit:
                chunks.clear()
                if not more or size > self._limit * _DRAIN_FACTOR:
                    raise PayloadTooLarge(self._too_large())
                continue
            chunks.append(chunk)
            if not more:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                with stopping.interruptible():
                    self._start_worker()
            except Stopped as stop:
                # The master is stopping (it forwarded the signal) before this worker served.
                # Not lifespan.startup.failed: gunicorn takes that for a worker that cannot
                # boot (exit 3, "halt the server"); and a SystemExit raised here ends up as
                # that too. The worker just leaves, with nothing to clean up.
                log.info("worker stopped by %s during start-up", stop.name)
                stopping.leave(EXIT_SUCCESS)
            except Exception as exc:
                log.exception("worker start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        if message["type"] == "lifespan.shutdown":
            if self.slot is not None:
                self.table.clear(self.slot)
            await send({"type": "lifespan.shutdown.complete"})

    def _start_worker(self) -> None:
        if self.slot is None:
            raise RuntimeError("worker has no readiness slot (post_fork hook did not run)")
        self.runtime.start_worker(self.slot)
        self.table.mark_ready(self.slot)
