"""Serving hooks for the model train_regression.py saves (SageMaker PyTorch inference names).

`train_regression.py` copies this file to `<model_dir>/code/inference.py`. Requests are JSON:
a list of rows (`[[...8 numbers...], ...]`), one row, or `{"instances": rows}`; the answer is a
JSON list with one prediction per row. Bad input raises `ValueError`: `serve` answers 500 with
its type and message, as the toolkit does (an exception class with `status_code = 400` would
give a 400 instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FEATURES = 8
JSON = "application/json"


def model_fn(model_dir: str) -> torch.jit.ScriptModule:
    """Load the TorchScript model from `model_dir/model.pt` onto the CPU."""
    model: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
        str(Path(model_dir) / "model.pt"), map_location="cpu"
    )
    model.eval()
    return model


def input_fn(request_body: str | bytes, request_content_type: str) -> torch.Tensor:
    """Decode a JSON body into a (rows, FEATURES) float tensor."""
    if request_content_type.split(";", maxsplit=1)[0].strip().lower() != JSON:
        raise ValueError(f"unsupported content type {request_content_type!r}; send {JSON}")
    try:
        data = json.loads(request_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("instances")
    try:
        rows = torch.tensor(data, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"expected rows of {FEATURES} numbers: {exc}") from None
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)
    if rows.dim() != 2 or rows.shape[1] != FEATURES:
        raise ValueError(f"expected rows of {FEATURES} numbers, got shape {list(rows.shape)}")
    return rows


def predict_fn(input_data: torch.Tensor, model: torch.jit.ScriptModule) -> torch.Tensor:
    """Run the model without autograd."""
    with torch.inference_mode():
        out: torch.Tensor = model(input_data)
    return out


def output_fn(prediction: torch.Tensor, accept: str) -> str:
    """Encode one prediction per row as a JSON list."""
    if accept and accept.split(";", maxsplit=1)[0].strip().lower() not in (JSON, "*/*"):
        raise ValueError(f"unsupported accept type {accept!r}; ask for {JSON}")
    return json.dumps(prediction.reshape(-1).tolist())
