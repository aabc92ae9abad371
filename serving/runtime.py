"""One worker's model and the request path: hooks in order, errors to statuses, timeouts.

`Runtime.invoke` never raises: every outcome is a `Reply`. HTTP errors keep their status, an
exception with an integer `status_code` (the toolkit's GenericInferenceToolkitError) keeps that
one, anything else from user code, any BaseException included, is a 500 whose body names the
exception type and message while the traceback goes to the log only. A request past the
timeout is interrupted by SIGALRM in the worker's main thread and answered 504; the worker
stays up. One alarm serves every Runtime of a process (the models of a multi-model worker).

The request path is split in steps so that `serving.batching` can run many requests through
one `predict_fn`: `prepare` (content types, Accept, text decoding), the hooks, `finish` (the
reply, or a stream when a hook returned an iterator, see `serving.streaming`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import orjson

from serving import codecs, streaming
from serving.config import ServeConfig
from serving.errors import (
    BadRequest,
    HttpError,
    InternalError,
    ModelLoadError,
    NotAcceptable,
    RequestTimeout,
    Stopped,
    UnsupportedContentType,
    client_message,
    status_of,
)
from serving.usercode import Handler

log = logging.getLogger("serving")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, Content-Type and body bytes; or, when `stream` is set, a body
    sent chunked, `body` first and then every item of `stream` (see `serving.streaming`)."""

    status: int
    content_type: str
    body: bytes
    stream: Iterator[Any] | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """One request after `Runtime.prepare`: what the hooks get, and the type to answer in."""

    data: bytes | str
    content_type: str
    kind: str  # the bare media type of content_type
    accept: str


def error_reply(status: int, kind: str, message: str) -> Reply:
    """The JSON error body every failure is answered with."""
    body = orjson.dumps({"error": kind, "message": message, "status": status})
    return Reply(status, codecs.JSON, body)


class _Expired(BaseException):
    """Raised by the SIGALRM handler; a BaseException so `except Exception` in user code
    cannot swallow it."""


class _Alarm:
    """The process's request timer: armed around user code, disarmed before anything else.

    One per process, shared by every Runtime, because SIGALRM has one handler per process.

    Arming and disarming make no system call: `arm` records a deadline and sets the kernel
    timer only when none is pending; `disarm` just clears the flag. A pending timer that fires
    early (it was set for an earlier deadline) or while nothing is armed is re-set for what is
    left, or dropped. So a worker answering thousands of requests a second touches the timer
    about once per timeout, where two `setitimer` calls per hook call cost ~8 % of a batched
    worker's time (py-spy, docs/benchmarks-serving.md). A deadline is missed by at most the
    time Python takes to run the handler after the signal (between two bytecodes). Arming is
    not nested: `Runtime.guarded` and `Runtime.next_chunk` run work that is already under a
    deadline (a batch's, a request's first streamed item) under that deadline.
    """

    def __init__(self) -> None:
        self.armed = False
        self.deadline = 0.0
        # When the kernel timer set last will fire; 0.0 when none is pending.
        self._fires_at = 0.0

    def install(self) -> None:
        signal.signal(signal.SIGALRM, self._on_alarm)

    def arm(self, seconds: float) -> None:
        """Raise `_Expired` in the main thread once `seconds` have passed, unless disarmed.
        Not nested: work already under a deadline runs under that one (see `Runtime`)."""
        now = time.monotonic()
        self.deadline = now + seconds
        # Armed before the timer is set: a timer that fires at once then raises here, rather
        # than finding nothing armed and leaving no timer for the deadline.
        self.armed = True
        if not self._fires_at or self._fires_at > self.deadline:
            self._set(seconds, now)

    def disarm(self) -> None:
        self.armed = False

    def _set(self, seconds: float, now: float) -> None:
        # setitimer(0) would cancel the timer: a deadline already reached fires at once. The
        # expiry is recorded before the timer is set: a timer firing in between clears it, and
        # a cleared expiry only costs the next `arm` a `setitimer` (a stale one would leave a
        # deadline without a timer).
        seconds = max(seconds, 1e-6)
        self._fires_at = now + seconds
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._fires_at = 0.0
        if not self.armed:
            return
        now = time.monotonic()
        if now >= self.deadline:
            self.armed = False
            raise _Expired
        self._set(self.deadline - now, now)


