"""Batch transform's MULTI_RECORD mini-batches: split into records, run, join back in order.

When the container runs with `SAGEMAKER_BATCH_STRATEGY=MULTI_RECORD` (batch transform sets it),
a `text/csv` or JSON Lines request body is a mini-batch of records, one per line (SageMaker's
`SplitType=Line`; a CSV field holding a quoted newline is not supported). For user hooks, each
record becomes its own request, run through `serving.batching.run_batch` in groups of
`GROUP` (joinable inputs share one `predict_fn` call), and the answers are joined with one
newline after each, in the order of the records. A record that fails fails the whole
mini-batch with its own status and a message naming the record's line number, which is what
batch transform reports for the mini-batch.

The default hooks are not split: their CSV and JSON Lines codecs already read one row per
record and write one line per row, in order, which is the same answer at a fraction of the
cost.
"""

from __future__ import annotations

import orjson

from serving import codecs
from serving.batching import run_batch
from serving.runtime import Reply, Runtime, error_reply

# Content types whose bodies are split (JSON Lines has several spellings in the wild).
SPLIT_TYPES = frozenset(
    (codecs.CSV, codecs.JSONLINES, "application/x-jsonlines", "application/json-lines")
)
# Records per predict_fn call: bounds the joined tensor of a 100 MB mini-batch.
GROUP = 1024


def wants_split(runtime: Runtime, content_type: str | None) -> bool:
    """Whether a request of `content_type` is split into records by `runtime`'s settings."""
    return (
        runtime.config.split_records
        and not runtime.handler.default_input
        and content_type is not None
        and codecs.media_type(content_type) in SPLIT_TYPES
    )


def split(body: bytes) -> list[bytes]:
    """The records of a line-delimited body: its non-blank lines, CRLF or LF ended."""
    return [line.rstrip(b"\r") for line in body.split(b"\n") if line.strip()]


def invoke_records(
    runtime: Runtime, body: bytes, content_type: str | None, accept: str | None
) -> Reply:
    """The joined answer to a MULTI_RECORD body; never raises (see the module docstring)."""
    records = split(body)
    if not records:
        return runtime.invoke(body, content_type, accept)
    parts: list[bytes] = []
    reply_type = ""
    for start in range(0, len(records), GROUP):
        group = records[start : start + GROUP]
        replies = run_batch(runtime, [(record, content_type, accept) for record in group])
        for offset, reply in enumerate(replies):
            if reply.status != 200 or reply.stream is not None:
                return _record_error(reply, start + offset + 1)
            reply_type = reply_type or reply.content_type
            parts.append(reply.body if reply.body.endswith(b"\n") else reply.body + b"\n")
    return Reply(200, reply_type, b"".join(parts))


def _record_error(reply: Reply, line: int) -> Reply:
    if reply.stream is not None:
        return error_reply(
            500, "InternalError", f"record {line}: a streamed answer cannot be joined"
        )
    try:
        detail = orjson.loads(reply.body)
        kind, message = str(detail["error"]), str(detail["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        kind, message = "Error", reply.body.decode("utf-8", "replace")
    return error_reply(reply.status, kind, f"record {line}: {message}")
