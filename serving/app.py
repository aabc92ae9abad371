"""The ASGI application: routes, body limits, and the worker's start-up through lifespan.

Routes: `GET /ping` (200 only while every worker slot is ready, else 503), `POST /invocations`
(the hooks, run inline on the worker's event loop: one request at a time per worker, which is
what a CPU-bound model wants, with no thread hop), `GET /execution-parameters` (what batch
transform asks for), and with `SAGEMAKER_MULTI_MODEL=true` the multi-model routes
(`serving.multimodel.routes`). A request is run alone, or through the worker's batcher when
dynamic batching is on (`serving.batching`), or split into records (`serving.records`); an
answer whose hook returned an iterator is streamed (`serving.streaming`). A body whose
Content-Length is above the payload limit is refused (413) before any of it is read.

The model work is synchronous on purpose; SIGALRM bounds it (see `runtime`). A worker's lifespan
start-up pins its GPU, sets its threads, loads the model if the master did not, and only then marks
its slot ready; a failure there fails the start-up, and gunicorn stops rather than serving without
a model. A stop signal during that start-up interrupts it (`serving.stopping`) and the worker exits
quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from serving import codecs, records, stopping, streaming
from serving.batching import Batcher, Waiting
from serving.errors import (
    EXIT_SUCCESS,
    BadRequest,
    HttpError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Stopped,
)
from serving.multimodel.routes import TARGET_HEADER, MultiModelRoutes
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


class _DeclaredTooLarge(PayloadTooLarge):
    """A Content-Length above the limit: answered 413 before the body is read."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class _Disconnected(Exception):
    """The client went away before its body arrived; nothing is answered."""


class App:
    """The ASGI callable gunicorn's asgi worker runs; one instance, built before fork."""

    def __init__(self, runtime: Runtime, table: ReadyTable) -> None:
        self.runtime = runtime
        self.table = table
        # Set in the forked worker by the post_fork hook; None in the master.
        self.slot: int | None = None
        # Streamed items are produced under the request timeout by the runtime.
        self._source: streaming.ChunkSource = runtime
        config = runtime.config
        self._limit = config.max_payload_bytes
        self._params = orjson.dumps(
            {
                "MaxConcurrentTransforms": config.workers,
                "BatchStrategy": config.batch_strategy,
                "MaxPayloadInMB": max(1, config.max_payload_bytes // _MB),
            }
        )
        # Shared by every batcher of the worker; the server tells it how to count connections.
        self.waiting = Waiting()
        self.mme = MultiModelRoutes(config, self.waiting) if config.multi_model else None
        self.batcher: Batcher | None = None
        if config.batch_size > 1 and not config.multi_model:
            self.batcher = Batcher(
                runtime, config.batch_size, config.max_batch_delay_s, self.waiting
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
            elif self.mme is not None and path.endswith("/invoke") and path.startswith("/models/"):
                if method != "POST":
                    raise MethodNotAllowed("/models/{name}/invoke takes POST")
                reply = await self._invocations(scope, receive, path[len("/models/") : -7])
            elif self.mme is not None and (
                reply_or_none := await self.mme.handle(
                    method, path, scope.get("query_string", b""), lambda: self._read_body(receive)
                )
            ):
                reply = reply_or_none
            else:
                raise NotFound(f"no route {path}")
            if reply.stream is None and len(reply.body) > self._limit:
                raise InternalError(
                    f"the answer of {len(reply.body)} bytes is larger than the payload limit "
                    f"of {self._limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
                )
        except _DeclaredTooLarge as error:
            await self._refuse(send, receive, error)
            return
        except HttpError as error:
            reply = error_reply(error.status, type(error).__name__, error.message)
        except _Disconnected:
            return
        headers = [(b"content-type", reply.content_type.encode("latin-1"))]
        if reply.stream is not None:
            await streaming.send_stream(send, self._source, headers, reply.body, reply.stream)
            return
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _refuse(self, send: Send, receive: Receive, error: _DeclaredTooLarge) -> None:
        """Answer 413 at once, then read and drop the body if it is at most `_DRAIN_FACTOR`
        times the limit, else close the connection.

        A client that reads while it sends (or waits for 100-continue) has its 413 before it
        sent the body. One that sends it all first must not find the connection reset: the
        server closing with unread data in its socket makes the kernel send a reset that
        destroys the answer before the client reads it, so a moderately oversized body is
        drained (and the connection stays usable); a huge one is not worth reading.
        """
        reply = error_reply(error.status, PayloadTooLarge.__name__, error.message)
        drain = error.size <= self._limit * _DRAIN_FACTOR
        headers = [
            (b"content-type", reply.content_type.encode("latin-1")),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        if not drain:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        while drain:
            message = await receive()
            drain = message["type"] != "http.disconnect" and message.get("more_body", False)

    def _ping(self) -> Reply:
        pids = self.table.ready_pids()
        ready = sum(1 for pid in pids if pid)
        status = 200 if ready == len(pids) else 503
        body = orjson.dumps({"ready": ready, "workers": len(pids)})
        return Reply(status, codecs.JSON, body)

    async def _invocations(self, scope: Scope, receive: Receive, model: str | None = None) -> Reply:
        content_type: str | None = None
        accept: str | None = None
        length: bytes | None = None
        target: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == TARGET_HEADER:
                target = value.decode("latin-1")
        if length is not None and length.isdigit() and int(length) > self._limit:
            # Refused before a byte of the body is read (gunicorn discards it afterwards,
            # keeping the connection usable).
            raise _DeclaredTooLarge(self._too_large(int(length)), int(length))
        if self.mme is None:
            body = await self._read_body(receive)
            return await self.dispatch(self.runtime, self.batcher, body, content_type, accept)
        if target is not None:
            log.debug("invocation for target model %s", target)
        name = model or target
        if not name:
            raise BadRequest(
                "a multi-model endpoint needs the model: POST /models/{name}/invoke, or "
                "/invocations with an X-Amzn-SageMaker-Target-Model header"
            )
        body = await self._read_body(receive)
        return await self.mme.invoke(name, body, content_type, accept, self.dispatch)

    async def dispatch(
        self,
        runtime: Runtime,
        batcher: Batcher | None,
        body: bytes,
        content_type: str | None,
        accept: str | None,
    ) -> Reply:
        """Run one request on `runtime`: split into records (batch transform), through the
        batcher (dynamic batching), or alone."""
        if records.wants_split(runtime, content_type):
            return records.invoke_records(runtime, body, content_type, accept)
        if batcher is not None:
            return await batcher.submit(body, content_type, accept)
        return runtime.invoke(body, content_type, accept)

    def _too_large(self, size: int | None = None) -> str:
        what = f"payload of {size / _MB:.1f} MB" if size is not None else "request body"
        return (
            f"{what} exceeds MaxPayloadInMB={self._limit / _MB:g} ({self._limit} bytes); "
            "set SAGEMAKER_MAX_PAYLOAD_IN_MB"
        )

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
