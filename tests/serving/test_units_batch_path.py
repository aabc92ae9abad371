"""The batched request path in process: the request timer (armed without system calls, nested
under a batch's one deadline), a batch under one timeout, the default hooks joined once per
batch giving exactly what each request alone gives, and the early run of a batch once every
open connection of the worker has a request waiting."""

from __future__ import annotations

import asyncio
import io
import json
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import config, usercode
from serving.batching import Batcher, Waiting, run_batch
from serving.runtime import ALARM, Reply, Runtime, _Expired

# The request timer is SIGALRM in this process, which pytest-timeout's signal method also uses.
pytestmark = [
    pytest.mark.timeout(60, method="thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]


def _spin(seconds: float) -> None:
    """Busy for `seconds` (a signal handler runs between bytecodes, as in user code)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture(autouse=True)
def _timer() -> Iterator[None]:
    ALARM.install()
    yield
    ALARM.disarm()


# -- the request timer --------------------------------------------------------------------


def test_the_timer_fires_only_inside_armed_work_over_many_rounds() -> None:
    """Stress of the racy path: a 2 ms timer left pending by quick work fires while nothing is
    armed (ignored) or during later work (re-set for what is left); over 400 rounds no
    expiry escapes outside armed work and every overrun is caught."""
    expired = 0
    for round_ in range(400):
        ALARM.arm(0.002)
        try:
            _spin(0.0002 * (round_ % 5))  # quick work: disarmed before its deadline
        finally:
            ALARM.disarm()
        _spin(0.001 * (round_ % 3))  # a pending timer may fire here: never raises
        if round_ % 10 == 0:
            ALARM.arm(0.002)
            try:
                _spin(1.0)  # an overrun: must end long before the spin does
            except _Expired:
                expired += 1
            finally:
                ALARM.disarm()
    assert expired == 40
    assert not ALARM.armed


def test_a_deadline_already_reached_fires_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(_Expired):
        try:
            ALARM.arm(0.0)
            _spin(5.0)
        finally:
            ALARM.disarm()
    assert time.monotonic() - started < 2.0


# -- a batch under one timeout ------------------------------------------------------------


def _runtime(timeout_s: float = 5.0, **hooks: Any) -> Runtime:
    module = types.ModuleType("batch_path_hooks")
    module.__file__ = "batch_path_hooks.py"
    hooks.setdefault("model_fn", lambda model_dir: None)
    for name, hook in hooks.items():
        setattr(module, name, hook)
    cfg = config.load({"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout_s)}, cpu_count=1)
    runtime = Runtime(cfg, usercode.from_module(module))
    runtime.load_model()
    return runtime


def test_a_batch_past_the_timeout_is_504_for_every_request_and_the_timer_is_released() -> None:
    def predict_fn(data: Any, model: Any) -> Any:
        if (data[:, 0] < 0).any():
            _spin(10.0)
        return data

    runtime = _runtime(
        timeout_s=0.2,
        input_fn=lambda body, content_type: np.array(json.loads(body), dtype=np.float32),
        predict_fn=predict_fn,
        output_fn=lambda prediction, accept: json.dumps(prediction.tolist()),
    )
    slow = [(b"[[-1, 0]]", "application/json", None), (b"[[1, 2]]", "application/json", None)]
    started = time.monotonic()
    replies = run_batch(runtime, slow)
    assert [reply.status for reply in replies] == [504, 504]
    assert time.monotonic() - started < 3.0
    assert not ALARM.armed
    quick = [(b"[[1, 2]]", "application/json", None), (b"[[3, 4]]", "application/json", None)]
    assert [reply.body for reply in run_batch(runtime, quick)] == [b"[[1.0, 2.0]]", b"[[3.0, 4.0]]"]


def _slow_stream(prediction: Any, accept: str) -> Any:
    """An output_fn whose stream's first item takes 10 s for a row starting below zero."""

    def items() -> Any:
        if float(prediction.reshape(-1)[0]) < 0:
            _spin(10.0)
        yield json.dumps(prediction.tolist())

    return items()


def test_a_streamed_first_item_in_a_batch_runs_under_the_batch_deadline() -> None:
    """The batch's one deadline holds for the first item of a streamed answer taken inside
    it: past it, the whole batch is 504, and nothing stays armed."""
    runtime = _runtime(
        timeout_s=0.2,
        input_fn=lambda body, content_type: np.array(json.loads(body), dtype=np.float32),
        predict_fn=lambda data, model: data,
        output_fn=_slow_stream,
    )
    batch = [(b"[[1, 2]]", "application/json", None), (b"[[-1, 2]]", "application/json", None)]
    started = time.monotonic()
    assert [reply.status for reply in run_batch(runtime, batch)] == [504, 504]
    assert time.monotonic() - started < 3.0 and not ALARM.armed
    alone = runtime.invoke(b"[[-1, 2]]", "application/json", None)
    assert alone.status == 504 and not ALARM.armed
    quick = run_batch(runtime, [batch[0], batch[0]])
    assert [reply.status for reply in quick] == [200, 200]
    assert quick[0].stream is not None  # the rest of a stream is sent (and timed) later


# -- the default hooks, joined once per batch ----------------------------------------------


@pytest.fixture(scope="module")
def default_runtime(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path) -> Runtime:
    model_dir = tmp_path_factory.mktemp("default_model")
    (model_dir / "model.pt").write_bytes(mlp_file.read_bytes())
    cfg = config.load({}, cpu_count=1)
    runtime = Runtime(cfg, usercode.DEFAULT_HANDLER, model_dir)
    runtime.load_model()
    return runtime


def _body(rows: np.ndarray, kind: str) -> bytes:
    if kind == "application/json":
        return json.dumps(rows.tolist()).encode()
    if kind == "text/csv":
        return "\n".join(",".join(repr(float(x)) for x in row) for row in rows).encode()
    if kind == "application/jsonlines":
        return "".join(json.dumps(row.tolist()) + "\n" for row in rows).encode()
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


KINDS = ["application/json", "text/csv", "application/jsonlines", "application/x-npy"]
ACCEPTS = [None, "*/*", "application/json", "text/csv", "application/x-npy", "image/png"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from([*KINDS, "application/x-unknown", None]),
            st.sampled_from(ACCEPTS),
            st.sampled_from([64, 64, 64, 8]),  # a row width the model cannot take fails alone
        ),
        min_size=2,
        max_size=12,
    ),
    st.integers(0, 2**32 - 1),
)
def test_a_batch_answers_each_request_exactly_as_it_alone_is_answered(
    default_runtime: Runtime,
    requests: list[tuple[int, str | None, str | None, int]],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    batch = []
    for rows, kind, accept, width in requests:
        data = rng.random((rows, width), dtype=np.float32)
        batch.append((_body(data, kind or "application/json"), kind, accept))
    alone = [default_runtime.invoke(*request) for request in batch]
    together = run_batch(default_runtime, batch)
    assert [(r.status, r.content_type) for r in together] == [
        (r.status, r.content_type) for r in alone
    ]
    for joined, single in zip(together, alone, strict=True):
        if joined.status != 200:
            assert joined.body == single.body
        else:  # the same numbers; a joined matrix product may differ in the last bits
            np.testing.assert_allclose(_numbers(joined), _numbers(single), rtol=1e-4, atol=1e-6)


def _numbers(reply: Reply) -> np.ndarray:
    if reply.content_type == "application/x-npy":
        return np.asarray(np.load(io.BytesIO(reply.body)))
    if reply.content_type == "text/csv":
        return np.loadtxt(io.StringIO(reply.body.decode()), delimiter=",", ndmin=2)
    return np.array(json.loads(reply.body))


# -- a batch runs once every open connection has a request waiting -------------------------


def _echo_runtime(calls: list[int]) -> Runtime:
    def predict_fn(data: Any, model: Any) -> Any:
        calls.append(len(data))
        return data

    return _runtime(
        input_fn=lambda body, content_type: np.array(json.loads(body), dtype=np.float32),
        predict_fn=predict_fn,
        output_fn=lambda prediction, accept: json.dumps(prediction.tolist()),
    )


def _submit_all(batchers: list[Batcher], connections: int | None) -> tuple[list[Reply], float]:
    async def main() -> tuple[list[Reply], float]:
        for batcher in batchers:
            batcher.waiting.open_connections = lambda: connections
        started = time.monotonic()
        replies = await asyncio.gather(
            *(
                b.submit(f"[[{i}, 1]]".encode(), "application/json", None)
                for i, b in enumerate(batchers)
            )
        )
        return list(replies), time.monotonic() - started

    return asyncio.run(main())


def test_a_batch_runs_at_once_when_every_connection_waits_in_it() -> None:
    calls: list[int] = []
    waiting = Waiting()
    batcher = Batcher(_echo_runtime(calls), size=8, delay_s=30.0, waiting=waiting)
    replies, took = _submit_all([batcher] * 3, connections=3)
    assert [reply.body for reply in replies] == [b"[[0.0, 1.0]]", b"[[1.0, 1.0]]", b"[[2.0, 1.0]]"]
    assert calls == [3] and took < 10.0  # not the 30 s delay
    assert waiting.count == 0


def test_every_batcher_of_the_worker_runs_when_all_its_connections_wait() -> None:
    """Two models of a multi-model worker, one request each, two connections: neither can get
    another request, so both run without waiting out the delay."""
    calls: list[int] = []
    waiting = Waiting()
    runtime = _echo_runtime(calls)
    first = Batcher(runtime, size=8, delay_s=30.0, waiting=waiting)
    second = Batcher(runtime, size=8, delay_s=30.0, waiting=waiting)
    replies, took = _submit_all([first, second], connections=2)
    assert [reply.status for reply in replies] == [200, 200]
    assert sorted(calls) == [1, 1] and took < 10.0


def test_with_more_connections_than_requests_the_batch_waits_for_its_delay() -> None:
    calls: list[int] = []
    batcher = Batcher(_echo_runtime(calls), size=8, delay_s=0.3, waiting=Waiting())
    replies, took = _submit_all([batcher] * 2, connections=3)
    assert [reply.status for reply in replies] == [200, 200] and calls == [2]
    assert took >= 0.3  # the third connection might still have sent one


def test_an_unknown_connection_count_leaves_size_and_delay_to_decide() -> None:
    calls: list[int] = []
    batcher = Batcher(_echo_runtime(calls), size=2, delay_s=30.0, waiting=Waiting())
    _, took = _submit_all([batcher] * 2, connections=None)
    assert calls == [2] and took < 10.0  # full: it ran without the delay
