"""Test inference module named by SAGEMAKER_PROGRAM: a state dict rebuilt through build_model,
and a transform_fn that sees the toolkit's str body and answers a (body, type) tuple."""

import json

import torch
from helper_mod import SCALE


def build_model():
    return torch.nn.Linear(4, 2)


def transform_fn(model, body, content_type, accept):
    assert isinstance(body, str), type(body)
    rows = torch.tensor(json.loads(body), dtype=torch.float32)
    with torch.no_grad():
        out = model(rows) * SCALE
    return json.dumps({"out": out.tolist(), "accept": accept}), "application/vnd.test+json"
