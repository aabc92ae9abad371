"""`collectives.files`: SageMaker paths and the atomic, primary-only `save` (in one process)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import collectives
from collectives import env
from collectives.files import atomic_write, base_dir
from launcher import contract


@pytest.fixture
def rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Outside a launch by default; tests set RANK/WORLD_SIZE and refresh."""
    for name in (contract.RANK, contract.WORLD_SIZE):
        monkeypatch.delenv(name, raising=False)
    env.refresh()
    yield monkeypatch
    monkeypatch.undo()
    env.refresh()


def test_sagemaker_defaults() -> None:
    e: dict[str, str] = {}
    assert base_dir(e) == Path("/opt/ml")
    assert collectives.model_dir(e) == Path("/opt/ml/model")
    assert collectives.output_data_dir(e) == Path("/opt/ml/output/data")
    assert collectives.checkpoint_dir(e) == Path("/opt/ml/checkpoints")
    assert collectives.channel("train", e) == Path("/opt/ml/input/data/train")


def test_variables_and_base_dir_win() -> None:
    e = {"SAGEMAKER_BASE_DIR": "/b", "SM_CHANNEL_TRAIN-DATA": "/data/t", "SM_MODEL_DIR": "/m"}
    assert collectives.model_dir(e) == Path("/m")
    assert collectives.output_data_dir(e) == Path("/b/output/data")
    assert collectives.checkpoint_dir(e) == Path("/b/checkpoints")
    assert collectives.channel("train-data", e) == Path("/data/t")  # upper-cased, hyphen kept
    assert collectives.channel("eval", e) == Path("/b/input/data/eval")
    assert collectives.model_dir({"SM_MODEL_DIR": ""}) == Path("/opt/ml/model")


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_channel_names(name: str) -> None:
    with pytest.raises(ValueError, match="bad channel name"):
        collectives.channel(name, {})


def test_save_plain_object_and_script_module(tmp_path: Path, rank: pytest.MonkeyPatch) -> None:
    e = {"SM_MODEL_DIR": str(tmp_path / "model")}
    path = collectives.save({"step": 3, "w": torch.ones(2)}, "ckpt/state.pt", e)
    assert path == tmp_path / "model" / "ckpt" / "state.pt"
    assert torch.load(path)["step"] == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    net = torch.jit.script(torch.nn.Linear(3, 1))
    path = collectives.save(net, "model.pt", e)
    assert path is not None
    loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), net(x))
    src = tmp_path / "inference.py"
    src.write_text("def model_fn(d): ...\n")
    copied = collectives.save_file(src, "code/inference.py", e)
    assert copied is not None and copied.read_text() == src.read_text()
    leftovers = [p.name for p in (tmp_path / "model").rglob(".*")]
    assert leftovers == []


@pytest.mark.parametrize("name", ["/abs.pt", "../escape.pt", "a/../../b.pt"])
def test_save_refuses_names_outside_the_model_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path inside the model directory"):
        collectives.save(1, name, {"SM_MODEL_DIR": str(tmp_path)})


def test_only_the_primary_saves(tmp_path: Path, rank: pytest.MonkeyPatch) -> None:
    rank.setenv(contract.RANK, "1")
    rank.setenv(contract.WORLD_SIZE, "2")
    env.refresh()
    e = {"SM_MODEL_DIR": str(tmp_path)}
    assert collectives.save({"x": 1}, "model.pt", e) is None
    assert collectives.save_file(__file__, "code/x.py", e) is None
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def half_then_fail(f: object) -> None:
        f.write(b"new but incomplete")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]
