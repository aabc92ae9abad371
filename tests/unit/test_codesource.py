"""codesource: code into code/ only when it is empty, and tar members checked (contract §8).

Where the toolkit renames hostile members and extracts the rest with warnings, we refuse the
archive as a whole before writing anything (docs/compatibility.md); these tests assert that.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

import pytest

from launcher.errors import ConfigError
from launcher.sagemaker import codesource

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
def test_safe_members(info: tarfile.TarInfo) -> None:
    assert codesource.check_member(info) is None


@pytest.mark.parametrize(("info", "why"), UNSAFE, ids=[m.name for m, _ in UNSAFE])
def test_unsafe_members(info: tarfile.TarInfo, why: str) -> None:
    problem = codesource.check_member(info)
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


# --- hostile archives: chains of members that each look harmless --------------------------
#
# Each archive is extracted through `prepare` (the path `train` takes) into <tmp>/job/code;
# <tmp>/sentinel is where the escapes aim and must stay empty, <tmp>/job (where the private
# extraction directory goes) must be byte for byte as before, and the error is one exact line.

HINT = "the archive comes from sagemaker_submit_directory; rebuild it without that member"
WHOLE = (
    "the archive comes from sagemaker_submit_directory; put a code tree this big in the image,"
    " or pass a directory"
)
LONG = "d" * 247  # the CVE-2025-4517 reproducer's component: 16 of them run past PATH_MAX


def d(name: str) -> tarfile.TarInfo:
    return member(name, tarfile.DIRTYPE)


def sym(name: str, target: str) -> tarfile.TarInfo:
    return member(name, tarfile.SYMTYPE, target)


def hard(name: str, target: str) -> tarfile.TarInfo:
    return member(name, tarfile.LNKTYPE, target)


def cve_2025_4517_chain() -> list[tarfile.TarInfo]:
    """The published reproducer's shape: directories of 247-byte names, one-letter symlinks
    to each, a link through all of them whose realpath runs past PATH_MAX, an escape through
    it and a hard link through the escape (tarfile's `data` filter in 3.11.7 lets it out)."""
    members: list[tarfile.TarInfo] = []
    path, step_path = "", ""
    for step in "abcdefghijklmnop":
        members += [d(f"{path}{LONG}"), sym(f"{path}{step}", LONG)]
        path, step_path = f"{path}{LONG}/", f"{step_path}{step}/"
    link = f"{step_path}{'l' * 254}"
    members.append(sym(link, "../" * 16))
    members.append(sym("escape", f"{link}/../../sentinel"))
    members.append(hard("sentinel_link", "escape/planted"))
    return members


# (id, members, the member the error names, what it says); "@S" is the sentinel's path.
HOSTILE: list[tuple[str, list[tarfile.TarInfo], str, str]] = [
    (
        "link-up-then-through-it",
        [d("a"), sym("a/b", "../.."), member("a/b/c/escape")],
        "a/b",
        "links outside the code directory (../..)",
    ),
    (
        "two-harmless-links-escape-together",  # y -> sub/.. is the root; x -> y/.. its parent
        [d("sub"), sym("x", "y/.."), sym("y", "sub/.."), member("ok.py")],
        "x",
        "links outside the code directory (y/..)",
    ),
    (
        "two-harmless-links-then-a-file-through-them",
        [d("sub"), sym("x", "y/.."), sym("y", "sub/.."), member("x/sentinel/pwned")],
        "x/sentinel/pwned",
        "goes through the symlink x",
    ),
    (
        "two-harmless-links-other-order",
        [d("sub"), sym("y", "sub/.."), sym("x", "y/.."), member("ok.py")],
        "x",
        "links outside the code directory (y/..)",
    ),
    (
        "link-retargeted-by-a-later-link",  # p -> q/r is inside until q points up
        [sym("p", "q/r"), d("z"), sym("q", "z/../..")],
        "q",
        "links outside the code directory (z/../..)",
    ),
    (
        "cve-2025-4517-long-names",
        cve_2025_4517_chain(),
        # a/b/.../p/lll...: 286 characters, shown as its first and last 100
        f"a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/{'l' * 68}...{'l' * 100}",
        "goes through the symlink a",
    ),
    (
        "symlink-then-hardlink-through-it",
        [d("sub"), member("sub/f.py"), sym("s", "sub"), hard("h", "s/f.py")],
        "h",
        "links through the symlink s",
    ),
    (
        "hardlink-to-a-symlink",
        [member("f.py"), sym("s", "f.py"), hard("h", "s")],
        "h",
        "is a hard link to s, which is a symlink",
    ),
    (
        "hardlink-to-a-later-member",
        [hard("h", "later.py"), member("later.py")],
        "h",
        "is a hard link to later.py, which is not a member before it",
    ),
    (
        "directory-replaced-by-a-symlink",
        [d("pkg"), member("pkg/a.py"), sym("pkg", "other"), member("pkg/b.py")],
        "pkg",
        "would replace the earlier directory pkg",
    ),
    (
        "directory-replaced-by-an-escaping-symlink",
        [d("pkg"), sym("pkg", "../../sentinel"), member("pkg/pwned")],
        "pkg",
        "would replace the earlier directory pkg",
    ),
    (
        "directory-member-over-a-symlink",
        [d("other"), sym("pkg", "other"), d("pkg"), member("pkg/a.py")],
        "pkg",
        "would replace the earlier symlink pkg",
    ),
    (
        "file-overwrites-an-earlier-symlink",
        [member("inside.py"), sym("x", "inside.py"), member("x")],
        "x",
        "would replace the earlier symlink x",
    ),
    (
        "file-under-a-symlink",
        [d("sub"), sym("link", "sub"), member("link/f.py")],
        "link/f.py",
        "goes through the symlink link",
    ),
    (
        "file-under-a-file",
        [member("a"), member("a/b")],
        "a/b",
        "goes through a, which is not a directory",
    ),
    ("absolute-symlink", [sym("abs", "@S")], "abs", "links outside the code directory (@S)"),
    (
        "dotdot-symlink",
        [sym("up", "../../sentinel")],
        "up",
        "links outside the code directory (../../sentinel)",
    ),
    (
        "hardlink-outside",
        [hard("h", "../../sentinel/x")],
        "h",
        "links outside the code directory (../../sentinel/x)",
    ),
    ("absolute-hardlink", [hard("h", "@S/x")], "h", "links outside the code directory (@S/x)"),
    (
        "root-replaced-by-a-symlink",
        [sym(".", "sub")],
        ".",
        "would replace the code directory itself",
    ),
    (
        "symlink-loop",
        [sym("a", "b"), sym("b", "a")],
        "b",
        "is a symlink that cannot be resolved in 256 steps (a)",
    ),
    (
        "component-over-name-max",
        [member("x" * 256)],
        "x" * 100 + "..." + "x" * 100,
        "has a path component longer than 255 bytes",
    ),
    (
        "newline-in-name",
        [member("a\n/../x")],
        "a\\n/../x",
        "contains '..'",
    ),
]


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under `root`, links not followed: (kind, mode, content or link target)."""
    found: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode, "")
            else:
                found[rel] = ("file", st.st_mode, path.read_bytes().hex())
    return found


def hostile_setup(tmp_path: Path, members: list[tarfile.TarInfo], code: str) -> Path:
    """The archive, <tmp>/sentinel, and <tmp>/job/code absent or empty as `code` says."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    job = tmp_path / "job"
    job.mkdir()
    (job / "neighbour.txt").write_text("beside code/\n")
    if code == "empty":
        (job / "code").mkdir(mode=0o751)
    for info in members:
        info.linkname = info.linkname.replace("@S", str(sentinel))
    return archive(tmp_path / "src.tar.gz", [(m, b"boom\n") for m in members])


@pytest.mark.parametrize("code", ["absent", "empty"])
@pytest.mark.parametrize(
    ("members", "name", "problem"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_a_hostile_archive_is_refused_and_changes_nothing(
    tmp_path: Path, code: str, members: list[tarfile.TarInfo], name: str, problem: str
) -> None:
    src = hostile_setup(tmp_path, [copy.copy(m) for m in members], code)
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    problem = problem.replace("@S", str(tmp_path / "sentinel"))
    assert str(e.value) == f"{src}: {name}: archive member {problem} ({HINT})"
    assert (e.value.path, e.value.key) == (str(src), name)
    assert tree(tmp_path) == before  # code/ as it was, no private directory, sentinel empty
    assert not any((tmp_path / "sentinel").iterdir())


def test_the_cve_2025_4517_reproducer_cannot_overwrite_a_file_outside(tmp_path: Path) -> None:
    """The whole exploit: the chain's escape, a hard link through it to a file outside, and a
    regular member of the same name written through that hard link (3.11.7's tarfile with
    the `data` filter, as this module used it before, overwrote the file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    members = cve_2025_4517_chain()[:-2]
    members[-1:] = [members[-1], sym("escape", f"{members[-1].name}/../../outside")]
    members += [hard("hl", "escape/victim"), member("hl")]
    src = archive(tmp_path / "src.tar.gz", [(m, b"PWNED\n") for m in members])
    with pytest.raises(ConfigError, match="goes through the symlink a "):
        codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    assert (outside / "victim").read_text() == "original\n"
    assert set(tmp_path.iterdir()) == {outside, src}  # no code/, no private directory


def test_extract_tar_refuses_a_code_directory_that_is_not_empty(tmp_path: Path) -> None:
    src = archive(tmp_path / "src.tar.gz", [(member("train.py"), b"print(1)\n")])
    code = tmp_path / "code"
    code.mkdir()
    (code / "baked.py").write_text("")
    with pytest.raises(ConfigError) as e:
        codesource.extract_tar(src, code, str(src))
    assert str(e.value) == (
        f"{src}: cannot be extracted: {code} is not empty"
        " (an archive is only extracted into an empty code directory)"
    )
    assert {p.name for p in tmp_path.iterdir()} == {"src.tar.gz", "code"}
    assert [p.name for p in code.iterdir()] == ["baked.py"]


def test_the_cve_chain_member_names_stay_under_path_max_here(tmp_path: Path) -> None:
    """The reproducer's directories (16 x 248 bytes) fit under <tmp>/job/code, so the test
    above reaches the link through them rather than a path-length refusal."""
    assert len(str(tmp_path / "job" / "code")) + 1 + 16 * 248 < 4095


def test_a_path_over_path_max_is_refused(tmp_path: Path) -> None:
    code = tmp_path / "job" / "code"
    name = "/".join(["p" * 200] * 21)  # 4220 bytes: over PATH_MAX under code/
    src = hostile_setup(tmp_path, [member(name)], "empty")
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as e:
        codesource.prepare(code, str(src), HPS)
    length = len(str(code)) + 1 + len(name)
    shown = codesource._shown(name)
    assert str(e.value) == (
        f"{src}: {shown}: archive member would have a path of {length} bytes,"
        f" over the limit of 4095 ({HINT})"
    )
    assert tree(tmp_path) == before


def test_a_good_archive_with_inside_links_is_extracted(tmp_path: Path) -> None:
    src = archive(
        tmp_path / "src.tar.gz",
        [
            (member("./train.py"), b"print(1)\n"),
            (d("./pkg"), b""),
            (member("pkg/mod.py"), b"X = 1\n"),
            (sym("latest.py", "pkg/mod.py"), b""),
            (sym("pkg/up.py", "../train.py"), b""),
            (sym("pkg/here", "."), b""),
            (sym("alias", "pkg"), b""),  # a link to a directory ...
            (d("pkg/deep"), b""),
            (sym("pkg/deep/x.py", "../../alias/here/mod.py"), b""),  # ... used by another link
            (sym("dangling.py", "pkg/not-yet.py"), b""),  # dangling, but inside
            (d("a/b"), b""),
            (sym("s", "a/b"), b""),
            (sym("x.py", "s/../../pkg/mod.py"), b""),  # `..` after a link: a/b/../.. is code/
            (hard("copy.py", "train.py"), b""),
            (member("train.py"), b"print(2)\n"),  # a later copy of a file replaces it
        ],
    )
    code = tmp_path / "job" / "code"
    codesource.prepare(code, str(src), HPS)
    assert (code / "train.py").read_text() == "print(2)\n"
    assert (code / "copy.py").read_text() == "print(1)\n"  # linked to the first train.py
    assert (code / "latest.py").read_text() == "X = 1\n"
    assert (code / "pkg" / "up.py").read_text() == "print(2)\n"
    assert (code / "pkg" / "deep" / "x.py").read_text() == "X = 1\n"
    assert os.readlink(code / "dangling.py") == "pkg/not-yet.py"
    assert (code / "x.py").read_text() == "X = 1\n"
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["code"]  # nothing left


def test_modes_follow_the_data_filter_and_code_keeps_its_own(tmp_path: Path) -> None:
    run, setuid, private = member("run.sh"), member("su.py"), member("notes.txt")
    run.mode, setuid.mode, private.mode = 0o775, 0o4777, 0o400
    src = archive(
        tmp_path / "src.tar.gz",
        [(d("."), b""), (run, b"#!/bin/sh\n"), (setuid, b"x\n"), (private, b"n\n")],
    )
    code = tmp_path / "code"
    code.mkdir(mode=0o750)
    codesource.prepare(code, str(src), HPS)
    mode = {p.name: p.stat().st_mode & 0o7777 for p in code.iterdir()}
    assert mode == {"run.sh": 0o755, "su.py": 0o755, "notes.txt": 0o600}
    assert code.stat().st_mode & 0o777 == 0o750


def test_a_refused_archive_removes_the_parents_it_made(tmp_path: Path) -> None:
    src = hostile_setup(tmp_path, [sym("up", "../../sentinel")], "absent")
    code = tmp_path / "job" / "new" / "deeper" / "code"
    with pytest.raises(ConfigError, match="links outside"):
        codesource.prepare(code, str(src), HPS)
    assert not (tmp_path / "job" / "new").exists()


def test_a_failure_after_extraction_leaves_nothing(tmp_path: Path) -> None:
    """A problem found only on disk (here, a FIFO planted during extraction) is refused like
    one found in the headers: code/ stays absent and the private directory goes."""
    src = archive(tmp_path / "src.tar.gz", [(member("train.py"), b"print(1)\n")])
    real_write = codesource._write_member

    def write_then_plant(tar: tarfile.TarFile, info: tarfile.TarInfo, root_fd: int) -> None:
        real_write(tar, info, root_fd)
        os.mkfifo("pipe", dir_fd=root_fd)

    (tmp_path / "job").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codesource, "_write_member", write_then_plant)
        with pytest.raises(ConfigError) as e:
            codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    assert (
        str(e.value) == f"{src}: pipe: archive member is a special file after extraction ({HINT})"
    )
    assert list((tmp_path / "job").iterdir()) == []


@pytest.mark.parametrize("code", ["absent", "empty"])
def test_an_interrupt_while_moving_in_puts_everything_back(tmp_path: Path, code: str) -> None:
    src = archive(
        tmp_path / "src.tar.gz",
        [(member("a.py"), b"a\n"), (member("b.py"), b"b\n"), (member("c.py"), b"c\n")],
    )
    (tmp_path / "job").mkdir()
    if code == "empty":
        (tmp_path / "job" / "code").mkdir()
    before = tree(tmp_path)
    real_rename = os.rename
    calls: list[str] = []

    def rename_once_then_interrupt(*args: Any, **kwargs: Any) -> None:
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "rename", rename_once_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    assert len(calls) == 3  # one moved in, the interrupted one, the first moved back
    assert tree(tmp_path) == before


def test_an_interrupt_while_extracting_leaves_nothing(tmp_path: Path) -> None:
    src = archive(tmp_path / "src.tar.gz", [(member("a.py"), b"a\n"), (member("b.py"), b"b\n")])
    (tmp_path / "job").mkdir()
    real_write = codesource._write_member

    def interrupt_second(tar: tarfile.TarFile, info: tarfile.TarInfo, root_fd: int) -> None:
        if info.name == "b.py":
            raise KeyboardInterrupt
        real_write(tar, info, root_fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codesource, "_write_member", interrupt_second)
        with pytest.raises(KeyboardInterrupt):
            codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    assert list((tmp_path / "job").iterdir()) == []


# --- the walk after extraction, on its own --------------------------------------------------


def test_verify_refuses_what_the_headers_cannot_show(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.py").write_text("")
    (root / "sub" / "in").symlink_to("../sub/ok.py")
    codesource._verify(str(root))  # all inside

    (root / "sub" / "out").symlink_to("../../elsewhere")
    with pytest.raises(codesource._Refused) as e:
        codesource._verify(str(root))
    assert (e.value.name, e.value.problem) == (
        "sub/out",
        "links outside the code directory (../../elsewhere)",
    )
    (root / "sub" / "out").unlink()

    (tmp_path / "outside.txt").write_text("secret\n")
    os.link(tmp_path / "outside.txt", root / "sub" / "linked.txt")
    with pytest.raises(codesource._Refused) as e:
        codesource._verify(str(root))
    assert (e.value.name, e.value.problem) == (
        "sub/linked.txt",
        "is hard-linked to a file outside the code directory",
    )
    os.link(root / "sub" / "linked.txt", root / "twin.txt")  # two names inside: still one out
    with pytest.raises(codesource._Refused):
        codesource._verify(str(root))
    (tmp_path / "outside.txt").unlink()
    codesource._verify(str(root))  # both names are inside now


# --- bounds ---------------------------------------------------------------------------------


def test_too_many_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codesource, "MAX_MEMBERS", 2)
    src = archive(tmp_path / "src.tar.gz", [(member(f"{i}.py"), b"") for i in range(3)])
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "code", str(src), HPS)
    assert str(e.value) == f"{src}: has more than 2 members ({WHOLE})"
    assert not (tmp_path / "code").exists()


def test_too_many_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codesource, "MAX_BYTES", 1000)
    src = archive(tmp_path / "src.tar.gz", [(member("a"), b"x" * 600), (member("b"), b"x" * 600)])
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "code", str(src), HPS)
    assert str(e.value) == f"{src}: holds more than 1000 bytes of files ({WHOLE})"
    assert not (tmp_path / "code").exists()


def test_a_huge_header_is_not_read_into_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codesource, "MAX_HEADER_BYTES", 64 * 1024)
    info = member("train.py")
    info.pax_headers = {"comment": "x" * 100_000}
    src = archive(tmp_path / "src.tar.gz", [(info, b"print(1)\n")])
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "code", str(src), HPS)
    assert str(e.value) == f"{src}: has headers of more than 65536 bytes ({WHOLE})"
    assert not (tmp_path / "code").exists()


def test_an_archive_bigger_than_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free blocks come from statvfs: the one fake here is a nearly full file system."""
    real = os.statvfs(tmp_path)
    full = os.statvfs_result((4096, 4096, real.f_blocks, 1, 1, 1000, 1000, 1000, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda _: full)
    src = archive(tmp_path / "src.tar.gz", [(member("a"), b"x" * 5000)])
    with pytest.raises(ConfigError) as e:
        codesource.prepare(tmp_path / "job" / "code", str(src), HPS)
    assert str(e.value) == f"{src}: needs 8192 bytes but {tmp_path} has 4096 free ({WHOLE})"
    assert list(tmp_path.iterdir()) == [src]


def test_a_folder_that_refuses_the_private_directory_puts_it_inside_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """code/ writable, its folder not (a read-only layer): the private directory goes inside
    code/, hidden, and leaves nothing there. Tests run as root, so the refusal is faked."""
    src = archive(tmp_path / "src.tar.gz", [(d("pkg"), b""), (member("pkg/m.py"), b"M = 1\n")])
    code = tmp_path / "job" / "code"
    code.mkdir(parents=True)
    real_mkdtemp = tempfile.mkdtemp
    places: list[str] = []

    def mkdtemp(prefix: str, dir: Path) -> str:
        places.append(str(dir))
        if Path(dir) == tmp_path / "job":
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    codesource.prepare(code, str(src), HPS)
    assert places == [str(tmp_path / "job"), str(code)]
    assert set(tree(code)) == {"pkg", "pkg/m.py"}  # no hidden private directory left
    assert (code / "pkg" / "m.py").read_text() == "M = 1\n"
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["code"]
