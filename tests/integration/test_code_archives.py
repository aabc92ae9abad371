"""`train` with a hostile `sagemaker_submit_directory` tarball: a real launcher, a real tree.

The archive is the CVE-2025-4517 reproducer's shape (tarfile's `data` filter in Python 3.11.7
lets it out): directories of 247-byte names, one-letter symlinks to each, a link through all
of them, an escape through that link to a folder beside the tree, a hard link through the
escape to a file there, and a regular member written through the hard link. The launcher must
refuse it with one line and exit 2, leave `code/` empty and the file outside untouched, and
leave nothing beside `code/`. A good archive with links inside the tree still runs.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import PYTHON, Launch, sm_tree

pytestmark = pytest.mark.timeout(60)

TRAIN = (PYTHON, "-m", "launcher", "train")
LONG = "d" * 247


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            member.size = len(data) if member.isreg() else 0
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return path


def exploit() -> list[tuple[tarfile.TarInfo, bytes]]:
    members: list[tarfile.TarInfo] = []
    path, steps = "", ""
    for step in "abcdefghijklmnop":
        members += [
            info(f"{path}{LONG}", tarfile.DIRTYPE),
            info(f"{path}{step}", tarfile.SYMTYPE, LONG),
        ]
        path, steps = f"{path}{LONG}/", f"{steps}{step}/"
    link = f"{steps}{'l' * 254}"
    members += [
        info(link, tarfile.SYMTYPE, "../" * 16),  # back to the code directory
        info("escape", tarfile.SYMTYPE, f"{link}/../../outside"),  # code/../../outside
        info("hl", tarfile.LNKTYPE, "escape/victim"),
        info("hl"),  # written through the hard link
    ]
    return [(m, b"PWNED\n") for m in members]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_cve_2025_4517_archive_is_refused_in_one_line(launch: Launch, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    src = write_archive(tmp_path / "sourcedir.tar.gz", exploit())
    base = sm_tree(tmp_path / "sm", "", {"sagemaker_submit_directory": json.dumps(str(src))})
    (base / "code" / "train.py").unlink()  # an empty code/: the archive is what fills it
    before = listing(base)
    job = launch(command=list(TRAIN), env={"SAGEMAKER_BASE_DIR": str(base)})
    assert job.wait() == 2, job.err
    failure = (base / "output" / "failure").read_text()
    shown = "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/" + "l" * 68 + "..." + "l" * 100
    first = f"{src}: {shown}: archive member goes through the symlink a"
    assert failure.splitlines()[0].startswith(first), failure
    assert "Traceback" not in job.out + job.err
    assert (outside / "victim").read_text() == "original\n"
    assert listing(base) == sorted([*before, "output/failure"])  # code/ empty, nothing beside


def test_a_good_archive_with_inside_links_runs(launch: Launch, tmp_path: Path) -> None:
    src = write_archive(
        tmp_path / "sourcedir.tar.gz",
        [
            (info(".", tarfile.DIRTYPE), b""),
            (info("./pkg", tarfile.DIRTYPE), b""),
            (info("./pkg/real.py"), b"VALUE = 'through a link'\n"),
            (info("./pkg/mod.py", tarfile.SYMTYPE, "real.py"), b""),
            (info("./lib", tarfile.SYMTYPE, "pkg"), b""),
            (info("./train.py"), b"from lib import mod\nprint(mod.VALUE)\n"),
        ],
    )
    base = sm_tree(tmp_path / "sm", "", {"sagemaker_submit_directory": json.dumps(str(src))})
    (base / "code" / "train.py").unlink()
    job = launch(command=list(TRAIN), env={"SAGEMAKER_BASE_DIR": str(base)})
    assert job.wait() == 0, job.err
    assert job.out_bytes == b"through a link\n"
    assert (base / "output" / "success").exists()
    assert sorted(p.name for p in base.iterdir()) == ["code", "input", "model", "output"]
