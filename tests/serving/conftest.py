"""Fixtures for the serving tests: an /opt/ml-shaped tree holding a TorchScript MLP."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.serving.serverproc import build_mlp

USER_CODE = Path(__file__).with_name("user_code")


@pytest.fixture(scope="session")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "model.pt"
    build_mlp(path)
    return path


@pytest.fixture(scope="session")
def predict(mlp_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The model's output computed in the test process, to check the server against."""
    import torch

    model = torch.jit.load(str(mlp_file))  # type: ignore[no-untyped-call]

    def run(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(model(torch.from_numpy(np.asarray(rows, dtype=np.float32))).numpy())

    return run


def make_tree(root: Path, mlp_file: Path, inference: str | None = None) -> Path:
    """`root` laid out as /opt/ml with model/model.pt and optionally model/code/inference.py."""
    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    shutil.copy(mlp_file, model_dir / "model.pt")
    if inference is not None:
        (model_dir / "code").mkdir()
        shutil.copy(USER_CODE / inference, model_dir / "code" / "inference.py")
    return root
