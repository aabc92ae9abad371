"""model/code/inference.py for the "ours, toolkit hooks" run: the PyTorch inference toolkit's
default JSON path written out as user hooks (stdlib json, numpy, FloatTensor), so that our
server runs exactly the per-request Python work the reference stacks run."""

import json
from typing import Any

import numpy as np
import torch


def input_fn(body: str, content_type: str) -> Any:
    return torch.FloatTensor(np.array(json.loads(body)))


def predict_fn(data: Any, model: Any) -> Any:
    with torch.no_grad():
        model.eval()
        return model(data)


def output_fn(prediction: Any, accept: str) -> str:
    return json.dumps(prediction.detach().cpu().numpy().tolist())
