"""The multi-model contract against a real `serve` (SAGEMAKER_MULTI_MODEL=true, 2 workers, a cap of
4 models per worker, dynamic batching on): every route and status code, 8 models cycling through
the cap with no unexpected error, a model's own code/inference.py, a slow load that does not
hold up other models, and 507 when the memory headroom cannot be had."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from tests.helpers.waiting import wait_for
from tests.serving.conftest import USER_CODE
from tests.serving.serverproc import Answer, Client, ServeProcess, running

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

ROW = json.dumps([[0.25] * 64]).encode()
JSON = {"Content-Type": "application/json"}


def _models_tree(root: Path, mlp_file: Path) -> Path:
    """root/models/m0..m7/model.pt; m7 brings code/inference.py; `slow` holds its load."""
    models = root / "models"
    for name in [f"m{i}" for i in range(8)] + ["slow"]:
        folder = models / name
        folder.mkdir(parents=True)
        shutil.copy(mlp_file, folder / "model.pt")
    for name in ("m7", "slow"):
        (models / name / "code").mkdir()
        shutil.copy(USER_CODE / "mme_custom.py", models / name / "code" / "inference.py")
    (models / "slow" / "hold").write_text("")
    return models


@pytest.fixture(scope="module")
def mme(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("mme")
    _models_tree(root, mlp_file)
    with running(
        root,
        root / "serve.log",
        SAGEMAKER_MULTI_MODEL="true",
        SERVE_MME_MAX_MODELS="4",
        # Every invocation goes through its model's batcher (one per model and worker).
        SAGEMAKER_TS_BATCH_SIZE="4",
    ) as proc:
        proc.models_dir = root / "models"  # type: ignore[attr-defined]
        yield proc


def _call(
    server: ServeProcess, method: str, path: str, body: bytes | None = None, **headers: str
) -> Answer:
    """One request on a fresh connection (which may land on either worker)."""
    client = Client(server.port, timeout=30)
    try:
        return client.request(method, path, body, {**JSON, **headers} if body else headers)
    finally:
        client.close()


def _load(server: ServeProcess, name: str) -> Answer:
    url = str(server.models_dir / name)  # type: ignore[attr-defined]
    return _call(server, "POST", "/models", json.dumps({"model_name": name, "url": url}).encode())


def _invoke(server: ServeProcess, name: str) -> Answer:
    return _call(server, "POST", f"/models/{quote(name)}/invoke", ROW)


def test_ping_is_200_with_no_model(mme: ServeProcess) -> None:
    assert _call(mme, "GET", "/ping").status == 200
    assert _call(mme, "GET", "/models").json() == {"models": []}


def test_every_route_and_status(mme: ServeProcess) -> None:
    loaded = _load(mme, "m0")
    assert loaded.status == 200, loaded.body
    assert _load(mme, "m0").status == 409
    missing = json.dumps({"model_name": "x", "url": "/nonexistent"}).encode()
    assert _call(mme, "POST", "/models", missing).status == 404
    assert _call(mme, "POST", "/models", b'{"model_name": 1}').status == 400
    described = _call(mme, "GET", "/models/m0")
    assert described.status == 200
    url = str(mme.models_dir / "m0")  # type: ignore[attr-defined]
    assert described.json() == {"modelName": "m0", "modelUrl": url}
    assert _call(mme, "GET", "/models/nope").status == 404

    # Invoked on both routes, by every worker (fresh connections land on either).
    for _ in range(6):
        answer = _invoke(mme, "m0")
        assert answer.status == 200, answer.body
        assert np.array(answer.json()).shape == (1, 10)
        target = _call(mme, "POST", "/invocations", ROW, **{"X-Amzn-SageMaker-Target-Model": "m0"})
        assert target.status == 200
        assert target.json() == answer.json()
    assert _invoke(mme, "nope").status == 404
    assert _call(mme, "POST", "/invocations", ROW).status == 400
    assert _call(mme, "PUT", "/models/m0").status == 405

    assert _call(mme, "DELETE", "/models/m0").status == 200
    assert _call(mme, "DELETE", "/models/m0").status == 404
    for _ in range(4):  # unloaded in every worker, not only the one that took the DELETE
        assert _invoke(mme, "m0").status == 404


def test_list_pages(mme: ServeProcess) -> None:
    for name in ("m1", "m2", "m3"):
        assert _load(mme, name).status == 200
    first = _call(mme, "GET", "/models?limit=2").json()
    assert [m["modelName"] for m in first["models"]] == ["m1", "m2"]
    token = first["nextPageToken"]
    second = _call(mme, "GET", f"/models?limit=2&next_page_token={token}").json()
    assert [m["modelName"] for m in second["models"]] == ["m3"]
    assert "nextPageToken" not in second
    assert _call(mme, "GET", "/models?next_page_token=abc").status == 400
    for name in ("m1", "m2", "m3"):
        assert _call(mme, "DELETE", f"/models/{name}").status == 200


def test_eight_models_cycle_through_a_cap_of_four(mme: ServeProcess) -> None:
    names = [f"m{i}" for i in range(8)]
    for name in names:
        assert _load(mme, name).status == 200
    statuses = []
    for _ in range(3):
        for name in names:
            answer = _invoke(mme, name)
            statuses.append(answer.status)
            if name == "m7":  # its own code/inference.py answered
                assert answer.json() == {"code": "custom", "rows": 1}
    assert statuses == [200] * len(statuses)
    # Each worker holds at most 4: the least recently used went, and came back on demand.
    assert "evicted (least recently used, SERVE_MME_MAX_MODELS)" in mme.log()
    for name in names:
        assert _call(mme, "DELETE", f"/models/{name}").status == 200


def test_a_slow_load_does_not_hold_up_other_models(mme: ServeProcess) -> None:
    assert _load(mme, "m1").status == 200
    slow_dir: Path = mme.models_dir / "slow"  # type: ignore[attr-defined]
    result: list[Answer] = []
    loader = threading.Thread(target=lambda: result.append(_load(mme, "slow")))
    loader.start()
    wait_for((slow_dir / "loading").exists, 20, "the slow model_fn to start")
    # Both workers keep answering m1 (loading it if they must) while one of them is inside
    # the slow model_fn.
    for _ in range(8):
        assert _invoke(mme, "m1").status == 200
    assert loader.is_alive()
    (slow_dir / "go").write_text("")
    loader.join(30)
    assert result
    assert result[0].status == 200
    assert _invoke(mme, "slow").json() == {"code": "custom", "rows": 1}
    for name in ("m1", "slow"):
        assert _call(mme, "DELETE", f"/models/{name}").status == 200


def test_no_memory_headroom_is_507(tmp_path: Path, mlp_file: Path) -> None:
    _models_tree(tmp_path, mlp_file)
    with running(
        tmp_path,
        tmp_path / "serve.log",
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SERVE_MME_MIN_FREE_MEMORY_MB=str(1 << 40),
    ) as server:
        server.models_dir = tmp_path / "models"  # type: ignore[attr-defined]
        answer = _load(server, "m0")
        assert answer.status == 507
        assert "SERVE_MME_MIN_FREE_MEMORY_MB" in answer.json()["message"]
        assert _call(server, "GET", "/models").json() == {"models": []}
