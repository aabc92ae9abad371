"""Pure pieces of `serving`, in process: configuration, GPU visibility, codecs, readiness,
hook resolution, model loading and the request path's error mapping and timeout."""

from __future__ import annotations

import io
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving import codecs, config, defaults, gpus, usercode
from serving.errors import (
    BadRequest,
    ConfigError,
    ModelLoadError,
    UnsupportedContentType,
    client_message,
)
from serving.readiness import ReadyTable, SlotBook
from serving.runtime import Runtime

# The request timeout uses SIGALRM in this process, which pytest-timeout's signal method uses
# too: time the tests from a thread instead.
pytestmark = [
    pytest.mark.timeout(30, method="thread"),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]


# -- configuration -------------------------------------------------------------------------


def test_defaults_follow_the_contract() -> None:
    cfg = config.load({}, cpu_count=4)
    assert (cfg.port, cfg.workers, cfg.threads_per_worker, cfg.timeout_s) == (8080, 4, 1, 60.0)
    assert cfg.model_dir == Path("/opt/ml/model")
    assert cfg.program_path == Path("/opt/ml/model/code/inference.py")
    assert not cfg.program_required
    assert cfg.max_payload_bytes == 6 * 1024 * 1024
    assert cfg.preload and cfg.gpu_ids == () and cfg.gpu_for_slot(0) is None


def test_gpus_set_workers_pinning_and_disable_preload() -> None:
    cfg = config.load({}, cpu_count=16, gpu_ids=("0", "1"))
    assert (cfg.workers, cfg.threads_per_worker, cfg.preload) == (2, 8, False)
    assert [cfg.gpu_for_slot(s) for s in range(3)] == ["0", "1", "0"]
    cfg = config.load({"SERVE_PRELOAD_MODEL": "true"}, cpu_count=16, gpu_ids=("0",))
    assert not cfg.preload


def test_environment_overrides() -> None:
    cfg = config.load(
        {
            "SAGEMAKER_BASE_DIR": "/srv/ml",
            "SAGEMAKER_BIND_TO_PORT": "9000",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": "5",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "7.5",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
            "SAGEMAKER_PROGRAM": "serve_me.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/srv/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "30",
            "OMP_NUM_THREADS": "2",
        },
        cpu_count=12,
    )
    assert (cfg.port, cfg.workers, cfg.threads_per_worker, cfg.timeout_s) == (9000, 3, 2, 7.5)
    assert cfg.program_path == Path("/srv/code/serve_me.py") and cfg.program_required
    assert cfg.max_payload_bytes == 100 * 1024 * 1024
    assert cfg.log_level == "warning"
    assert cfg.model_dir == Path("/srv/ml/model")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_BIND_TO_PORT", "x"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "-1"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "nan"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0"),
        ("SAGEMAKER_PROGRAM", "../x.py"),
        ("SAGEMAKER_CONTAINER_LOG_LEVEL", "loud"),
        ("SERVE_PRELOAD_MODEL", "maybe"),
    ],
)
def test_invalid_settings_name_variable_and_value(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load({name: value}, cpu_count=2)
    assert caught.value.name == name and repr(value) in str(caught.value)


DEVICES = (
    gpus.Gpu(0, "GPU-0a0a0a0a-0000-1111-2222-333344445555"),
    gpus.Gpu(1, "GPU-1b1b1b1b-0000-1111-2222-333344445555"),
)


def test_visible_gpus_are_pinned_by_uuid_in_cuda_order() -> None:
    # The rules are checked against the launcher's in tests/unit/test_visibility_table.py; here:
    # what serve does with the answer, and that no devices means a CPU-only host.
    assert gpus.visible({"CUDA_VISIBLE_DEVICES": "0"}, lambda: ()) == ()
    assert gpus.visible({}, lambda: DEVICES) == DEVICES
    assert gpus.visible({"CUDA_VISIBLE_DEVICES": "1,0"}, lambda: DEVICES) == DEVICES[::-1]
    assert gpus.visible({"CUDA_VISIBLE_DEVICES": "GPU-1b"}, lambda: DEVICES) == DEVICES[1:]
    picked = gpus.visible({"NVIDIA_VISIBLE_DEVICES": "none"}, lambda: DEVICES)
    assert config.load({}, cpu_count=4, gpu_ids=[g.uuid for g in picked]).preload
    cfg = config.load({}, cpu_count=4, gpu_ids=[g.uuid for g in DEVICES[::-1]])
    assert cfg.gpu_for_slot(0) == DEVICES[1].uuid and not cfg.preload


def test_nvml_without_a_driver_lists_no_device() -> None:
    # This machine has the bindings but no driver: the real call must say (), not raise.
    assert gpus.nvml_devices() == ()


# -- codecs ------------------------------------------------------------------------------------

float_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
    elements=st.floats(-1e6, 1e6, width=32),
)


