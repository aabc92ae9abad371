"""codesource: code into code/ only when it is empty, and tar members checked (contract §8).

Where the toolkit renames hostile members and extracts the rest with warnings, we refuse the
archive as a whole before writing anything (docs/compatibility.md); these tests assert that.
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path
from typing import Literal

import pytest

from launcher import codesource
from launcher.errors import ConfigError

HPS = Path("/opt/ml/input/config/hyperparameters.json")


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


SAFE = [
    member("train.py"),
    member("./train.py"),
    member("."),  # the archive root, as `tar -C src -czf x .` writes it
    member("./"),
    member("pkg/mod.py"),
    member("a:b.py"),  # POSIX: a colon is an ordinary character
    member("latest.py", tarfile.SYMTYPE, "pkg/mod.py"),
    member("pkg/up.py", tarfile.SYMTYPE, "../train.py"),  # still inside
    member("copy.py", tarfile.LNKTYPE, "train.py"),
]
UNSAFE = [
    (member("/etc/passwd"), "absolute path"),
    (member("\\evil.py"), "absolute path"),
    (member("../evil.py"), "'..'"),
    (member("a/../../evil.py"), "'..'"),
    (member("a\\..\\..\\evil.py"), "'..'"),
    (member("etc", tarfile.SYMTYPE, "/etc"), "links outside"),
    (member("up", tarfile.SYMTYPE, "../.."), "links outside"),
    (member("pkg/up", tarfile.SYMTYPE, "../../x"), "links outside"),
    (member("passwd", tarfile.LNKTYPE, "../../etc/passwd"), "links outside"),
    (member("pipe", tarfile.FIFOTYPE), "device or FIFO"),
    (member("tty", tarfile.CHRTYPE), "device or FIFO"),
    (member("disk", tarfile.BLKTYPE), "device or FIFO"),
]


@pytest.mark.parametrize("info", SAFE, ids=[m.name for m in SAFE])
def test_safe_members(tmp_path: Path, info: tarfile.TarInfo) -> None:
    assert codesource.check_member(info, tmp_path / "code") is None


@pytest.mark.parametrize(("info", "why"), UNSAFE, ids=[m.name for m, _ in UNSAFE])
def test_unsafe_members(tmp_path: Path, info: tarfile.TarInfo, why: str) -> None:
    problem = codesource.check_member(info, tmp_path / "code")
    assert problem is not None and why in problem


def archive(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: Literal["w:gz", "w"] = "w:gz"
) -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_extract_like_tar_c_dot(tmp_path: Path) -> None:
    src = archive(
        tmp_path / "src.tar.gz",
        [
            (member(".", tarfile.DIRTYPE), b""),
            (member("./train.py"), b"print(1)\n"),
            (member("./pkg", tarfile.DIRTYPE), b""),
            (member("./pkg/mod.py"), b"X = 1\n"),
            (member("./latest.py", tarfile.SYMTYPE, "pkg/mod.py"), b""),
        ],
    )
    dest = tmp_path / "code"
    dest.mkdir(mode=0o750)
    codesource.extract_tar(src, dest, str(src))
    assert (dest / "train.py").read_text() == "print(1)\n"
    assert (dest / "latest.py").resolve() == (dest / "pkg" / "mod.py").resolve()
    assert dest.stat().st_mode & 0o777 == 0o750  # the root member did not touch code/


def test_a_hostile_archive_is_refused_whole_before_writing(tmp_path: Path) -> None:
    src = archive(
        tmp_path / "src.tar.gz",
        [(member("train.py"), b"print(1)\n"), (member("../evil.py"), b"boom\n")],
    )
    dest = tmp_path / "code"
    dest.mkdir()
    with pytest.raises(ConfigError, match=r"\.\./evil\.py: archive member contains") as e:
        codesource.extract_tar(src, dest, str(src))
    assert e.value.path == str(src) and e.value.key == "../evil.py"
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.py").exists()


def test_a_truncated_archive(tmp_path: Path) -> None:
    src = archive(tmp_path / "src.tar.gz", [(member("big.bin"), bytes(range(256)) * 2048)])
    src.write_bytes(src.read_bytes()[:600])
    with pytest.raises(ConfigError, match="cannot be extracted"):
        codesource.extract_tar(src, tmp_path / "code", str(src))


def test_an_uncompressed_tar_is_accepted(tmp_path: Path) -> None:
    """The toolkit opens local archives as gzip only; we accept any tar tarfile reads."""
    src = archive(tmp_path / "src.tar", [(member("train.py"), b"print(1)\n")], mode="w")
    codesource.prepare(tmp_path / "code", str(src), HPS)
    assert (tmp_path / "code" / "train.py").is_file()


# --- prepare ------------------------------------------------------------------------------


def test_code_not_empty_is_left_alone(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "baked.py").write_text("")
    (tmp_path / "submit").mkdir()
    (tmp_path / "submit" / "train.py").write_text("")
    what = codesource.prepare(code, str(tmp_path / "submit"), HPS)
    assert "not empty" in what
    assert [p.name for p in code.iterdir()] == ["baked.py"]


def test_no_source_is_nothing_to_do(tmp_path: Path) -> None:
    code = tmp_path / "code"
    assert "empty" in codesource.prepare(code, str(code), HPS)
    assert code.is_dir() and not any(code.iterdir())


def test_directory_copy_follows_links_like_the_toolkit(tmp_path: Path) -> None:
    submit = tmp_path / "submit"
    (submit / "pkg").mkdir(parents=True)
    (submit / "train.py").write_text("print(1)\n")
    (tmp_path / "shared.py").write_text("S = 1\n")
    (submit / "pkg" / "shared.py").symlink_to(tmp_path / "shared.py")  # points outside
    code = tmp_path / "code"
    codesource.prepare(code, str(submit), HPS)
    copied = code / "pkg" / "shared.py"
    assert not copied.is_symlink() and copied.read_text() == "S = 1\n"


def test_a_dangling_link_in_the_directory_names_the_hyperparameter(tmp_path: Path) -> None:
    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "gone.py").symlink_to(tmp_path / "nowhere.py")
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "code", str(submit), HPS)
    assert (e.value.path, e.value.key) == (str(HPS), "sagemaker_submit_directory")
    assert "\n" not in str(e.value)


def test_a_single_file_is_copied_in(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    codesource.prepare(tmp_path / "code", str(tmp_path / "train.py"), HPS)
    assert (tmp_path / "code" / "train.py").read_text() == "print(1)\n"


def test_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as e:
        codesource.prepare(tmp_path / "code", str(tmp_path / "nowhere"), HPS)
    assert e.value.key == "sagemaker_submit_directory"


@pytest.mark.skipif(importlib.util.find_spec("boto3") is not None, reason="boto3 is installed")
def test_s3_without_boto3_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs boto3") as e:
        codesource.prepare(tmp_path / "code", "s3://bucket/key/sourcedir.tar.gz", HPS)
    assert e.value.key == "sagemaker_submit_directory"
    assert "ml-launcher[s3]" in str(e.value)
