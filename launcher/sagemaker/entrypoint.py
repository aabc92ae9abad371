"""The user's entry point: validate its name, detect its kind, build its install and run argv.

Pure apart from reading the code directory. Follows sagemaker-training 5.1.4 (§7 of the
contract): the kind is `COMMAND` for `*.sh`, `PYTHON_PACKAGE` when the code directory holds a
`setup.py` (or, our extension, a `pyproject.toml` declaring a project), `PYTHON_PROGRAM` for
`*.py`, and `COMMAND` otherwise. Every failure is a `ConfigError` naming where the name came
from (the `SAGEMAKER_PROGRAM` variable or the `sagemaker_program` hyperparameter).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import ConfigError
from launcher.sagemaker.files import shown

_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*$")
# Runs a COMMAND entry point: `$0` is `./<name>`, `$@` the arguments; no user text inside.
COMMAND_SCRIPT = '[ -x "$0" ] || chmod a+x -- "$0" || exit 126; exec "$0" "$@"'
_PROJECT_TABLE = re.compile(r"^\s*\[(project|build-system)\]\s*$", re.MULTILINE)


class Kind(enum.Enum):
    PYTHON_PROGRAM = "python program"
    PYTHON_PACKAGE = "python package"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class EntryPoint:
    name: str
    kind: Kind
    code_dir: Path

    @property
    def module(self) -> str:
        """The `-m` name of a package entry point: the name without a trailing `.py`."""
        return self.name[: -len(".py")] if self.name.endswith(".py") else self.name

    @property
    def requirements(self) -> Path:
        return self.code_dir / "requirements.txt"


def resolve(name: str, code_dir: Path, source: str) -> EntryPoint:
    """Validate `name` (from `source`, e.g. `hyperparameters.json: sagemaker_program`).

    Raises `ConfigError` when the name is empty, has characters outside the toolkit's set,
    has `.`/`..` segments, does not exist in the code directory, resolves outside it, or is
    a directory (unless a `.py` directory with `__main__.py`, which Python runs), and when the
    file system cannot answer (a name too long for it, a directory we may not search, a
    symlink loop): nothing but `ConfigError` leaves for any name.
    """
    file, _, key = source.partition(": ")
    try:
        return _resolve(name, code_dir, file, key)
    except (OSError, RuntimeError) as e:  # RuntimeError: pathlib's "Symlink loop from ..."
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(
            file,
            key or None,
            f"entry point {shown(name)} cannot be checked in {code_dir}: {reason}",
            hint="use a short name of a file that exists in the code directory",
        ) from None


def _resolve(name: str, code_dir: Path, file: str, key: str) -> EntryPoint:
    if not name:
        raise ConfigError(
            file,
            key or None,
            "no entry point is configured",
            hint="set the sagemaker_program hyperparameter or SAGEMAKER_PROGRAM, e.g. train.py",
        )
    if not _NAME.match(name) or any(part in (".", "..") for part in name.split("/")):
        bad = sorted({c for c in name if not (c.isalnum() or c in "._+-/")})
        detail = f" (characters {''.join(bad)!r})" if bad else ""
        raise ConfigError(
            file,
            key or None,
            f"entry point {shown(name)} is not a relative path inside the code directory{detail}",
            hint="use a name like train.py or bin/train.sh",
        )
    kind = _kind(name, code_dir)
    target = code_dir / ("setup.py" if kind is Kind.PYTHON_PACKAGE else name)
    if kind is Kind.PYTHON_PACKAGE and not (code_dir / "setup.py").exists():
        target = code_dir / "pyproject.toml"
    if not target.exists():
        raise ConfigError(
            file,
            key or None,
            f"entry point {shown(name)} does not exist in {code_dir}",
            hint="check the name, or the code in sagemaker_submit_directory",
        )
    real_code = code_dir.resolve()
    if not target.resolve().is_relative_to(real_code):
        raise ConfigError(
            file,
            key or None,
            f"entry point {shown(name)} resolves outside {code_dir}",
            hint="ship the file itself, not a link that leaves the code directory",
        )
    # `python -- dir` runs dir/__main__.py, as under the toolkit; nothing else runs a directory.
    runnable_dir = kind is Kind.PYTHON_PROGRAM and (target / "__main__.py").is_file()
    if target.is_dir() and not runnable_dir:
        raise ConfigError(
            file,
            key or None,
            f"entry point {shown(name)} is a directory, not a file",
            hint="name the script inside it, e.g. NAME/train.py",
        )
    return EntryPoint(name, kind, code_dir)


def _kind(name: str, code_dir: Path) -> Kind:
    if name.endswith(".sh"):
        return Kind.COMMAND
    if (code_dir / "setup.py").exists() or _declares_project(code_dir / "pyproject.toml"):
        return Kind.PYTHON_PACKAGE
    if name.endswith(".py"):
        return Kind.PYTHON_PROGRAM
    return Kind.COMMAND


def _declares_project(pyproject: Path) -> bool:
    # A pyproject.toml that only configures tools (ruff, pytest) is not an installable package.
    try:
        return bool(_PROJECT_TABLE.search(pyproject.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False


def install_commands(entry: EntryPoint, python: str) -> list[list[str]]:
    """The pip commands to run in the code directory before the entry point, in order.

    Packages are pip-installed (with requirements.txt when present); programs install only
    their requirements.txt; commands install nothing (the toolkit's behaviour, §7.3).
    """
    has_requirements = entry.requirements.is_file()
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if entry.kind is Kind.PYTHON_PACKAGE:
        return [[*pip, ".", *(["-r", "requirements.txt"] if has_requirements else [])]]
    if entry.kind is Kind.PYTHON_PROGRAM and has_requirements:
        return [[*pip, "-r", "requirements.txt"]]
    return []


def command(entry: EntryPoint, python: str, args: list[str]) -> list[str]:
    """The argv that runs the entry point with `args`, from the code directory.

    A `COMMAND` is run through `/bin/sh` with a fixed script and the name and arguments as
    positional parameters, so that a script without a shebang still runs (as with the toolkit's
    `sh -c`) while no user text is ever parsed by the shell. The script first adds the
    execute bits when they are missing (the toolkit chmods the entry point to 0777 at install;
    we add only `a+x`, and only when the command really runs, never in a dry run), then
    `exec`s it so that the user's program is the launcher's direct child.
    """
    if entry.kind is Kind.PYTHON_PACKAGE:
        return [python, "-m", entry.module, *args]
    if entry.kind is Kind.PYTHON_PROGRAM:
        return [python, "--", entry.name, *args]
    return ["/bin/sh", "-c", COMMAND_SCRIPT, f"./{entry.name}", *args]