@given(float_arrays, st.sampled_from(codecs.SUPPORTED))
def test_every_codec_round_trips(array: np.ndarray, kind: str) -> None:
    decoded = codecs.decode(codecs.encode(array, kind), kind)
    np.testing.assert_array_equal(decoded.reshape(array.shape), array)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("TEXT/CSV; charset=utf-8", "text/csv"),
        ("application/json;q=0.2, text/csv;q=0.8", "text/csv"),
        ("text/csv;q=0, application/x-npy", "application/x-npy"),
        ("text/*", "text/csv"),
        ("image/png", None),
        ("text/csv;q=0", None),
    ],
)
def test_negotiate(accept: str, expected: str | None) -> None:
    assert codecs.negotiate(accept, codecs.SUPPORTED, codecs.JSON) == expected


@pytest.mark.parametrize(
    ("body", "kind", "error"),
    [
        (b"[1, 2", codecs.JSON, BadRequest),
        (b"[[1, 2], [3]]", codecs.JSON, BadRequest),
        (b'["a"]', codecs.JSON, BadRequest),
        (b"\xff\xfe", codecs.CSV, BadRequest),
        (b"1,x", codecs.CSV, BadRequest),
        (b"[1]\n[1", codecs.JSONLINES, BadRequest),
        (b"junk", codecs.NPY, BadRequest),
        (b"1", "text/plain", UnsupportedContentType),
    ],
)
def test_decode_errors(body: bytes, kind: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        codecs.decode(body, kind)


def test_npy_refuses_pickled_objects() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest):
        codecs.decode(buffer.getvalue(), codecs.NPY)


# -- readiness ---------------------------------------------------------------------------------


def test_slot_book_reuses_the_slot_of_a_dead_worker() -> None:
    book = SlotBook(2)
    assert (book.assign(1), book.assign(2)) == (0, 1)
    with pytest.raises(RuntimeError):
        book.assign(3)
    assert book.release(1) == 0 and book.release(1) is None
    assert book.assign(4) == 0 and book.slot_of(4) == 0 and book.slot_of(1) is None


def test_ready_table() -> None:
    table = ReadyTable(2)
    assert not table.all_ready()
    table.mark_ready(0, 11)
    table.mark_ready(1)
    assert table.all_ready() and table.ready_pids()[0] == 11
    table.clear(0)
    assert not table.all_ready()


# -- hooks and the request path ----------------------------------------------------------------


def module(**hooks: Any) -> types.ModuleType:
    mod = types.ModuleType("user_inference")
    mod.__file__ = "/code/inference.py"
    for name, hook in hooks.items():
        setattr(mod, name, hook)
    return mod


def test_hooks_fall_back_to_defaults_and_transform_fn_excludes_the_rest() -> None:
    handler = usercode.from_module(module())
    assert handler.model_fn is defaults.model_fn and handler.default_input
    handler = usercode.from_module(module(transform_fn=lambda m, b, c, a: b))
    assert handler.transform_fn is not None and not handler.default_output
    with pytest.raises(ModelLoadError, match="transform_fn cannot be combined"):
        usercode.from_module(module(transform_fn=lambda m, b, c, a: b, output_fn=lambda p, a: p))
    with pytest.raises(ModelLoadError, match="not callable"):
        usercode.from_module(module(predict_fn=3))


