"""`collectives.record`: torch's error-file format, read back by torch's own `ProcessFailure`."""

from __future__ import annotations

import faulthandler
import json
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

import collectives
from launcher import contract


@pytest.fixture
def error_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "attempt_0" / "3" / "error.json"  # parent created by the writer
    monkeypatch.setenv(contract.ERROR_FILE, str(path))
    for name, value in {
        contract.RANK: "3",
        contract.LOCAL_RANK: "1",
        contract.WORLD_SIZE: "4",
        contract.HOST: "algo-2",
    }.items():
        monkeypatch.setenv(name, value)
    return path


def test_decorator_writes_torch_format_and_reraises(error_file: Path) -> None:
    @collectives.record
    def main(x: int) -> int:
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError):
        main(7)
    data = json.loads(error_file.read_text())
    msg = data["message"]
    assert msg["message"] == "KeyError: 'missing 7'"
    assert set(msg["extraInfo"]) == {"py_callstack", "timestamp"}
    assert msg["extraInfo"]["py_callstack"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing 7'" in msg["extraInfo"]["py_callstack"]
    assert int(msg["extraInfo"]["timestamp"]) > 1_600_000_000
    assert (msg["rank"], msg["local_rank"], msg["host"]) == (3, 1, "algo-2")
    # torch's reader (the torchrun agent's) accepts our file.
    failure = ProcessFailure(local_rank=1, pid=msg["pid"], exitcode=1, error_file=str(error_file))
    assert failure.message == msg
    assert failure.timestamp == int(msg["extraInfo"]["timestamp"])
    assert list(error_file.parent.iterdir()) == [error_file]  # no temporary file left


def test_decorator_passes_values_and_keeps_the_signature(error_file: Path) -> None:
    @collectives.record()
    def add(a: int, b: int = 2) -> int:
        return a + b

    assert add(1) == 3 and add.__name__ == "add"
    assert not error_file.exists()


def test_context_manager_records_and_reraises(error_file: Path) -> None:
    with pytest.raises(ZeroDivisionError), collectives.record():
        _ = 1 / 0
    assert json.loads(error_file.read_text())["message"]["message"].startswith(
        "ZeroDivisionError: division by zero"
    )


@pytest.mark.parametrize(
    "exc", [SystemExit(0), SystemExit(3), SystemExit("bye"), KeyboardInterrupt()]
)
def test_exits_and_interrupts_are_not_recorded(error_file: Path, exc: BaseException) -> None:
    with pytest.raises(type(exc)), collectives.record():
        raise exc
    assert not error_file.exists()


def test_nothing_is_written_without_the_variable(
    error_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ERROR_FILE, "")
    with pytest.raises(RuntimeError), collectives.record():
        raise RuntimeError("x")
    assert not error_file.parent.exists()


def test_an_unwritable_error_file_never_hides_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(contract.ERROR_FILE, str(blocker / "error.json"))  # parent is a file
    with pytest.raises(ValueError, match="real"), collectives.record():
        raise ValueError("real")
    assert "could not write error file" in capsys.readouterr().err


def test_a_malformed_rank_environment_still_records(
    error_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.RANK, "three")
    with pytest.raises(ValueError, match="real"), collectives.record():
        raise ValueError("real")
    msg = json.loads(error_file.read_text())["message"]
    assert "rank" not in msg and msg["message"] == "ValueError: real"


def test_record_turns_faulthandler_on(error_file: Path) -> None:
    faulthandler.disable()
    with collectives.record():
        assert faulthandler.is_enabled()
