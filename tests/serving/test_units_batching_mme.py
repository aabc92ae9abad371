"""Pure pieces of batching, batch transform and multi-model endpoints, in process: the settings,
the LRU order, how a batch is joined, split and retried, MULTI_RECORD splitting, the shared
registry across fork, and a worker's eviction under a memory headroom."""

from __future__ import annotations

import asyncio
import json
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import config, records, usercode
from serving.batching import _join_key, _split, run_batch
from serving.errors import ConfigError
from serving.multimodel.models import InsufficientStorage, ModelSet
from serving.multimodel.policy import LruOrder
from serving.multimodel.registry import ModelEntry, Registry
from serving.runtime import Runtime

pytestmark = [pytest.mark.timeout(30, method="thread")]


def _config(**env: str) -> config.ServeConfig:
    return config.load(env, cpu_count=2)


# -- settings -----------------------------------------------------------------------------


def test_batching_is_off_by_default_and_takes_the_torchserve_names() -> None:
    default = _config()
    assert (default.batch_size, default.max_batch_delay_s) == (1, 0.005)
    ts = _config(SAGEMAKER_TS_BATCH_SIZE="8", SAGEMAKER_TS_MAX_BATCH_DELAY="20")
    assert (ts.batch_size, ts.max_batch_delay_s) == (8, 0.02)
    ours = _config(SAGEMAKER_TS_BATCH_SIZE="8", SERVE_BATCH_SIZE="4", SERVE_MAX_BATCH_DELAY_MS="0")
    assert (ours.batch_size, ours.max_batch_delay_s) == (4, 0.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAGEMAKER_TS_BATCH_SIZE", "0"),
        ("SAGEMAKER_TS_MAX_BATCH_DELAY", "-1"),
        ("SAGEMAKER_BATCH_STRATEGY", "SOME_RECORDS"),
        ("SAGEMAKER_MULTI_MODEL", "maybe"),
        ("SERVE_MME_MAX_MODELS", "x"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(**{name: value})
    assert str(caught.value).startswith(f"{name}={value!r}: ")


def test_batch_strategy_spellings_and_splitting() -> None:
    assert (_config().batch_strategy, _config().split_records) == ("MULTI_RECORD", False)
    multi = _config(SAGEMAKER_BATCH_STRATEGY="MultiRecord")
    assert (multi.batch_strategy, multi.split_records) == ("MULTI_RECORD", True)
    single = _config(SAGEMAKER_BATCH_STRATEGY="single_record")
    assert (single.batch_strategy, single.split_records) == ("SINGLE_RECORD", False)


def test_multi_model_mode_starts_without_a_model() -> None:
    mme = _config(SAGEMAKER_MULTI_MODEL="true", SAGEMAKER_BASE_DIR="/srv/ml")
    assert mme.multi_model
    assert not mme.preload
    assert mme.models_dir == Path("/srv/ml/models")


# -- the LRU order --------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_first() -> None:
    order = LruOrder(max_models=3)
    for name in ("a", "b", "c"):
        order.touch(name)
    order.touch("a")  # used again: now b is the oldest
    assert order.names() == ["b", "c", "a"]
    assert order.over_cap("d") == ["b"]
    assert order.over_cap("a") == []  # already in: nothing to make room for
    assert order.victim(keep="b") == "c"
    order.remove("b")
    assert order.victim() == "c"
    assert LruOrder(0).over_cap("x") == []  # no count cap


# -- batches --------------------------------------------------------------------------------


def _numpy_runtime(predict_calls: list[int]) -> Runtime:
    """A runtime whose hooks take JSON-ish rows as numpy arrays and double them; a request
    with a row starting with -7 breaks predict_fn."""

    def input_fn(body: Any, content_type: str) -> Any:
        return np.array(json.loads(body), dtype=np.float32)

    def predict_fn(data: Any, model: Any) -> Any:
        predict_calls.append(len(data) if data.ndim else 0)
        if data.ndim == 2 and (data[:, 0] == -7).any():
            raise ValueError("row starts with -7")
        return data * 2

    def output_fn(prediction: Any, accept: str) -> bytes:
        return repr(prediction.tolist()).encode()

    module = types.ModuleType("batch_units")
    module.__file__ = "batch_units.py"
    module.input_fn = input_fn  # type: ignore[attr-defined]
    module.predict_fn = predict_fn  # type: ignore[attr-defined]
    module.output_fn = output_fn  # type: ignore[attr-defined]
    module.model_fn = lambda model_dir: None  # type: ignore[attr-defined]
    return Runtime(_config(), usercode.from_module(module))


def test_joinable_requests_share_one_predict_and_come_back_in_order() -> None:
    calls: list[int] = []
    runtime = _numpy_runtime(calls)
    requests = [(b"[[1, 2]]", "text/plain", None), (b"[[3, 4], [5, 6]]", "text/plain", None)]
    replies = run_batch(runtime, requests)
    assert [reply.body for reply in replies] == [b"[[2.0, 4.0]]", b"[[6.0, 8.0], [10.0, 12.0]]"]
    assert calls == [3]


def test_a_request_that_breaks_the_batch_fails_alone() -> None:
    calls: list[int] = []
    runtime = _numpy_runtime(calls)
    requests = [
        (b"[[1, 2]]", "text/plain", None),
        (b"[[-7, 2]]", "text/plain", None),
        (b"[1, 2, 3]", "text/plain", None),  # 1-D: never joined
        (b"[[3, 4]]", "text/plain", None),
    ]
    replies = run_batch(runtime, requests)
    assert [reply.status for reply in replies] == [200, 500, 200, 200]
    assert replies[0].body == b"[[2.0, 4.0]]"
    assert replies[2].body == b"[2.0, 4.0, 6.0]"
    assert replies[3].body == b"[[6.0, 8.0]]"
    # The joined call of three, then each of the three alone, and the 1-D one.
    assert sorted(calls) == [1, 1, 1, 3, 3]


def test_join_and_split_rules() -> None:
    assert _join_key(np.zeros((2, 3))) == _join_key(np.zeros((5, 3)))
    assert _join_key(np.zeros((2, 3))) != _join_key(np.zeros((2, 4)))
    assert _join_key(np.zeros(3)) is None
    assert _join_key({"a": 1}) is None
    parts = _split(np.arange(6).reshape(3, 2), [1, 2])
    assert parts is not None
    assert [part.tolist() for part in parts] == [[[0, 1]], [[2, 3], [4, 5]]]
    assert _split(np.zeros((4, 2)), [1, 2]) is None  # not one row per input row
    assert _split(3.0, [1]) is None
    assert _split([1, 2, 3], [2, 1]) == [[1, 2], [3]]


def test_records_are_non_blank_lines() -> None:
    assert records.split(b"1,2\r\n\n3,4\n  \n5,6") == [b"1,2", b"3,4", b"5,6"]


# -- registry and eviction ------------------------------------------------------------------


def test_registry_changes_are_seen_across_fork() -> None:
    registry = Registry(capacity=4096)
    assert registry.add(ModelEntry("a", "/models/a"))
    assert not registry.add(ModelEntry("a", "/elsewhere"))
    generation = registry.generation
    pid = os.fork()
    if pid == 0:  # the child changes the table, as another worker would
        code = 0 if registry.remove("a") and registry.add(ModelEntry("b", "/models/b")) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert registry.generation == generation + 2
    assert registry.snapshot() == {"b": "/models/b"}


def test_registry_full_is_507() -> None:
    registry = Registry(capacity=64)
    assert registry.add(ModelEntry("a", "/m/a"))
    with pytest.raises(Exception) as caught:
        registry.add(ModelEntry("b" * 80, "/m/b"))
    assert getattr(caught.value, "status", None) == 507


def _model_dirs(root: Path, count: int) -> list[ModelEntry]:
    entries = []
    for index in range(count):
        folder = root / f"m{index}"
        (folder / "code").mkdir(parents=True)
        (folder / "code" / "inference.py").write_text(
            "def model_fn(model_dir):\n    return {'dir': model_dir}\n"
        )
        entries.append(ModelEntry(f"m{index}", str(folder)))
    return entries


def test_memory_headroom_evicts_least_recently_used_then_507(tmp_path: Path) -> None:
    registry = Registry(capacity=4096)
    settings = _config(SAGEMAKER_MULTI_MODEL="true", SERVE_MME_MIN_FREE_MEMORY_MB="100")
    mb = 1024 * 1024
    # Each loaded model "uses" 40 MiB of a 200 MiB host.
    models: ModelSet

    def free() -> int:
        return 200 * mb - 40 * mb * len(models.loaded_names()) - extra[0]

    extra = [0]
    models = ModelSet(settings, registry, free_memory=free)
    entries = _model_dirs(tmp_path, 4)
    for entry in entries:
        registry.add(entry)

    async def scenario() -> None:
        for name in ("m0", "m1"):
            await models.get(name)
        await models.get("m0")  # m1 is now the least recently used
        await models.get("m2")  # 3 x 40 MiB would leave 80 < 100: m1 goes
        assert models.loaded_names() == ["m0", "m2"]
        extra[0] = 150 * mb  # something else took the host's memory
        with pytest.raises(InsufficientStorage):
            await models.get("m3")
        assert models.loaded_names() == []

    asyncio.run(scenario())


def test_a_registry_left_locked_fails_with_503_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.multimodel import registry as registry_mod

    monkeypatch.setattr(registry_mod, "LOCK_TIMEOUT_S", 0.05)
    registry = Registry(capacity=4096)
    assert registry._lock.acquire(timeout=1)  # as a worker killed while changing it leaves it
    with pytest.raises(registry_mod.RegistryBusy) as caught:
        registry.add(ModelEntry("a", "/m/a"))
    assert caught.value.status == 503
