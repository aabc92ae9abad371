"""Every broken tree of tests/data/bad-configs/ fails cleanly under the real `train`.

A case is a directory shaped like `/opt/ml` plus an `expected.txt`:

    # what is broken (free text)
    file: input/config/resourceconfig.json   the file the message must name (relative to the
                                             base directory; a name without `/`, such as
                                             SAGEMAKER_PROGRAM, must appear as is)
    key: current_host                        the key the message must name (optional)
    says: is not one of hosts                words the message must contain (optional)
    env: SAGEMAKER_PROGRAM=../x              extra environment for `train` (repeatable)
    args: --grace-period inf                 `train`'s command line (split on spaces)
    make: fifo input/config/x.json           built at test time (repeatable), see `make`

Things git cannot hold or that would be hostile to keep in the repository (FIFOs, symlinks,
5 MiB files, tarballs with absolute member names) are made at test time by `make:` lines.
`@BASE@` in the config files is replaced with the tree's base directory, and the other
`@NAME@` placeholders of `PLACEHOLDERS` with generated text (100 000 levels of nesting, a
200 KiB string, an integer of 5000 digits), inside a JSON string or as a raw value.

For each case, `train` must exit 2; print exactly one line on stderr, naming the file and
the key; print no Python traceback anywhere; write `output/failure` starting with that
message; change nothing else in the tree (every path, type, mode, size, content and link
target is hashed before and after); and leave its TMPDIR empty.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "tests" / "data" / "bad-configs"
TRAIN = REPO / ".venv" / "bin" / "train"
NOBODY = 65534

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Case:
    name: str
    why: str
    file: str
    key: str | None
    says: str | None
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    make: tuple[tuple[str, ...], ...] = ()

    @property
    def as_nobody(self) -> bool:
        return any(m[0] == "unreadable" for m in self.make)


def load_case(path: Path) -> Case:
    fields: dict[str, list[str]] = {}
    why = ""
    for line in (path / "expected.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            why = line.lstrip("# ")
            continue
        if line.strip():
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
    return Case(
        name=path.name,
        why=why,
        file=fields["file"][0],
        key=fields.get("key", [None])[0],
        says=fields.get("says", [None])[0],
        env=dict(e.split("=", 1) for e in fields.get("env", [])),
        args=tuple(fields.get("args", [""])[0].split()),
        make=tuple(tuple(m.split(" ")) for m in fields.get("make", [])),
    )


CASES = sorted((load_case(p) for p in CASES_DIR.iterdir() if p.is_dir()), key=lambda c: c.name)


# --- things made at test time ------------------------------------------------------------


def _tar(base: Path, kind: str) -> None:
    """submit/sourcedir.tar.gz: a good train.py plus one hostile member of `kind`."""
    archive = base / "submit" / "sourcedir.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    body = b"print('hello')\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        good = tarfile.TarInfo("train.py")
        good.size = len(body)
        tar.addfile(good, io.BytesIO(body))
        bad = tarfile.TarInfo(
            {
                "absolute": "/tmp/evil.py",
                "dotdot": "../evil.py",
                "symlink": "etc",
                "hardlink": "passwd",
                "fifo": "pipe",
                "truncated": "big.bin",
            }[kind]
        )
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "../../outside"
        elif kind == "fifo":
            bad.type = tarfile.FIFOTYPE
        payload = os.urandom(256 * 1024) if kind == "truncated" else body
        if bad.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            bad.size = len(payload)
            tar.addfile(bad, io.BytesIO(payload))
        else:
            tar.addfile(bad)
    data = buf.getvalue()
    # Half an archive still starts with valid headers (tarfile.is_tarfile accepts it).
    archive.write_bytes(data[: len(data) // 2] if kind == "truncated" else data)


def _big(path: Path) -> None:
    filler = "x" * (5 * 1024 * 1024)
    path.write_text(f'{{"sagemaker_program": "\\"train.py\\"", "filler": "{filler}"}}\n')


def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


DEEP = 100_000
# Generated text for the config files (see the module docstring). Those used inside a JSON
# string (`"x": "@LISTS@"`) must not contain an unescaped quote.
PLACEHOLDERS = {
    "@LISTS@": "[" * DEEP + "]" * DEEP,
    "@LISTS_65@": "[" * 65 + "]" * 65,  # one level over launcher.sagemaker.tree.MAX_NESTING
    "@OBJECTS@": '{"a":' * DEEP + "1" + "}" * DEEP,
    "@ESCAPED_OBJECTS@": '{\\"a\\":' * DEEP + "1" + "}" * DEEP,
    "@200K@": "x" * 200 * 1024,
    "@100K@": "x" * 100 * 1024,
    "@DIGITS@": "1" * 5000,
}


def make(base: Path, args: tuple[str, ...], outside: Path) -> None:
    """Apply one `make:` line to the tree at `base`."""
    what, *rest = args
    makers: dict[str, Callable[[], None]] = {
        "big": lambda: _big(base / rest[0]),
        "deep": lambda: _deep(base / rest[0]),
        "fifo": lambda: os.mkfifo(base / rest[0]),
        "symlink": lambda: os.symlink(rest[1].replace("@OUTSIDE@", str(outside)), base / rest[0]),
        "tar": lambda: _tar(base, rest[0]),
        "unreadable": lambda: (base / rest[0]).chmod(0),
    }
    if what != "tar":
        (base / rest[0]).parent.mkdir(parents=True, exist_ok=True)
    makers[what]()


# --- the tree ------------------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory every user can enter (the `unreadable` case runs `train` as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="bad-config-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build(case: Case, workdir: Path) -> Path:
    base = workdir / "opt" / "ml"
    shutil.copytree(CASES_DIR / case.name, base, ignore=shutil.ignore_patterns("expected.txt"))
    for config in (base / "input" / "config").glob("*.json"):
        if config.is_file():
            text = config.read_bytes().replace(b"@BASE@", str(base).encode())
            for name, value in PLACEHOLDERS.items():
                text = text.replace(name.encode(), value.encode())
            config.write_bytes(text)
    (base / "output").mkdir(exist_ok=True)
    (base / "code").mkdir(exist_ok=True)  # as SageMaker creates it; train must not need to
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "train.py").write_text("print('outside the code directory')\n")
    for args in case.make:
        make(base, args, outside)
    if case.as_nobody:
        (base / "output").chmod(0o777)
    return base


def fingerprint(base: Path) -> dict[str, str]:
    """Path -> type, mode, and content hash or link target, for every entry of the tree."""
    prints: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(base).as_posix()
            st = path.lstat()
            if path.is_symlink():
                prints[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                prints[rel] = f"dir {st.st_mode:o}"
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                prints[rel] = f"file {st.st_mode:o} {st.st_size} {digest}"
            else:
                prints[rel] = f"special {st.st_mode:o}"
    return prints


def _nobody_can_run_train() -> bool:
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(TRAIN), "-h"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


# --- the test -----------------------------------------------------------------------------


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_config_fails_cleanly(case: Case, workdir: Path, no_leaks: LeakWatch) -> None:
    base = build(case, workdir)
    argv = [str(TRAIN)]
    if case.as_nobody:
        if shutil.which("setpriv") is None or not _nobody_can_run_train():
            pytest.skip("cannot run train as nobody here (root reads a mode-000 file anyway)")
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    argv += case.args
    tmp = workdir / "tmp"
    tmp.mkdir(mode=0o777)
    tmp.chmod(0o777)  # `unreadable` runs train as nobody
    before = fingerprint(base)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "SAGEMAKER_BASE_DIR": str(base),
        "TMPDIR": str(tmp),
        **no_leaks.env(),
        **case.env,
    }
    proc = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, timeout=30)
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    shown = f"{case.name} ({case.why})\n--- stdout\n{stdout}--- stderr\n{stderr}"

    assert proc.returncode == 2, shown
    assert "Traceback" not in stdout + stderr, shown
    lines = stderr.splitlines()
    assert len(lines) == 1, shown
    line = lines[0]
    file = str(base / case.file) if "/" in case.file else case.file
    assert file in line, shown
    if case.key is not None:
        assert case.key in line.replace(file, ""), shown
    if case.says is not None:
        assert case.says in line, shown

    failure = base / "output" / "failure"
    assert failure.is_file(), shown
    first = failure.read_text(encoding="utf-8").splitlines()[0]
    assert first and first in line, f"failure file starts with {first!r}\n{shown}"
    after = fingerprint(base)
    after.pop("output/failure")
    assert after == before, "train changed the tree"
    assert not list(tmp.iterdir()), f"train left temporary files: {list(tmp.iterdir())}"
