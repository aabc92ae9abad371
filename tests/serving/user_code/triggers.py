"""Test inference module: default model_fn, input_fn and output_fn; a predict_fn whose first
input value selects a misbehaviour, so one server covers every failure class."""

import os
import time
from pathlib import Path

import torch


class Unprocessable(Exception):
    """Shaped like the toolkit's GenericInferenceToolkitError: it carries status_code."""

    status_code = 422


def predict_fn(data, model):
    first = float(data.reshape(-1)[0]) if data.numel() else 0.0
    if first == -1.0:
        raise ValueError("boom: negative one")
    if first == -2.0:
        time.sleep(30)  # far past SAGEMAKER_MODEL_SERVER_TIMEOUT
    if first == -3.0:
        marker = os.environ.get("SLOW_MARKER")
        if marker:
            Path(marker).write_text(str(os.getpid()))
        time.sleep(0.8)
    if first == -6.0:
        raise SystemExit(4)
    if first == -7.0:
        raise Unprocessable("cannot process this")
    with torch.inference_mode():
        return model(data)
