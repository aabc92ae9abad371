"""Test inference module whose hooks raise BaseExceptions on request.

The Content-Type's parameters choose: `hook=input_fn|predict_fn|output_fn` and `raise=NAME`
(one of RAISE). Without them the hooks serve the MLP on JSON rows. MODEL_FN_RAISES=NAME makes
model_fn raise at start-up instead.
"""

import asyncio
import json
import os

import torch

RAISE = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
}


def _maybe_raise(params, hook):
    if params.get("hook") == hook:
        name = params["raise"]
        raise RAISE[name](f"{name} from {hook}")


def model_fn(model_dir):
    name = os.environ.get("MODEL_FN_RAISES")
    if name:
        raise RAISE[name](f"{name} from model_fn")
    return torch.jit.load(os.path.join(model_dir, "model.pt"))


def input_fn(body, content_type):
    params = dict(
        part.strip().partition("=")[::2] for part in content_type.split(";")[1:] if "=" in part
    )
    _maybe_raise(params, "input_fn")
    return torch.tensor(json.loads(body), dtype=torch.float32), params


def predict_fn(data, model):
    rows, params = data
    _maybe_raise(params, "predict_fn")
    with torch.inference_mode():
        return model(rows), params


def output_fn(prediction, accept):
    result, params = prediction
    _maybe_raise(params, "output_fn")
    return json.dumps(result.tolist())
