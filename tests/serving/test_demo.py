"""The demo job's model, trained by examples/train_regression.py, served and queried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.serverproc import running

pytestmark = [
    pytest.mark.timeout(90),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "train_regression.py"


def test_demo_model_is_served(tmp_path: Path) -> None:
    if not DEMO.exists():
        pytest.skip("examples/train_regression.py is not there yet")
    model_dir = tmp_path / "ml" / "model"
    model_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env["SM_MODEL_DIR"] = str(model_dir)
    trained = subprocess.run(
        [sys.executable, str(DEMO), "--epochs", "1", "--max-steps", "3"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert trained.returncode == 0, trained.stderr
    assert (model_dir / "model.pt").is_file() and (model_dir / "code" / "inference.py").is_file()

    import torch

    model = torch.jit.load(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    rows = [[0.1 * (i + j) for j in range(8)] for i in range(3)]
    with torch.inference_mode():
        expected = model(torch.tensor(rows)).reshape(-1).tolist()

    with running(tmp_path / "ml", tmp_path / "serve.log") as server:
        client = server.client()
        answer = client.invoke(json.dumps(rows).encode())
        assert answer.status == 200, answer.body
        assert answer.json() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        answer = client.invoke(json.dumps({"instances": rows[:1]}).encode())
        assert answer.status == 200 and answer.json() == pytest.approx(expected[:1], rel=1e-5)
        # The demo's hooks reject rows of the wrong width; the worker survives it.
        workers = server.workers()
        answer = client.invoke(json.dumps([[1.0, 2.0]]).encode())
        assert answer.status == 400
        assert answer.json()["error"] == "ClientError"
        assert "expected rows of 8 numbers" in answer.json()["message"]
        assert client.invoke(b"{oops").status == 400
        assert client.invoke(json.dumps(rows).encode(), content_type="text/csv").status == 415
        assert client.invoke(json.dumps(rows).encode(), accept="text/csv").status == 406
        assert client.invoke(json.dumps(rows).encode()).status == 200
        assert server.workers() == workers
        client.close()
