"""Dynamic batching: concurrent requests of one worker grouped into one `predict_fn` call.

Off by default (batch size 1). With `SAGEMAKER_TS_BATCH_SIZE` (or `SERVE_BATCH_SIZE`) above 1,
a worker's requests wait on its event loop until the batch is full, every open connection of
the worker has a request waiting (`Waiting`: none can come before one is answered), or the
oldest has waited `SAGEMAKER_TS_MAX_BATCH_DELAY` ms (or `SERVE_MAX_BATCH_DELAY_MS`; 5 by
default), then run together (`run_batch`), inline on the loop like a single request, under
one request timeout.

How a batch runs, and why a bad request fails alone:

1. Every request is checked and decoded on its own (`Runtime.prepare`, then `input_fn`). A
   request that fails here (malformed body, unsupported type) gets its own error reply and
   never reaches the model: validation per request before predict. With the default hooks the
   bodies are decoded to numpy arrays, joined, and made a tensor once; the prediction becomes
   one numpy array, cut into views for the default `output_fn`: what the default hooks do per
   request, done once per batch.
2. The decoded inputs that can be joined, tensors or arrays of at least two dimensions with the
   same type, dtype, device and trailing shape (rows of the same width), are concatenated along
   the first dimension and `predict_fn` runs once on them. A prediction whose first dimension
   (or length) is the total row count is cut back into each request's rows, and `output_fn`
   runs per request.
3. Anything else runs alone, exactly as without batching: inputs that cannot be joined (1-D,
   dicts, different widths), a prediction that cannot be cut back (a scalar, an iterator to
   stream), and every request of a batch whose joined `predict_fn` raised (split and retry each
   alone: a request that breaks the model fails with its own error and the others succeed). A
   batch that runs past SAGEMAKER_MODEL_SERVER_TIMEOUT (one timeout for the whole batch, as
   its requests wait for each other) is answered 504 for all of its requests, not retried.

This assumes what TorchServe's batching assumes: `predict_fn` treats rows independently.
`transform_fn` handlers are never joined (their input is opaque); their requests run alone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from serving import codecs, defaults
from serving.errors import HttpError
from serving.runtime import Prepared, Reply, Runtime

# One request: body, Content-Type, Accept.
Request = tuple[bytes, str | None, str | None]


def _join_key(value: Any) -> Hashable | None:
    """What inputs must share to be concatenated; None when `value` cannot be joined."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.dim() < 2:
            return None
        return ("torch", value.dtype, tuple(value.shape[1:]), str(value.device))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        if value.ndim < 2:
            return None
        return ("numpy", value.dtype.str, value.shape[1:])
    return None


def _rows(value: Any) -> int:
    return int(value.shape[0])


def _concat(values: Sequence[Any]) -> Any:
    first = values[0]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(first, torch.Tensor):
        return torch.cat(list(values))
    numpy = sys.modules["numpy"]
    return numpy.concatenate(list(values))


def _split(prediction: Any, sizes: Sequence[int]) -> list[Any] | None:
    """`prediction` cut into consecutive parts of `sizes` rows; None when its first dimension
    (or length) is not their sum."""
    total = sum(sizes)
    shape = getattr(prediction, "shape", None)
    if shape is not None:
        if len(shape) < 1 or int(shape[0]) != total:
            return None
    elif not isinstance(prediction, (list, tuple)) or len(prediction) != total:
        return None
    parts = []
    start = 0
    for size in sizes:
        parts.append(prediction[start : start + size])
        start += size
    return parts


def _decode(runtime: Runtime, prepared: Prepared) -> Any:
    """The request decoded: by the user's `input_fn`, or with the default one to a numpy
    array, which `_tensor` turns into the tensor `input_fn` would have returned after the
    batch's arrays were joined (one conversion per batch)."""
    if runtime.handler.default_input:
        return codecs.decode(prepared.data, prepared.kind)
    return runtime.handler.input_fn(prepared.data, prepared.content_type)


def _tensor(runtime: Runtime, decoded: Any) -> Any:
    """What the default `input_fn` returns for `decoded` (see `_decode`)."""
    return defaults.as_tensor(decoded) if runtime.handler.default_input else decoded


def _predict(runtime: Runtime, joined: Any) -> Any:
    """`predict_fn` on joined inputs. A tensor answer for the default `output_fn` comes back as
    one numpy array, so that each request's part is a view and not a conversion of its own."""
    prediction = runtime.handler.predict_fn(_tensor(runtime, joined), runtime.model)
    if runtime.handler.default_output and hasattr(prediction, "detach"):
        return defaults.to_numpy(prediction)
    return prediction


def _answer(runtime: Runtime, part: Any, accept: str) -> Reply:
    """One request's reply for its part of a joined prediction. The default `output_fn` on an
    array is the codec alone: its Accept was negotiated when the request was checked."""
    if runtime.handler.default_output and isinstance(part, np.ndarray):
        return Reply(200, accept, codecs.encode(part, accept))
    return runtime.answer(part, accept)


def _alone(runtime: Runtime, decoded: Any, accept: str) -> Reply:
    prediction = runtime.handler.predict_fn(_tensor(runtime, decoded), runtime.model)
    return runtime.answer(prediction, accept)


