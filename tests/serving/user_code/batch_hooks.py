"""Test inference module for batching, streaming and MULTI_RECORD.

input_fn: JSON rows -> a (rows, 64) tensor; a JSON object {"stream": n, "gate": path} -> that
dict (not joinable, so it runs alone); {"hold": path} -> a dict whose predict_fn writes
`path.holding` and blocks the worker until `path` exists; {"big": n} -> an answer of n bytes; a
CSV line (one MULTI_RECORD record) -> one row. predict_fn appends the row count it was called
with to $BATCH_LOG (one line per call), fails with status 422 when any row starts with -7 (so a
joined batch holding it fails and is split), and for a stream request returns a generator that
yields item 0 at once and item 1 only once the gate file exists (the test creates it after
reading the first chunk)."""

import json
import os
import time
from pathlib import Path

import torch


class Unprocessable(Exception):
    status_code = 422


def input_fn(body, content_type):
    if content_type.startswith("text/csv"):
        return torch.tensor([[float(cell) for cell in body.strip().split(",")]])
    value = json.loads(body)
    if isinstance(value, dict):
        return value
    return torch.tensor(value, dtype=torch.float32)


def _stream(count, gate):
    if count < 0:  # one item, then a failure: the stream is cut
        yield {"item": 0}
        raise RuntimeError("the generator broke")
    for index in range(count):
        if index == 1:
            deadline = time.monotonic() + 20
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        yield {"item": index}


def _hold(gate):
    Path(gate + ".holding").write_text("")
    deadline = time.monotonic() + 20
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return {"held": True}


def predict_fn(data, model):
    if isinstance(data, dict) and "big" in data:
        return {"big": int(data["big"])}
    if isinstance(data, dict) and "hold" in data:
        return _hold(data["hold"])
    if isinstance(data, dict):
        return _stream(int(data["stream"]), data["gate"])
    with Path(os.environ["BATCH_LOG"]).open("a") as log:
        log.write(f"{data.shape[0]}\n")
    if bool((data[:, 0] == -7.0).any()):
        raise Unprocessable("a row starts with -7")
    with torch.inference_mode():
        return model(data)


def output_fn(prediction, accept):
    if isinstance(prediction, dict) and "big" in prediction:
        return b"x" * prediction["big"]
    if isinstance(prediction, dict):
        return json.dumps(prediction) + "\n"
    if accept.startswith("text/csv"):
        return "\n".join(",".join(repr(v) for v in row) for row in prediction.tolist())
    return json.dumps(prediction.tolist())
