"""Test inference module: model_fn takes a while and leaves a marker per loading process."""

import os
import time
from pathlib import Path

import torch


def model_fn(model_dir):
    time.sleep(float(os.environ.get("LOAD_DELAY_S", "0.6")))
    model = torch.jit.load(os.path.join(model_dir, "model.pt"))
    Path(os.environ["LOAD_MARKERS"], str(os.getpid())).write_text("loaded")
    return model
