"""A BaseException from a user hook (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)
is a logged 500 and the worker lives on; from model_fn it is a model that cannot be loaded.
Real `serve` processes on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.procwatch import LeakWatch
from tests.serving.conftest import make_tree
from tests.serving.serverproc import Client, ServeProcess, running

pytestmark = [
    pytest.mark.timeout(60),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

Predict = Callable[[np.ndarray], np.ndarray]
HOOKS = ("input_fn", "predict_fn", "output_fn")
# SystemExit is left out: it was a 500 before these tests (see test_server.py).
RAISED = ("KeyboardInterrupt", "GeneratorExit", "CancelledError")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("serve_base_exc")
    make_tree(root / "ml", mlp_file, inference="base_exceptions.py")
    with running(root / "ml", root / "serve.log") as proc:
        yield proc


@pytest.fixture
def client(server: ServeProcess) -> Iterator[Client]:
    conn = server.client()
    yield conn
    conn.close()


def wait_for_log(server: ServeProcess, needle: str, deadline_s: float = 10.0) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        log = server.log()
        if needle in log:
            return log
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never reached the log:\n{server.log()}")


@pytest.mark.parametrize("raised", RAISED)
@pytest.mark.parametrize("hook", HOOKS)
def test_base_exception_from_a_hook_is_a_logged_500_and_the_worker_lives_on(
    server: ServeProcess, client: Client, predict: Predict, hook: str, raised: str
) -> None:
    workers = server.workers()
    assert len(workers) == 2
    rows = np.random.default_rng(3).random((2, 64), dtype=np.float32)
    body = json.dumps(rows.tolist()).encode()

    answer = client.invoke(body, f"application/json; hook={hook}; raise={raised}")

    assert answer.status == 500, answer.body
    assert answer.json() == {
        "error": raised,
        "message": f"{raised} from {hook}",
        "status": 500,
    }
    log = wait_for_log(server, f"{raised}: {raised} from {hook}")
    assert f"user code raised {raised}" in log
    # The same workers, and the same keep-alive connection, serve the next request.
    good = client.invoke(body, "application/json")
    assert good.status == 200, good.body
    np.testing.assert_allclose(np.array(good.json()), predict(rows), rtol=1e-5, atol=1e-6)
    assert server.workers() == workers


@pytest.mark.parametrize(("preload", "code"), [("true", 1), ("false", 3)])
def test_base_exception_from_model_fn_is_an_unloadable_model(
    tmp_path: Path, mlp_file: Path, no_leaks: LeakWatch, preload: str, code: int
) -> None:
    # In the master (preload) serve exits 1; in the workers (GPU hosts) gunicorn halts with 3.
    # Before, the KeyboardInterrupt escaped as a traceback, or killed each worker in turn.
    root = make_tree(tmp_path / "ml", mlp_file, inference="base_exceptions.py")
    server = ServeProcess(
        root,
        tmp_path / "serve.log",
        SERVE_PRELOAD_MODEL=preload,
        MODEL_FN_RAISES="KeyboardInterrupt",
    )
    try:
        assert server.wait_exit(timeout=30) == code, server.log()
        assert "model_fn raised KeyboardInterrupt: KeyboardInterrupt from model_fn" in server.log()
    finally:
        server.stop()
