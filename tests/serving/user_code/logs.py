"""Test inference module: logs from model_fn through its own logger, and configures logging
itself (`logging.basicConfig` at import) when USER_LOG_FORMAT is set."""

import logging
import os

import torch

if os.environ.get("USER_LOG_FORMAT"):
    logging.basicConfig(format=os.environ["USER_LOG_FORMAT"], level=logging.INFO)

log = logging.getLogger("user.model")


def model_fn(model_dir):
    log.info("loading the model")
    return torch.jit.load(os.path.join(model_dir, "model.pt"))
