"""Dynamic batching: concurrent requests of one worker grouped into one `predict_fn` call.

Off by default (batch size 1). With `SAGEMAKER_TS_BATCH_SIZE` (or `SERVE_BATCH_SIZE`) above 1,
a worker's requests wait on its event loop until the batch is full or the oldest has waited
`SAGEMAKER_TS_MAX_BATCH_DELAY` ms (or `SERVE_MAX_BATCH_DELAY_MS`; 5 by default), then run
together (`run_batch`), inline on the loop like a single request.

How a batch runs, and why a bad request fails alone:

1. Every request is checked and decoded on its own (`Runtime.prepare`, then `input_fn`). A
   request that fails here (malformed body, unsupported type) gets its own error reply and
   never reaches the model: validation per request before predict.
2. The decoded inputs that can be joined, tensors or arrays of at least two dimensions with the
   same type, dtype, device and trailing shape (rows of the same width), are concatenated along
   the first dimension and `predict_fn` runs once on them. A prediction whose first dimension
   (or length) is the total row count is cut back into each request's rows, and `output_fn`
   runs per request.
3. Anything else runs alone, exactly as without batching: inputs that cannot be joined (1-D,
   dicts, different widths), a prediction that cannot be cut back (a scalar, an iterator to
   stream), and every request of a batch whose joined `predict_fn` raised (split and retry each
   alone: a request that breaks the model fails with its own error and the others succeed). A
   batch that runs past SAGEMAKER_MODEL_SERVER_TIMEOUT is answered 504 for all of its requests,
   not retried.

This assumes what TorchServe's batching assumes: `predict_fn` treats rows independently.
`transform_fn` handlers are never joined (their input is opaque); their requests run alone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Hashable, Sequence
from typing import Any

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


def _decode(runtime: Runtime, request: Request) -> tuple[Prepared, Any]:
    prepared = runtime.prepare(*request)
    return prepared, runtime.handler.input_fn(prepared.data, prepared.content_type)


def _alone(runtime: Runtime, decoded: Any, accept: str) -> Reply:
    return runtime.answer(runtime.handler.predict_fn(decoded, runtime.model), accept)


def run_batch(runtime: Runtime, requests: Sequence[Request]) -> list[Reply]:
    """The replies to `requests`, in order, running joinable ones through one `predict_fn`
    (see the module's docstring). Never raises: every failure is the reply of its request."""
    if len(requests) == 1 or runtime.handler.transform_fn is not None:
        return [runtime.invoke(*request) for request in requests]
    replies: list[Reply | None] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, Prepared, Any]]] = {}
    singles: list[tuple[int, Prepared, Any]] = []
    for index, request in enumerate(requests):
        outcome = runtime.guarded(_decode, runtime, request)
        if isinstance(outcome, Reply):
            replies[index] = outcome
            continue
        prepared, decoded = outcome
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
        joined = _concat([decoded for _, _, decoded in members])
        prediction = runtime.guarded(runtime.handler.predict_fn, joined, runtime.model)
        if isinstance(prediction, Reply) and prediction.status == 504:
            for index, _, _ in members:
                replies[index] = prediction
            continue
        parts = None if isinstance(prediction, Reply) else _split(prediction, sizes)
        if parts is None:
            singles.extend(members)
            continue
        for (index, prepared, _), part in zip(members, parts, strict=True):
            replies[index] = runtime.guarded(runtime.answer, part, prepared.accept)
    for index, prepared, decoded in singles:
        replies[index] = runtime.guarded(_alone, runtime, decoded, prepared.accept)
    return [reply for reply in replies if reply is not None]


class Batcher:
    """Collects one worker's concurrent requests for one model into batches on its loop.

    `submit` returns the request's reply once its batch ran. A batch runs when it holds
    `size` requests or `delay_s` after its first request arrived, whichever comes first.
    Only the worker's event loop thread may call it.
    """

    def __init__(self, runtime: Runtime, size: int, delay_s: float) -> None:
        self.runtime = runtime
        self.size = size
        self.delay_s = delay_s
        self._waiting: list[tuple[Request, asyncio.Future[Reply]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append(((body, content_type, accept), future))
        if len(self._waiting) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        replies = run_batch(self.runtime, [request for request, _ in batch])
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # its client may have gone (the task was cancelled)
                future.set_result(reply)
