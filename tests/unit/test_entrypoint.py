"""entrypoint: name validation (contract §7.2), kind detection (§7.3), install and run argv.

Pure apart from small code directories under tmp_path; one test runs the COMMAND argv for
real through /bin/sh to prove that no argument is parsed by the shell.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.sagemaker import entrypoint
from launcher.sagemaker.entrypoint import Kind
from tests.helpers.procwatch import LeakWatch
from tests.oracle.trees import SHELL_NASTIES

SOURCE = "/opt/ml/input/config/hyperparameters.json: sagemaker_program"


def code(tmp_path: Path, *files: str) -> Path:
    for rel in files:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("print('hi')\n")
    return tmp_path


# --- §7.2 names ---------------------------------------------------------------------------

VALID = ["train.py", "bin/train.sh", "a+b.py", "_x.py", ".hidden.py", "run", "v1.2/train-3.py"]
INVALID = [
    "-x.py",  # read as an option
    "/abs.py",  # absolute
    "../x.py",
    "a/../b.py",
    "./x.py",
    "a//b.py",  # empty segment
    "a/",
    "x y.py",
    "x;y",
    "$(id)",
    "é.py",
    "a\\b.py",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(tmp_path: Path, name: str) -> None:
    entry = entrypoint.resolve(name, code(tmp_path, name), SOURCE)
    assert entry.name == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_name_file_and_key(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a relative path inside the code directory") as e:
        entrypoint.resolve(name, tmp_path, SOURCE)
    assert e.value.path == "/opt/ml/input/config/hyperparameters.json"
    assert e.value.key == "sagemaker_program"


def test_invalid_characters_are_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"characters ' ;'"):
        entrypoint.resolve("train.py; rm -rf /", tmp_path, SOURCE)


def test_empty_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no entry point is configured"):
        entrypoint.resolve("", tmp_path, SOURCE)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        entrypoint.resolve("train.py", tmp_path, SOURCE)


def test_symlink_leaving_the_code_directory(tmp_path: Path) -> None:
    outside = code(tmp_path, "outside/train.py") / "outside" / "train.py"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "train.py").symlink_to(outside)
    with pytest.raises(ConfigError, match="resolves outside"):
        entrypoint.resolve("train.py", code_dir, SOURCE)


def test_symlink_inside_the_code_directory_is_fine(tmp_path: Path) -> None:
    code(tmp_path, "real/train.py")
    (tmp_path / "train.py").symlink_to("real/train.py")
    assert entrypoint.resolve("train.py", tmp_path, SOURCE).kind is Kind.PYTHON_PROGRAM


def test_a_directory_runs_only_with_main(tmp_path: Path) -> None:
    code(tmp_path, "app.py/__init__.py")
    with pytest.raises(ConfigError, match="is a directory"):
        entrypoint.resolve("app.py", tmp_path, SOURCE)
    code(tmp_path, "app.py/__main__.py")  # `python -- app.py` runs it, as under the toolkit
    assert entrypoint.resolve("app.py", tmp_path, SOURCE).kind is Kind.PYTHON_PROGRAM


def test_source_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        entrypoint.resolve("../x.py", tmp_path, "environment: SAGEMAKER_PROGRAM")
    assert str(e.value).startswith("environment: SAGEMAKER_PROGRAM: entry point '../x.py'")


# --- §7.3 kinds ---------------------------------------------------------------------------

KINDS = [
    ("train.sh", ("train.sh", "setup.py"), Kind.COMMAND),  # .sh first, even in a package
    ("train.py", ("train.py", "setup.py"), Kind.PYTHON_PACKAGE),  # setup.py beats .py
    ("train.py", ("train.py",), Kind.PYTHON_PROGRAM),
    ("run", ("run",), Kind.COMMAND),
    ("train", ("train", "setup.py"), Kind.PYTHON_PACKAGE),
]


@pytest.mark.parametrize(("name", "files", "kind"), KINDS)
def test_kind_detection(tmp_path: Path, name: str, files: tuple[str, ...], kind: Kind) -> None:
    assert entrypoint.resolve(name, code(tmp_path, *files), SOURCE).kind is kind


def test_pyproject_with_a_project_table_is_a_package(tmp_path: Path) -> None:
    """Our extension: the toolkit only knows setup.py (docs/compatibility.md)."""
    code(tmp_path, "train.py")
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert entrypoint.resolve("train.py", tmp_path, SOURCE).kind is Kind.PYTHON_PROGRAM
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "trainer"\n')
    assert entrypoint.resolve("train.py", tmp_path, SOURCE).kind is Kind.PYTHON_PACKAGE


# --- install and run argv -----------------------------------------------------------------


def test_install_commands(tmp_path: Path) -> None:
    py = "/venv/bin/python"
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    program = entrypoint.resolve("train.py", code(tmp_path / "p", "train.py"), SOURCE)
    assert entrypoint.install_commands(program, py) == []
    code(tmp_path / "p", "requirements.txt")
    assert entrypoint.install_commands(program, py) == [[*pip, "-r", "requirements.txt"]]
    package = entrypoint.resolve("train.py", code(tmp_path / "k", "train.py", "setup.py"), SOURCE)
    assert entrypoint.install_commands(package, py) == [[*pip, "."]]
    code(tmp_path / "k", "requirements.txt")
    assert entrypoint.install_commands(package, py) == [[*pip, ".", "-r", "requirements.txt"]]
    # Shell entry points never install requirements.txt (sagemaker-python-sdk #911).
    command = entrypoint.resolve(
        "run.sh", code(tmp_path / "c", "run.sh", "requirements.txt"), SOURCE
    )
    assert entrypoint.install_commands(command, py) == []


def test_command_forms(tmp_path: Path) -> None:
    py = "/venv/bin/python"
    program = entrypoint.resolve("src/train.py", code(tmp_path / "p", "src/train.py"), SOURCE)
    assert entrypoint.command(program, py, ["--a", "1"]) == [py, "--", "src/train.py", "--a", "1"]
    package = entrypoint.resolve(
        "trainer.py", code(tmp_path / "k", "trainer.py", "setup.py"), SOURCE
    )
    assert entrypoint.command(package, py, ["-x", "1"]) == [py, "-m", "trainer", "-x", "1"]
    command = entrypoint.resolve("bin/run.sh", code(tmp_path / "c", "bin/run.sh"), SOURCE)
    argv = entrypoint.command(command, py, ["$HOME"])
    assert argv == ["/bin/sh", "-c", entrypoint.COMMAND_SCRIPT, "./bin/run.sh", "$HOME"]


@pytest.mark.timeout(30)
def test_command_passes_every_argument_intact_and_makes_the_script_runnable(
    tmp_path: Path,
    no_leaks: LeakWatch,
) -> None:
    """Contract §15 case 8: arguments with spaces and metacharacters arrive intact in $@."""
    script = tmp_path / "bin" / "dump"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o644)  # not executable: the toolkit chmods it, so must we
    entry = entrypoint.resolve("bin/dump", tmp_path, SOURCE)
    args = list(SHELL_NASTIES)
    proc = subprocess.run(
        entrypoint.command(entry, sys.executable, args),
        cwd=tmp_path,
        env={**os.environ, **no_leaks.env()},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == args
    assert script.stat().st_mode & stat.S_IXUSR
    assert not Path("/tmp/should-not-exist").exists()
