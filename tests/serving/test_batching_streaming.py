"""A real `serve` with dynamic batching on (batch 8, delay 50 ms, one worker) and batch
transform's MULTI_RECORD strategy: batches form under concurrent load and a bad request in one
fails alone; a streamed answer arrives chunk by chunk; a large MULTI_RECORD CSV comes back in
order; a body declared above the payload limit is refused before it is sent."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.waiting import wait_for
from tests.serving.conftest import make_tree
from tests.serving.serverproc import Answer, Client, ServeProcess, running

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

Predict = Callable[[np.ndarray], np.ndarray]
RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("serve_batch")
    make_tree(root / "ml", mlp_file, inference="batch_hooks.py")
    with running(
        root / "ml",
        root / "serve.log",
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SAGEMAKER_TS_BATCH_SIZE="8",
        SAGEMAKER_TS_MAX_BATCH_DELAY="50",
        SAGEMAKER_BATCH_STRATEGY="MULTI_RECORD",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="20",
        BATCH_LOG=str(root / "batches.log"),
    ) as proc:
        proc.batch_log = root / "batches.log"  # type: ignore[attr-defined]
        yield proc


def _calls(server: ServeProcess) -> list[int]:
    path: Path = server.batch_log  # type: ignore[attr-defined]
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_concurrent_requests_batch_and_a_bad_one_fails_alone(
    server: ServeProcess, predict: Predict, tmp_path: Path
) -> None:
    before = len(_calls(server))
    inputs = [RNG.random((1 + i % 3, 64), dtype=np.float32) for i in range(16)]
    inputs[5][0, 0] = -7.0  # predict_fn refuses this request (422)
    # The one worker is held inside a predict_fn while the 16 requests arrive, so that they
    # are all waiting when it comes back to its event loop: the batches are known to form.
    gate = tmp_path / "gate"
    holder = threading.Thread(
        target=lambda: server.client().invoke(json.dumps({"hold": str(gate)}).encode())
    )
    holder.start()
    wait_for(Path(f"{gate}.holding").exists, 20, "the worker to be held")
    answers: list[Answer | None] = [None] * len(inputs)
    sent = threading.Semaphore(0)

    def call(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        body = json.dumps(inputs[index].tolist()).encode()
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        sent.release()
        response = conn.getresponse()
        answers[index] = Answer(response.status, "", response.read())
        conn.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert sent.acquire(timeout=20)
    gate.write_text("go")
    for thread in [holder, *threads]:
        thread.join(30)
    for index, answer in enumerate(answers):
        assert answer is not None
        if index == 5:
            assert answer.status == 422, answer.body
            assert answer.json()["message"] == "a row starts with -7"
            continue
        assert answer.status == 200, answer.body
        expected = predict(inputs[index])
        np.testing.assert_allclose(np.array(answer.json()), expected, rtol=1e-5, atol=1e-6)
    calls = _calls(server)[before:]
    # Requests were joined (a call with more rows than any one request has), and the batch
    # holding the bad request failed and was split: its requests ran again, alone, so more
    # rows went through predict_fn than were sent. (How the 16 fall into batches depends on
    # how fast the worker reads them once released.)
    assert max(calls) > 3, calls
    assert sum(calls) > sum(len(rows) for rows in inputs), calls


def test_malformed_request_in_a_batch_fails_alone(server: ServeProcess) -> None:
    bodies = [b"[[0.5]" + b"]", b"{not json", json.dumps([[0.1] * 64]).encode()]
    answers: list[Answer | None] = [None] * len(bodies)

    def call(index: int) -> None:
        client = server.client()
        answers[index] = client.invoke(bodies[index])
        client.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = [answer.status if answer else None for answer in answers]
    # Shape (1, 1) cannot join (1, 64) rows; the model refuses it alone: a 500 of its own.
    assert statuses == [500, 500, 200]
    assert answers[1] is not None and answers[1].json()["error"] == "JSONDecodeError"


def test_streamed_answer_arrives_chunk_by_chunk(server: ServeProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    body = json.dumps({"stream": 3, "gate": str(gate)}).encode()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-length") is None
    # The second item does not exist until the gate does: the first chunk came on its own.
    first = response.read1()
    assert json.loads(first) == {"item": 0}
    assert not gate.exists()
    gate.write_text("go")
    rest = response.read()
    assert [json.loads(line) for line in rest.splitlines()] == [{"item": 1}, {"item": 2}]
    conn.close()


def test_a_stream_that_fails_midway_is_cut(server: ServeProcess, tmp_path: Path) -> None:
    workers = server.workers()
    logged = len(server.log())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    body = json.dumps({"stream": -1, "gate": str(tmp_path / "unused")}).encode()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert json.loads(cut.value.partial) == {"item": 0}
    conn.close()
    wait_for(lambda: "the generator broke" in server.log()[logged:], 10, "the cut to be logged")
    assert "Traceback" not in server.log()[logged:]  # one line, no traceback
    assert server.workers() == workers
    assert server.client().request("GET", "/ping").status == 200


def test_large_multi_record_csv_comes_back_in_order(server: ServeProcess, predict: Predict) -> None:
    data = RNG.random((12_000, 64), dtype=np.float32)
    text = "\n".join(",".join(f"{v:.6g}" for v in row) for row in data) + "\n"
    data = np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])
    body = text.encode()
    assert len(body) > 6 * 1024 * 1024  # above the real-time limit; this server allows 20 MB
    client = Client(server.port, timeout=60)
    answer = client.invoke(body, content_type="text/csv", accept="text/csv")
    client.close()
    assert answer.status == 200, answer.body[:500]
    lines = answer.body.decode().splitlines()
    assert len(lines) == len(data)
    got = np.array([[float(v) for v in line.split(",")] for line in lines])
    np.testing.assert_allclose(got, predict(data), rtol=1e-4, atol=1e-5)


def test_bad_record_fails_the_mini_batch_naming_its_line(server: ServeProcess) -> None:
    rows = ["0.5," * 63 + "0.5"] * 3
    rows[1] = "-7," + "0.5," * 62 + "0.5"
    client = server.client()
    answer = client.invoke("\n".join(rows).encode(), content_type="text/csv", accept="text/csv")
    client.close()
    assert answer.status == 422
    assert answer.json()["message"] == "record 2: a row starts with -7"


def test_declared_oversize_body_is_refused_before_it_is_sent(server: ServeProcess) -> None:
    declared = 101 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\n"
            b"Content-Length: %d\r\n\r\n" % declared
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        elapsed = time.monotonic() - started
        body = json.loads(response.read())
    assert response.status == 413
    assert response.getheader("connection") == "close"
    assert body["message"] == (
        "payload of 101.0 MB exceeds MaxPayloadInMB=20 (20971520 bytes); "
        "set SAGEMAKER_MAX_PAYLOAD_IN_MB"
    )
    assert elapsed < 5  # answered from the headers: 101 MB were never sent
    assert server.client().request("GET", "/ping").status == 200


def test_an_answer_above_the_payload_limit_is_a_500_naming_it(server: ServeProcess) -> None:
    client = server.client()
    limit = 20 * 1024 * 1024
    answer = client.invoke(json.dumps({"big": limit + 1}).encode())
    assert answer.status == 500
    assert answer.json()["message"] == (
        f"the answer of {limit + 1} bytes is larger than the payload limit of {limit} bytes "
        "(SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    )
    assert client.invoke(json.dumps({"big": 1000}).encode()).body == b"x" * 1000
    client.close()


def test_execution_parameters_report_the_strategy(server: ServeProcess) -> None:
    client = server.client()
    params = client.request("GET", "/execution-parameters").json()
    client.close()
    assert params == {
        "MaxConcurrentTransforms": 1,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 20,
    }


def test_batches_never_wait_for_requests_that_cannot_come(
    tmp_path: Path, mlp_file: Path, predict: Predict
) -> None:
    """Stress of the early run (serving.batching.Waiting): with a 60 s delay, a batch that is
    not full runs only because every open connection has a request in it, or because a
    connection closed and every one left has. 24 clients on their own keep-alive connections
    send 10 to 33 requests each, so they finish (and close) at different times, 500 requests
    in all: each must be answered, correctly, long before the delay."""
    make_tree(tmp_path / "ml", mlp_file, inference="batch_hooks.py")
    with running(
        tmp_path / "ml",
        tmp_path / "serve.log",
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SAGEMAKER_TS_BATCH_SIZE="64",
        SAGEMAKER_TS_MAX_BATCH_DELAY="60000",
        BATCH_LOG=str(tmp_path / "batches.log"),
    ) as server:
        clients = 24
        counts = [10 + index for index in range(clients)]
        slowest: list[float] = [0.0] * clients
        wrong: list[str] = []

        def client(index: int) -> None:
            try:
                requests(index)
            except OSError as error:  # a timed-out request included
                wrong.append(f"client {index}: {error!r}")

        def requests(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=40)
            for number in range(counts[index]):
                rows = np.random.default_rng(index * 1000 + number).random((1, 64), np.float32)
                started = time.monotonic()
                conn.request(
                    "POST",
                    "/invocations",
                    json.dumps(rows.tolist()).encode(),
                    {"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                body = response.read()
                slowest[index] = max(slowest[index], time.monotonic() - started)
                if response.status != 200:
                    wrong.append(f"client {index} request {number}: {response.status} {body!r}")
                    break
                if not np.allclose(json.loads(body), predict(rows), rtol=1e-4, atol=1e-6):
                    wrong.append(f"client {index} request {number}: someone else's answer")
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(80)
        assert not any(thread.is_alive() for thread in threads)
        assert wrong == []
        # A batch held for its delay would show as a wait of 60 s.
        assert max(slowest) < 30, slowest
        calls = [int(line) for line in (tmp_path / "batches.log").read_text().split()]
        assert sum(calls) == sum(counts) and max(calls) > 1, calls
