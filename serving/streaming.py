"""Streamed answers: a hook that returns an iterator is answered chunked, one chunk per item.

When `predict_fn` returns an iterator, `output_fn` encodes each item; when `output_fn` (or
`transform_fn`) returns one, each item (bytes or str) is a chunk. The runtime takes the first
item before anything is sent, so a hook that fails at once is still answered with its status.
Then the status line and headers go out without a Content-Length (gunicorn frames the body
with `Transfer-Encoding: chunked`), the first chunk with them, and every later item as soon as
the iterator yields it: nothing is buffered. Each item is produced under the request timeout
(SAGEMAKER_MODEL_SERVER_TIMEOUT applies per item, not to the whole stream).

An error after the first chunk cannot change the status any more: the stream is cut (the app
returns without the last chunk, so gunicorn closes the connection without the chunked
terminator, which every HTTP client reports as an incomplete body), the iterator is closed, and
the error goes to the log in one line. Streamed answers are
not held to the payload limit, which bounds buffered bodies only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

log = logging.getLogger("serving")

# What `next(iterator, END)` returns at the end of a stream (None may be a real item).
END = object()

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ChunkSource(Protocol):
    """What produces the chunks: `Runtime.next_chunk` (the item as bytes, None at the end)."""

    def next_chunk(self, chunks: Iterator[Any]) -> bytes | None: ...


def is_stream(value: object) -> bool:
    """Whether a hook's result is to be streamed: an iterator (a generator, typically).

    Containers (bytes, str, lists, tensors, arrays) are iterable but not iterators: they are
    answered whole, as before. Checked on the type's `__next__`, which is what makes an
    iterator, rather than with `isinstance(value, Iterator)`: the ABC check showed in the
    request path's profile (docs/benchmarks-serving.md).
    """
    return getattr(type(value), "__next__", None) is not None


async def send_stream(
    send: Send,
    source: ChunkSource,
    headers: list[tuple[bytes, bytes]],
    first: bytes,
    rest: Iterator[Any],
) -> None:
    """Send a 200 with `headers` (no Content-Length), `first`, then every item of `rest`.

    Never raises for a failing or late item: it logs it, closes `rest` and returns without
    ending the body, which makes gunicorn drop the connection.
    """
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})
    try:
        while True:
            chunk = source.next_chunk(rest)
            if chunk is None:
                break
            if chunk:
                # An empty chunk would end the chunked body early: skip it.
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except Exception as exc:
        log.error("streamed answer cut after its first chunk: %s: %s", type(exc).__name__, exc)
        close = getattr(rest, "close", None)
        if close is not None:
            close()
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
