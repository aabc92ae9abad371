"""Serving hooks for the model train_regression.py saves (SageMaker PyTorch inference names).

`train_regression.py` copies this file to `<model_dir>/code/inference.py`. Requests are JSON:
a list of rows (`[[...8 numbers...], ...]`), one row, or `{"instances": rows}`; the answer is a
JSON list with one prediction per row. Client errors raise `ClientError`, whose `status_code`
(the toolkit's GenericInferenceToolkitError convention) makes `serve` answer 400, 415 or 406
with the message instead of a 500: a 500 means the server failed, and clients and SageMaker's
metrics count it as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FEATURES = 8
JSON = "application/json"


class ClientError(ValueError):
    """A request this model cannot take; `status_code` is what `serve` answers."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


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
        raise ClientError(f"unsupported content type {request_content_type!r}; send {JSON}", 415)
    try:
        data = json.loads(request_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientError(f"the body is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("instances")
    try:
        rows = torch.tensor(data, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ClientError(f"expected rows of {FEATURES} numbers: {exc}") from None
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)
    if rows.dim() != 2 or rows.shape[1] != FEATURES:
        raise ClientError(f"expected rows of {FEATURES} numbers, got shape {list(rows.shape)}")
    return rows


def predict_fn(input_data: torch.Tensor, model: torch.jit.ScriptModule) -> torch.Tensor:
    """Run the model without autograd."""
    with torch.inference_mode():
        out: torch.Tensor = model(input_data)
    return out


def output_fn(prediction: torch.Tensor, accept: str) -> str:
    """Encode one prediction per row as a JSON list."""
    if accept and accept.split(";", maxsplit=1)[0].strip().lower() not in (JSON, "*/*"):
        raise ClientError(f"unsupported accept type {accept!r}; ask for {JSON}", 406)
    return json.dumps(prediction.reshape(-1).tolist())