def runtime(timeout_s: float = 5.0, **hooks: Any) -> Runtime:
    cfg = config.load({"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout_s)}, cpu_count=1)
    hooks.setdefault("model_fn", lambda model_dir: lambda x: x * 2)
    rt = Runtime(cfg, usercode.from_module(module(**hooks)))
    rt.load_model()
    rt.start_worker(0)
    return rt


def test_user_hooks_get_str_bodies_for_text_types_and_may_answer_a_tuple() -> None:
    seen: list[Any] = []

    def input_fn(body: Any, content_type: str) -> Any:
        seen.append((body, content_type))
        return 21

    def output_fn(prediction: Any, accept: str) -> Any:
        return f"{prediction}".encode(), "text/plain"

    rt = runtime(input_fn=input_fn, output_fn=output_fn)
    reply = rt.invoke(b"[1]", "application/json; charset=utf-8", "text/plain")
    assert (reply.status, reply.content_type, reply.body) == (200, "text/plain", b"42")
    assert seen == [("[1]", "application/json; charset=utf-8")]
    rt.invoke(b"\x01", "application/octet-stream", None)
    assert seen[-1] == (b"\x01", "application/octet-stream")


def test_errors_map_to_statuses_without_tracebacks() -> None:
    class Teapot(Exception):
        status_code = 418

    def predict_fn(data: Any, model: Any) -> Any:
        value = float(data.reshape(-1)[0])
        if value == 1:
            raise KeyError("missing")
        if value == 2:
            raise Teapot("short and stout")
        if value == 3:
            return object()
        return data

    rt = runtime(predict_fn=predict_fn)
    reply = rt.invoke(b"[1]", "application/json", None)
    assert reply.status == 500 and b'"error":"KeyError"' in reply.body
    assert rt.invoke(b"[2]", "application/json", None).status == 418
    reply = rt.invoke(b"[3]", "application/json", None)
    assert reply.status == 500 and b"TypeError" in reply.body
    assert rt.invoke(b"[4]", "application/json", None).status == 200


def test_output_fn_must_return_bytes_or_str() -> None:
    rt = runtime(output_fn=lambda prediction, accept: 12)
    reply = rt.invoke(b"[1]", "application/json", None)
    assert reply.status == 500 and b"output_fn returned int" in reply.body


def test_timeout_interrupts_user_code_that_catches_exception() -> None:
    def predict_fn(data: Any, model: Any) -> Any:
        try:
            time.sleep(10)
        except Exception:  # user code swallowing errors must not swallow the timeout
            return data
        return data

    rt = runtime(timeout_s=0.2, predict_fn=predict_fn)
    started = time.monotonic()
    reply = rt.invoke(b"[1]", "application/json", None)
    assert reply.status == 504 and time.monotonic() - started < 2
    # The timer is disarmed after each request: a later quick one is unaffected.
    rt2 = runtime(timeout_s=0.2)
    assert rt2.invoke(b"[1]", "application/json", None).status == 200


def test_torchscript_messages_lose_their_embedded_traceback() -> None:
    exc = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript, serialized code (most recent call last):\n  File x\n"
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied\n"
    )
    assert client_message(exc) == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"


# -- default model loading ---------------------------------------------------------------------


def test_default_model_fn_loads_torchscript_pickled_modules_and_state_dicts(tmp_path: Path) -> None:
    import torch

    net = torch.nn.Linear(3, 1)
    x = torch.ones(1, 3)
    expected = net(x).detach()
    (tmp_path / "ts").mkdir()
    torch.jit.script(net).save(str(tmp_path / "ts" / "model.pt"))  # type: ignore[no-untyped-call]
    (tmp_path / "pickled").mkdir()
    torch.save(net, tmp_path / "pickled" / "weights.pth")
    (tmp_path / "sd").mkdir()
    torch.save(net.state_dict(), tmp_path / "sd" / "model.pt")
    for folder in ("ts", "pickled"):
        model = defaults.model_fn(str(tmp_path / folder))
        torch.testing.assert_close(defaults.predict_fn(x, model), expected)
    with pytest.raises(ModelLoadError, match="state dict"):
        defaults.model_fn(str(tmp_path / "sd"))
    model = defaults.load_model(str(tmp_path / "sd"), lambda: torch.nn.Linear(3, 1))
    torch.testing.assert_close(defaults.predict_fn(x, model), expected)
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelLoadError, match="no model file"):
        defaults.model_fn(str(tmp_path / "none"))


def test_requirements_are_pip_installed_and_failures_name_the_file(tmp_path: Path) -> None:
    # Real pip, offline-safe: an empty requirements file installs nothing and succeeds.
    empty = tmp_path / "requirements.txt"
    empty.write_text("# nothing to install\n")
    usercode.install_requirements(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("--no-such-option\n")
    with pytest.raises(ModelLoadError, match=r"pip install -r .*bad\.txt failed"):
        usercode.install_requirements(bad)


def test_load_handler_installs_requirements_before_importing(tmp_path: Path) -> None:
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True)
    (code / "requirements.txt").write_text("--no-such-option\n")
    (code / "inference.py").write_text("raise AssertionError('imported before pip ran')\n")
    cfg = config.load({"SAGEMAKER_BASE_DIR": str(tmp_path)}, cpu_count=1)
    with pytest.raises(ModelLoadError, match="pip install"):
        usercode.load_handler(cfg)
    (code / "requirements.txt").unlink()
    with pytest.raises(ModelLoadError, match=r"importing .*inference\.py raised AssertionError"):
        usercode.load_handler(cfg)


def test_ready_table_remembers_that_every_worker_was_ready_once() -> None:
    # serve's exit status after a stop signal depends on it: 128+N only if never ready.
    table = ReadyTable(2)
    table.mark_ready(0, 11)
    assert not table.was_ready()
    table.mark_ready(1, 12)
    assert table.was_ready()
    table.clear(0)  # a worker died: not ready now, but the server did serve
    assert not table.all_ready() and table.was_ready()
    assert table.ready_pids() == [0, 12]
