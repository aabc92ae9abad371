"""Start-up, readiness, replacement, shutdown and user-code discovery of a real `serve`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.waiting import wait_for
from tests.serving.conftest import USER_CODE, make_tree
from tests.serving.serverproc import SERVE, Answer, ServeProcess, ping, running

pytestmark = [
    pytest.mark.timeout(60),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]


def test_ping_is_200_only_once_every_worker_loaded_and_again_after_a_death(
    tmp_path: Path, mlp_file: Path
) -> None:
    # Each worker loads its own copy (as on GPU hosts) and takes 0.6 s doing it.
    markers = tmp_path / "markers"
    markers.mkdir()
    root = make_tree(tmp_path / "ml", mlp_file, inference="slow_load.py")
    server = ServeProcess(
        root, tmp_path / "serve.log", SERVE_PRELOAD_MODEL="false", LOAD_MARKERS=str(markers)
    )
    try:
        seen: list[int | None] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log()
            status = ping(server.port, timeout=0.5)
            seen.append(status)
            if status == 200:
                break
        assert seen[-1] == 200, server.log()
        # The first 200 comes only when both workers have their model.
        assert len(list(markers.iterdir())) == 2
        assert set(seen[:-1]) <= {None, 503}
        server.remember()

        # A worker killed: /ping goes 503 while its replacement loads, then 200 again.
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: ping(server.port, 0.5) == 503, 10, "/ping to report the dead worker")
        wait_for(lambda: ping(server.port, 0.5) == 200, 20, "/ping to recover")
        assert victim not in server.workers()
        assert len(list(markers.iterdir())) == 3
    finally:
        assert server.stop() == 0


def test_sigterm_drains_in_flight_request_then_exits_0(tmp_path: Path, mlp_file: Path) -> None:
    root = make_tree(tmp_path / "ml", mlp_file, inference="triggers.py")
    marker = tmp_path / "slow-started"
    server = ServeProcess(
        root, tmp_path / "serve.log", SAGEMAKER_MODEL_SERVER_WORKERS="1", SLOW_MARKER=str(marker)
    )
    answers: list[Answer] = []
    try:
        server.wait_ready()
        data = np.zeros((1, 64), dtype=np.float32)
        data[0, 0] = -3.0  # the predict_fn sleeps 0.8 s

        def slow_request() -> None:
            client = server.client()
            answers.append(client.invoke(json.dumps(data.tolist()).encode()))
            client.close()

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_for(marker.exists, 10, "the slow request to reach predict_fn")
        server.signal(signal.SIGTERM)
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert [a.status for a in answers] == [200]
        assert server.wait_exit(timeout=20) == 0
    finally:
        assert server.stop() == 0


def run_serve(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SERVE_"))}
    full.update(SAGEMAKER_BASE_DIR=str(root), SERVE_BIND_HOST="127.0.0.1", **env)
    return subprocess.run(
        [SERVE], env=full, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT='http'"),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "SAGEMAKER_MODEL_SERVER_WORKERS='0'"),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "-1"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT='-1'"),
        ({"SAGEMAKER_SUBMIT_DIRECTORY": "s3://bucket/code.tar.gz"}, "only a local directory"),
    ],
)
def test_bad_configuration_exits_2(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    result = run_serve(tmp_path, **env)
    assert result.returncode == 2
    assert needle in result.stderr


def test_unloadable_model_or_code_exits_1(tmp_path: Path, mlp_file: Path) -> None:
    (tmp_path / "empty" / "model").mkdir(parents=True)
    result = run_serve(tmp_path / "empty")
    assert result.returncode == 1
    assert "no model file" in result.stderr

    root = make_tree(tmp_path / "mixed", mlp_file, inference="mixed.py")
    result = run_serve(root)
    assert result.returncode == 1
    assert "transform_fn cannot be combined" in result.stderr

    result = run_serve(tmp_path / "mixed", SAGEMAKER_PROGRAM="absent.py")
    assert result.returncode == 1
    assert "absent.py does not exist" in result.stderr


def test_program_in_submit_directory_with_state_dict_and_transform_fn(tmp_path: Path) -> None:
    import torch

    root = tmp_path / "ml"
    (root / "model").mkdir(parents=True)
    torch.manual_seed(1)
    reference = torch.nn.Linear(4, 2)
    torch.save(reference.state_dict(), root / "model" / "model.pth")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("handler.py", "helper_mod.py"):
        shutil.copy(USER_CODE / name, src / name)
    with running(
        root,
        tmp_path / "serve.log",
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SAGEMAKER_SUBMIT_DIRECTORY=str(src),
        SAGEMAKER_PROGRAM="handler.py",
    ) as server:
        client = server.client()
        inputs = [[1.0, 2.0, 3.0, 4.0]]
        answer = client.invoke(json.dumps(inputs).encode(), "application/json", "*/*")
        client.close()
    assert answer.status == 200, answer.body
    assert answer.content_type == "application/vnd.test+json"
    body = answer.json()
    assert isinstance(body, dict)
    assert body["accept"] == "application/json"  # */* became the default Accept
    with torch.no_grad():
        expected = (reference(torch.tensor(inputs)) * 2.0).tolist()
    np.testing.assert_allclose(body["out"], expected, rtol=1e-6)
