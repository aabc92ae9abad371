"""Test inference module: model_fn leaves a marker named after its pid, then blocks opening a
FIFO that the test never writes, so that the test knows start-up is inside model_fn and serve
can only leave it through a signal."""

import os
from pathlib import Path

import torch


def model_fn(model_dir):
    Path(os.environ["LOAD_MARKERS"], str(os.getpid())).write_text("loading")
    with open(os.environ["LOAD_FIFO"]) as fifo:  # blocks until a writer opens the FIFO
        fifo.read()
    return torch.jit.load(os.path.join(model_dir, "model.pt"))
