"""A real `serve` on loopback (2 workers, timeout 1 s): payloads, every error class, concurrent
clients, batch-transform runs and a killed worker. One server for the module; every test that
provokes an error checks that the same workers are still there afterwards."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import make_tree
from tests.serving.serverproc import Client, ServeProcess, ping, running

pytestmark = [
    pytest.mark.timeout(60),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

Predict = Callable[[np.ndarray], np.ndarray]
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("serve_a")
    make_tree(root / "ml", mlp_file, inference="triggers.py")
    with running(
        root / "ml",
        root / "serve.log",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="1",
        SLOW_MARKER=str(root / "slow"),
    ) as proc:
        yield proc


@pytest.fixture
def client(server: ServeProcess) -> Iterator[Client]:
    conn = server.client()
    yield conn
    conn.close()


def rows(count: int) -> np.ndarray:
    return RNG.random((count, 64), dtype=np.float32)


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """An NPY preamble and header saying `shape` and `descr`, whatever data follows."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def json_rows(array: np.ndarray) -> bytes:
    import json

    return json.dumps(array.tolist()).encode()


def test_ping_and_execution_parameters(server: ServeProcess, client: Client) -> None:
    answer = client.request("GET", "/ping")
    assert answer.status == 200
    assert answer.json() == {"ready": 2, "workers": 2}
    params = client.request("GET", "/execution-parameters").json()
    assert params == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


@pytest.mark.parametrize("count", [1, 32])
def test_json_rows_match_the_model(client: Client, predict: Predict, count: int) -> None:
    data = rows(count)
    answer = client.invoke(json_rows(data))
    assert answer.status == 200, answer.body
    assert answer.content_type == "application/json"
    np.testing.assert_allclose(np.array(answer.json()), predict(data), rtol=1e-5, atol=1e-6)


