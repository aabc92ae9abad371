"""The inference image serves the model the 2-host torch job trained, then stops on SIGTERM."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers.waiting import wait_for
from tests.images.conftest import JobRun
from tests.images.engine import SERVE_IMAGE, Scope


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.mark.timeout(300)
def test_serve_answers_with_the_two_host_model_and_stops_on_sigterm(
    torch_job: JobRun, scope: Scope
) -> None:
    model = torch_job.trees["algo-1"] / "model"
    assert (model / "model.pt").exists(), torch_job.logs["algo-1"]
    port = free_port()
    name = scope.start(
        SERVE_IMAGE, ["serve"], f"--publish=127.0.0.1:{port}:8080",
        f"--volume={model}:/opt/ml/model:ro", name=scope.name("serve"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: pings(f"{base}/ping"), 90, "/ping to answer 200",
        describe=lambda: scope.engine.logs(name),
    )  # fmt: skip
    rows = [[0.5 * i for i in range(8)], [1.0] * 8]
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(rows).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        predictions = json.loads(answer.read())
    assert len(predictions) == 2
    assert all(isinstance(p, float) for p in predictions), predictions

    start = time.monotonic()
    scope.engine.run("stop", "-t", "30", name, timeout=60)
    elapsed = time.monotonic() - start
    assert scope.engine.exit_code(name) == 0, scope.engine.logs(name)
    assert elapsed < 15, f"serve took {elapsed:.1f} s to stop"
