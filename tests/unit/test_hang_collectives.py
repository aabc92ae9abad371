"""`collectives` counts progress: every collective, `progress()`, and `save` inside a section.

A world of one in this process (collectives are identities), with the contract's per-process
progress state reset for each test and a real progress file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import torch

import collectives
from collectives import env, files
from launcher import contract
from launcher.hangs.progress import ProgressReader, prepare
from launcher.hangs.verdict import RankProgress


@pytest.fixture
def progress_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "HOROVOD_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(contract, "_progress", None)
    monkeypatch.setattr(contract, "_progress_words", None)
    monkeypatch.setattr(contract, "_progress_tried", False)
    path = prepare(tmp_path / "progress", [0])[0].progress
    monkeypatch.setenv(contract.PROGRESS_FILE, str(path))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    env.refresh()
    yield path
    env.refresh()


def read(path: Path) -> RankProgress:
    with ProgressReader({0: path}) as reader:
        return reader.read()[0]


def test_every_collective_and_progress_count(progress_file: Path) -> None:
    x = torch.ones(2)
    collectives.all_reduce(x)
    collectives.all_reduce(x, "mean")
    collectives.broadcast(x)
    collectives.all_gather(x)
    collectives.barrier()
    with collectives.primary_first():  # one barrier on the primary, after the body
        pass
    collectives.progress()
    assert read(progress_file).count == 7


def test_save_writes_inside_a_section_and_leaving_it_counts(
    progress_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[RankProgress] = []
    real = files.atomic_write

    def observed(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
        seen.append(read(progress_file))
        real(path, write, mode)

    monkeypatch.setattr(files, "atomic_write", observed)
    saved = collectives.save({"w": torch.zeros(3)}, "model.pt")
    assert saved is not None and saved.exists()
    assert [(s.section_depth, s.section) for s in seen] == [(1, "save")]
    after = read(progress_file)
    assert not after.in_section and after.count == 1
    (progress_file.parent / "extra.txt").write_text("x")
    collectives.save_file(progress_file.parent / "extra.txt", "code/extra.txt")
    assert [(s.section_depth, s.section) for s in seen[1:]] == [(1, "save")]
    assert read(progress_file).count == 2


def test_a_failed_save_still_leaves_its_section(
    progress_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "atomic_write", broken)
    with pytest.raises(OSError, match="No space"):
        collectives.save({"w": 1}, "model.pt")
    assert not read(progress_file).in_section


def test_sections_nest(progress_file: Path) -> None:
    with collectives.section("checkpoint"):
        with collectives.section("inner"):
            inside = read(progress_file)
        assert read(progress_file).section_depth == 1
    assert (inside.section_depth, inside.section) == (2, "checkpoint")
    assert read(progress_file).section_depth == 0
