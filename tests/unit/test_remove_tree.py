"""`commands._remove`: the launcher's own folders go, whatever they hold; nothing a link
points to is touched."""

from __future__ import annotations

import os
from pathlib import Path

from launcher import commands


def test_a_private_folder_is_removed_with_everything_in_it_but_links_are_not_followed(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "user"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "weights.pt").write_bytes(b"keep")
    (outside / "notes.txt").write_text("keep")
    private = tmp_path / "launcher-errors-1-abcd"
    deep = private / "progress" / "algo-1"
    deep.mkdir(parents=True)
    (deep / "rank-0.progress").write_bytes(b"\0" * 128)
    (private / "rank-0").mkdir()
    (private / "rank-0" / "error.json").write_text("{}")
    (private / "linked-folder").symlink_to(outside / "data", target_is_directory=True)
    (deep / "linked-file").symlink_to(outside / "notes.txt")
    (private / "dangling").symlink_to(tmp_path / "missing")
    empty = private / "empty"
    empty.mkdir()
    os.chmod(empty, 0o500)  # root removes it anyway; elsewhere the error is ignored

    commands._remove(str(private))

    assert not private.exists()
    assert (outside / "data" / "weights.pt").read_bytes() == b"keep"
    assert (outside / "notes.txt").read_text() == "keep"


def test_a_missing_folder_is_no_error(tmp_path: Path) -> None:
    commands._remove(str(tmp_path / "never-made"))
