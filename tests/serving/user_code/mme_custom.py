"""A multi-model endpoint model's own code/inference.py (its own model_fn and output_fn, the default
input_fn): the answer says which code served it. model_fn writes `loading` and waits for a `go`
file when the model directory has a `hold` file, so that a test can keep it loading."""

import json
import time
from pathlib import Path

import torch


def model_fn(model_dir):
    folder = Path(model_dir)
    if (folder / "hold").exists():
        (folder / "loading").write_text("")
        deadline = time.monotonic() + 20
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    return torch.jit.load(str(folder / "model.pt"))


def output_fn(prediction, accept):
    return json.dumps({"code": "custom", "rows": len(prediction)})