ALARM = _Alarm()


def _as_bytes(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, str):
        return result.encode("utf-8")
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result)
    raise InternalError(f"output_fn returned {type(result).__name__}; expected bytes or str")


class Runtime:
    """The hooks and the model of one serving process (the master, then each worker)."""

    def __init__(
        self, config: ServeConfig, handler: Handler, model_dir: Path | None = None
    ) -> None:
        self.config = config
        self.handler = handler
        # One model's directory: the server's, or a multi-model endpoint's model.
        self.model_dir = model_dir or config.model_dir
        self.model: Any = None
        self.loaded = False

    def _call_at_load(self, name: str, hook: Callable[..., Any], *args: Any) -> Any:
        """`hook(*args)`; any BaseException from it (KeyboardInterrupt, SystemExit too) is
        a ModelLoadError naming `name`, never a crash of serve. Stopped passes through."""
        try:
            return hook(*args)
        except (ModelLoadError, Stopped):
            raise
        except BaseException as exc:
            raise ModelLoadError(f"{name} raised {type(exc).__name__}: {exc}") from exc

    def load_model(self) -> None:
        """Call model_fn once; raises ModelLoadError carrying the user's exception."""
        self.model = self._call_at_load("model_fn", self.handler.model_fn, str(self.model_dir))
        self.loaded = True

    def warm_up(self) -> None:
        """Call model_warmup_fn, if the hooks define it, on the loaded model; raises
        ModelLoadError carrying the user's exception."""
        warmup = self.handler.model_warmup_fn
        if warmup is not None and self.loaded:
            self._call_at_load("model_warmup_fn", warmup, str(self.model_dir), self.model)

    def start_worker(self, slot: int) -> None:
        """Prepare a freshly forked worker: GPU pin, thread count, model, warm-up, timer.

        Raises ModelLoadError when the model cannot be loaded or warmed up here; gunicorn then
        stops the whole server rather than serving without a model. Stopped (a stop signal
        while it runs, see `serving.stopping`) passes through unchanged.
        """
        gpu = self.config.gpu_for_slot(slot)
        if gpu is not None:
            # Before any CUDA call in this process: the worker sees exactly one device.
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        torch = sys.modules.get("torch")
        if torch is not None:
            # cores / workers each, so that the workers do not fight over the cores.
            torch.set_num_threads(self.config.threads_per_worker)
        if not self.loaded and not self.config.multi_model:
            # (A multi-model worker starts empty: its models load on demand, serving.multimodel.)
            self.load_model()
        self.warm_up()
        ALARM.install()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        """Run the hooks on one request body and encode the answer; never raises."""
        return self.guarded(self._run, body, content_type, accept)  # _run returns a Reply

    def guarded(self, work: Callable[..., T], *args: Any) -> T | Reply:
        """`work(*args)` under the request timeout, every exception turned into its Reply
        (504 past the timeout; `failure` for the others)."""
        if ALARM.armed:
            # Inside work under a deadline already: that one holds, and its expiry ends it.
            try:
                return work(*args)
            except BaseException as exc:
                return self.failure(exc)  # re-raises the expiry
        try:
            ALARM.arm(self.config.timeout_s)
            try:
                return work(*args)
            finally:
                # An alarm landing after this line is ignored by the handler.
                ALARM.disarm()
        except _Expired:
            error = RequestTimeout(
                f"request exceeded SAGEMAKER_MODEL_SERVER_TIMEOUT ({self.config.timeout_s:g} s)"
            )
            log.error("%s", error.message)
            return error_reply(error.status, type(error).__name__, error.message)
        except BaseException as exc:
            return self.failure(exc)

    def failure(self, exc: BaseException) -> Reply:
        """The reply for `exc`, raised by a request check or user code: an HttpError keeps
        its status, an exception with an integer `status_code` keeps that one, anything else
        is a 500. The timeout's own exception is raised again, so that work run under one
        `guarded` call (a batch) ends as a whole when its time is up."""
        if isinstance(exc, _Expired):
            raise exc
        if isinstance(exc, HttpError):
            if exc.status >= 500:
                log.error("request failed", exc_info=exc)
            return error_reply(exc.status, type(exc).__name__, exc.message)
        # KeyboardInterrupt, GeneratorExit, CancelledError from a hook would unwind the
        # event loop: a dead worker or an unanswered connection. (No stop signal raises
        # here.) The traceback stays in the log; the client gets type and message only.
        log.error("user code raised %s", type(exc).__name__, exc_info=exc)
        return error_reply(status_of(exc) or 500, type(exc).__name__, client_message(exc))

    def next_chunk(self, chunks: Iterator[Any]) -> bytes | None:
        """The next item of a streamed answer as bytes (None at its end), under the request
        timeout. Raises what the iterator raises, and RequestTimeout past the timeout."""
        if ALARM.armed:
            # The first item, taken while the request (or its batch) is under its deadline:
            # that deadline holds, and its expiry ends the request (or the batch) as a whole.
            item = next(chunks, streaming.END)
            return None if item is streaming.END else _as_bytes(item)
        try:
            ALARM.arm(self.config.timeout_s)
            try:
                item = next(chunks, streaming.END)
            finally:
                ALARM.disarm()
        except _Expired:
            raise RequestTimeout(
                f"a streamed item took longer than SAGEMAKER_MODEL_SERVER_TIMEOUT "
                f"({self.config.timeout_s:g} s)"
            ) from None
        return None if item is streaming.END else _as_bytes(item)

    def _run(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        prepared = self.prepare(body, content_type, accept)
        handler = self.handler
        if handler.transform_fn is not None:
            result = handler.transform_fn(
                self.model, prepared.data, prepared.content_type, prepared.accept
            )
            return self.finish(result, prepared.accept)
        decoded = handler.input_fn(prepared.data, prepared.content_type)
        prediction = handler.predict_fn(decoded, self.model)
        return self.answer(prediction, prepared.accept)

    def answer(self, prediction: Any, accept: str) -> Reply:
        """`output_fn` on a prediction, or on each item of a prediction that is an iterator
        (a streamed answer, one chunk per item)."""
        output_fn = self.handler.output_fn
        if streaming.is_stream(prediction):
            return self.finish((output_fn(item, accept) for item in prediction), accept)
        return self.finish(output_fn(prediction, accept), accept)

    def types(self, content_type: str | None, accept: str | None) -> tuple[str, str, str]:
        """(Content-Type, its bare media type, the type to answer in) of a request. Raises
        UnsupportedContentType or NotAcceptable. Depends on the two headers only, so a batch
        asks once per distinct pair."""
        if not content_type:
            raise UnsupportedContentType("the request has no Content-Type header")
        kind = codecs.media_type(content_type)
        if not accept or accept.strip() == "*/*":
            accept = self.config.default_accept
        if self.handler.default_output:
            # Refuse an unproducible Accept before spending the model's time on it.
            chosen = codecs.negotiate(accept, codecs.SUPPORTED, self.config.default_accept)
            if chosen is None:
                raise NotAcceptable(
                    f"cannot produce {accept!r}; use one of {', '.join(codecs.SUPPORTED)}"
                )
            accept = chosen
        return content_type, kind, accept

    def prepare(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        types: tuple[str, str, str] | None = None,
    ) -> Prepared:
        """Check the request's types (or take `types`, what `types` returned for its
        headers) and decode a text body for user hooks. Raises UnsupportedContentType,
        NotAcceptable or BadRequest."""
        content_type, kind, accept = types or self.types(content_type, accept)
        data: bytes | str = body
        if not self.handler.default_input and kind in codecs.UTF8_TYPES:
            # The toolkit hands JSON and CSV bodies to user hooks as str.
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"body is not UTF-8: {exc}") from None
        return Prepared(data, content_type, kind, accept)

    def finish(self, result: Any, accept: str) -> Reply:
        """The 200 reply for what output_fn (or transform_fn) returned: bytes or str, a
        (body, content type) pair as the toolkit allows, or an iterator of them (streamed;
        its first item is taken here, so that an error before it is still a plain error)."""
        reply_type = accept
        if isinstance(result, tuple) and len(result) == 2:
            # (body, content type), as the toolkit allows.
            result, reply_type = result
        if streaming.is_stream(result):
            first = self.next_chunk(result)
            return Reply(
                200, str(reply_type), first or b"", result if first is not None else iter(())
            )
        return Reply(200, str(reply_type), _as_bytes(result))