def run_batch(runtime: Runtime, requests: Sequence[Request]) -> list[Reply]:
    """The replies to `requests`, in order, running joinable ones through one `predict_fn`
    (see the module's docstring). Never raises: every failure is the reply of its request.

    The batch runs under one request timeout, as one request would: its requests wait for
    each other, so past the timeout every one of them is answered 504.
    """
    if len(requests) == 1 or runtime.handler.transform_fn is not None:
        return [runtime.invoke(*request) for request in requests]
    outcome = runtime.guarded(_run_batch, runtime, requests)
    if isinstance(outcome, Reply):
        return [outcome] * len(requests)
    return outcome


def _run_batch(runtime: Runtime, requests: Sequence[Request]) -> list[Reply]:
    """`run_batch` inside its timeout; raises only the timeout's own exception."""
    replies: list[Reply | None] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, Prepared, Any]]] = {}
    singles: list[tuple[int, Prepared, Any]] = []
    # The headers of a batch's requests are mostly the same: checked once per distinct pair.
    checked: dict[tuple[str | None, str | None], tuple[str, str, str] | Reply] = {}
    for index, (body, content_type, accept) in enumerate(requests):
        try:
            types = checked.get((content_type, accept))
            if types is None:
                try:
                    types = runtime.types(content_type, accept)
                except HttpError as error:
                    types = runtime.failure(error)
                checked[content_type, accept] = types
            if isinstance(types, Reply):
                replies[index] = types
                continue
            prepared = runtime.prepare(body, content_type, accept, types)
            decoded = _decode(runtime, prepared)
        except BaseException as exc:
            replies[index] = runtime.failure(exc)
            continue
        key = _join_key(decoded)
        if key is None:
            singles.append((index, prepared, decoded))
        else:
            groups.setdefault(key, []).append((index, prepared, decoded))
    for members in groups.values():
        if len(members) == 1:
            singles.extend(members)
            continue
        sizes = [_rows(decoded) for _, _, decoded in members]
        try:
            parts = _split(_predict(runtime, _concat([d for _, _, d in members])), sizes)
        except BaseException as exc:
            runtime.failure(exc)  # logged; each request is tried alone below
            parts = None
        if parts is None:
            singles.extend(members)
            continue
        for (index, prepared, _), part in zip(members, parts, strict=True):
            try:
                replies[index] = _answer(runtime, part, prepared.accept)
            except BaseException as exc:
                replies[index] = runtime.failure(exc)
    for index, prepared, decoded in singles:
        try:
            replies[index] = _alone(runtime, decoded, prepared.accept)
        except BaseException as exc:
            replies[index] = runtime.failure(exc)
    return [reply for reply in replies if reply is not None]


class Waiting:
    """What the batchers of one worker share: the ones holding requests, and how many
    connections the worker has open.

    HTTP/1.1 answers a connection's requests in order, so a connection with a request waiting
    in a batcher sends no other before it is answered. Once every open connection of the
    worker has a request waiting, no further request can arrive, and waiting out the delay
    would only add latency: every batcher holding requests runs its batch at once. So one
    client alone is not delayed at all, and a batch never waits for requests that cannot come
    (32 connections over 2 workers are rarely split 16 / 16). `open_connections` returns None
    where the count is unknown (then only size and delay decide, as in TorchServe).
    """

    def __init__(self) -> None:
        self.open_connections: Callable[[], int | None] = _unknown
        self.count = 0
        self._holding: dict[Batcher, None] = {}  # insertion-ordered set

    def _added(self, batcher: Batcher) -> bool:
        """Count a request `batcher` took; True when every open connection now waits."""
        self.count += 1
        self._holding[batcher] = None
        connections = self.open_connections()
        return connections is not None and self.count >= connections

    def _taken(self, batcher: Batcher, requests: int) -> None:
        self.count -= requests
        self._holding.pop(batcher, None)

    def connection_closed(self) -> None:
        """A connection of the worker closed (on its event loop's thread): if every one left
        has a request waiting, run the batches now, on the loop's next turn (not inside the
        protocol's teardown)."""
        connections = self.open_connections()
        if not self._holding or connections is None or self.count < connections:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (a worker shutting down): nothing runs
            return
        loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        """Run the batch of every batcher holding requests, oldest holder first."""
        for batcher in list(self._holding):
            batcher.flush()


def _unknown() -> int | None:
    return None


class Batcher:
    """Collects one worker's concurrent requests for one model into batches on its loop.

    `submit` returns the request's reply once its batch ran. A batch runs when it holds
    `size` requests, when every connection of the worker has a request waiting (`Waiting`),
    or `delay_s` after its first request arrived, whichever comes first. Only the worker's
    event loop thread may call it.
    """

    def __init__(
        self, runtime: Runtime, size: int, delay_s: float, waiting: Waiting | None = None
    ) -> None:
        self.runtime = runtime
        self.size = size
        self.delay_s = delay_s
        self.waiting = waiting or Waiting()
        self._waiting: list[tuple[Request, asyncio.Future[Reply]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append(((body, content_type, accept), future))
        everyone = self.waiting._added(self)
        if len(self._waiting) >= self.size:
            self.flush()
        elif everyone:
            self.waiting.flush_all()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay_s, self.flush)
        return await future

    def flush(self) -> None:
        """Run the requests waiting now as one batch (nothing when none wait)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        self.waiting._taken(self, len(batch))
        if not batch:
            return
        replies = run_batch(self.runtime, [request for request, _ in batch])
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # its client may have gone (the task was cancelled)
                future.set_result(reply)