def test_csv_npy_and_jsonlines_round_trip(client: Client, predict: Predict) -> None:
    data = rows(5)
    expected = predict(data)
    csv_body = "\n".join(",".join(str(v) for v in row) for row in data).encode()
    answer = client.invoke(csv_body, "text/csv", "text/csv")
    assert (answer.status, answer.content_type) == (200, "text/csv")
    got = np.loadtxt(io.StringIO(answer.body.decode()), delimiter=",", ndmin=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    buffer = io.BytesIO()
    np.save(buffer, data)
    answer = client.invoke(buffer.getvalue(), "application/x-npy", "application/x-npy")
    assert (answer.status, answer.content_type) == (200, "application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(answer.body)), expected, rtol=1e-5, atol=1e-6)

    lines = b"".join(json_rows(row) + b"\n" for row in data)
    answer = client.invoke(lines, "application/jsonlines", "application/jsonlines")
    assert answer.status == 200
    got = np.array([__import__("json").loads(line) for line in answer.body.splitlines()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/html, text/csv;q=0.5, application/json;q=0.9", "application/json"),
        ("text/*", "text/csv"),
        ("application/json; charset=utf-8", "application/json"),
    ],
)
def test_accept_negotiation(client: Client, accept: str | None, expected: str) -> None:
    answer = client.invoke(json_rows(rows(1)), accept=accept)
    assert (answer.status, answer.content_type) == (200, expected), answer.body


@pytest.mark.parametrize(
    "case",
    [
        (b"[[1, 2", "application/json", None, 400, "BadRequest"),
        (b'{"a": 1}', "application/json", None, 400, "BadRequest"),
        (b"1,2\n3", "text/csv", None, 400, "BadRequest"),
        (b"not an npy file", "application/x-npy", None, 400, "BadRequest"),
        # A header claiming 4 TB: np.load's MemoryError was a 500 (test_npy.py has the rest).
        (npy_header((10**12,)) + b"\0" * 16, "application/x-npy", None, 400, "BadRequest"),
        (b"[[1]]", "text/plain", None, 415, "UnsupportedContentType"),
        (b"[[1]]", None, None, 415, "UnsupportedContentType"),
        (b"[[1]]", "application/json", "text/html", 406, "NotAcceptable"),
    ],
)
def test_bad_requests(
    server: ServeProcess,
    client: Client,
    case: tuple[bytes, str | None, str | None, int, str],
) -> None:
    body, content_type, accept, status, error = case
    workers = server.workers()
    answer = client.invoke(body, content_type, accept)
    assert answer.status == status, answer.body
    assert answer.content_type == "application/json"
    assert answer.json()["error"] == error
    # The connection and the workers are still good.
    assert client.invoke(json_rows(rows(1))).status == 200
    assert server.workers() == workers


def test_unknown_route_and_wrong_method(client: Client) -> None:
    assert client.request("GET", "/nope").status == 404
    assert client.request("GET", "/invocations").status == 405
    assert client.request("POST", "/ping", b"").status == 405


def test_body_over_6_mb_is_413(server: ServeProcess, predict: Predict) -> None:
    workers = server.workers()
    big = b"[" + b"0.5," * (2 * 1024 * 1024) + b"0.5]"
    assert len(big) > 6 * 1024 * 1024
    conn = server.client()
    answer = conn.invoke(big)
    assert answer.status == 413
    assert answer.json()["error"] == "PayloadTooLarge"
    conn.close()

    # Chunked, so that no Content-Length announces it: refused while reading.
    chunked = server.client()
    chunked.conn.request(
        "POST",
        "/invocations",
        body=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = chunked.conn.getresponse()
    assert response.status == 413
    chunked.close()
    assert server.workers() == workers


def test_user_code_raising_is_500_with_type_and_message(
    server: ServeProcess, client: Client
) -> None:
    workers = server.workers()
    data = rows(1)
    data[0, 0] = -1.0
    answer = client.invoke(json_rows(data))
    assert answer.status == 500
    body = answer.json()
    assert body["error"] == "ValueError"
    assert body["message"] == "boom: negative one"
    assert "Traceback" not in answer.body.decode()
    deadline = time.monotonic() + 5
    while "boom: negative one" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    log = server.log()
    assert "Traceback (most recent call last)" in log
    assert 'raise ValueError("boom: negative one")' in log
    assert server.workers() == workers


@pytest.mark.parametrize(
    ("trigger", "status", "error"), [(-6.0, 500, "SystemExit"), (-7.0, 422, "Unprocessable")]
)
def test_user_exits_and_status_codes(
    server: ServeProcess, client: Client, trigger: float, status: int, error: str
) -> None:
    workers = server.workers()
    data = rows(1)
    data[0, 0] = trigger
    answer = client.invoke(json_rows(data))
    assert (answer.status, answer.json()["error"]) == (status, error)
    assert server.workers() == workers


def test_request_past_timeout_is_504_and_worker_survives(
    server: ServeProcess, client: Client, predict: Predict
) -> None:
    workers = server.workers()
    data = rows(1)
    data[0, 0] = -2.0
    started = time.monotonic()
    answer = client.invoke(json_rows(data))
    elapsed = time.monotonic() - started
    assert answer.status == 504
    assert answer.json()["error"] == "RequestTimeout"
    assert 0.9 < elapsed < 5, elapsed
    good = rows(2)
    answer = client.invoke(json_rows(good))
    assert answer.status == 200
    np.testing.assert_allclose(np.array(answer.json()), predict(good), rtol=1e-5, atol=1e-6)
    assert server.workers() == workers


def test_concurrent_clients_get_their_own_answers(server: ServeProcess, predict: Predict) -> None:
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = server.client()
        try:
            for _ in range(25):
                data = rng.random((int(rng.integers(1, 8)), 64), dtype=np.float32)
                answer = conn.invoke(json_rows(data))
                if answer.status != 200:
                    failures.append(f"{answer.status} {answer.body!r}")
                    continue
                if not np.allclose(np.array(answer.json()), predict(data), rtol=1e-5, atol=1e-6):
                    failures.append("wrong answer")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=40)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_batch_transform_many_records(client: Client, predict: Predict) -> None:
    # SplitType=Line, BatchStrategy=MultiRecord: many CSV records per request, one answer line
    # per record, in order; then record-by-record, as SingleRecord does.
    data = rows(2000)
    expected = predict(data)
    for start in range(0, 2000, 500):
        chunk = data[start : start + 500]
        body = "\n".join(",".join(repr(float(v)) for v in row) for row in chunk).encode()
        answer = client.invoke(body, "text/csv", "text/csv")
        assert answer.status == 200
        lines = answer.body.decode().splitlines()
        assert len(lines) == 500
        got = np.loadtxt(lines, delimiter=",", ndmin=2)
        np.testing.assert_allclose(got, expected[start : start + 500], rtol=1e-4, atol=1e-5)
    for index in range(200):
        answer = client.invoke(json_rows(data[index : index + 1]))
        assert answer.status == 200
        np.testing.assert_allclose(
            np.array(answer.json())[0], expected[index], rtol=1e-5, atol=1e-6
        )


def test_killed_worker_is_replaced(server: ServeProcess, predict: Predict) -> None:
    before = server.workers()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    after: list[int] = []
    while time.monotonic() < deadline:
        after = server.workers()
        if len(after) == 2 and before[0] not in after and ping(server.port) == 200:
            break
        time.sleep(0.05)
    assert len(after) == 2 and before[0] not in after and before[1] in after, (before, after)
    conn = server.client()
    for _ in range(20):
        data = rows(3)
        answer = conn.invoke(json_rows(data))
        assert answer.status == 200
        np.testing.assert_allclose(np.array(answer.json()), predict(data), rtol=1e-5, atol=1e-6)
    conn.close()
