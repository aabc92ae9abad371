"""`serve`'s log lines and exit codes, as the launcher's: one prefixed format on stderr
(`[serve] ...`, `[serve worker N] ...`, gunicorn's lines included) that leaves a user's own
logging configuration alone, and named exit codes with the launcher's meanings, ended in one
place."""

from __future__ import annotations

import ast
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import errors as launcher_errors
from serving import console, errors
from tests.helpers.procwatch import LeakWatch
from tests.serving.conftest import make_tree
from tests.serving.serverproc import SERVE, running

pytestmark = [
    pytest.mark.timeout(60),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]

SERVING = Path(errors.__file__).parent


def run_serve(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SERVE_"))}
    full.update(SAGEMAKER_BASE_DIR=str(root), SERVE_BIND_HOST="127.0.0.1", **env)
    return subprocess.run(
        [SERVE, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


# -- the format, in process ------------------------------------------------------------------


def record(name: str, level: int, message: str, *, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, message, None, exc_info)


def test_every_line_is_prefixed_and_says_its_level() -> None:
    formatter = console.Prefixed()
    assert formatter.format(record("serving", logging.INFO, "ready")) == "[serve] ready"
    assert formatter.format(record("serving", logging.ERROR, "bad")) == "[serve] error: bad"
    assert formatter.format(record("gunicorn.error", logging.WARNING, "w")) == "[serve] warning: w"
    # A user's logger (no configuration of their own) keeps its name after the prefix.
    assert formatter.format(record("user.model", logging.INFO, "hi")) == "[serve] user.model: hi"
    formatter.tag = "worker 3"
    lines = formatter.format(record("serving", logging.ERROR, "failed", exc=True)).split("\n")
    assert lines[0] == "[serve worker 3] error: failed"
    assert lines[1] == "[serve worker 3] Traceback (most recent call last):"
    assert lines[-2:] == ["[serve worker 3] ValueError: boom", "[serve worker 3] second line"]
    assert all(line.startswith("[serve worker 3] ") for line in lines)


# -- the exit codes --------------------------------------------------------------------------


def test_exit_codes_mean_what_the_launchers_mean() -> None:
    assert (errors.EXIT_SUCCESS, errors.EXIT_FAILURE, errors.EXIT_USAGE) == (
        launcher_errors.EXIT_SUCCESS,
        launcher_errors.EXIT_FAILURE,
        launcher_errors.EXIT_USAGE,
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        assert errors.signal_exit_code(signum) == launcher_errors.signal_exit_code(signum)
    assert errors.ConfigError("X", "y", "z").exit_code == errors.EXIT_USAGE
    assert errors.UsageError("u").exit_code == errors.EXIT_USAGE
    assert errors.ModelLoadError("m").exit_code == errors.EXIT_FAILURE
    assert errors.ServerError("s").exit_code == errors.EXIT_FAILURE


_ENDINGS = {"exit", "_exit", "leave", "quit", "abort"}


def _endings(path: Path) -> list[tuple[int, str, bool]]:
    """(line, called name, has a literal argument) for each call that ends a process."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _ENDINGS:
            literal = any(isinstance(arg, ast.Constant) for arg in node.args)
            found.append((node.lineno, name, literal))
    return found


def test_serve_ends_in_one_place_with_named_codes() -> None:
    where = {
        path.name: [name for _, name, _ in _endings(path)]
        for path in sorted(SERVING.glob("*.py"))
        if _endings(path)
    }
    # cli ends the master and every worker; a worker stopped during its start-up leaves from
    # its lifespan (app); stopping.leave is the os._exit both use. No sys.exit anywhere.
    assert where == {"app.py": ["leave"], "cli.py": ["leave"], "stopping.py": ["_exit"]}
    literals = [
        f"{path.name}:{line} {name}"
        for path in sorted(SERVING.glob("*.py"))
        for line, name, literal in _endings(path)
        if literal
    ]
    assert not literals, literals


# -- a real serve ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            (),
            {"SAGEMAKER_BIND_TO_PORT": "http"},
            "[serve] error: invalid configuration: SAGEMAKER_BIND_TO_PORT='http': ",
        ),
        (
            ("--bogus",),
            {},
            "[serve] error: command line: unrecognized arguments: --bogus (see serve --help)",
        ),
    ],
    ids=["setting", "command-line"],
)
def test_bad_input_is_one_prefixed_line_and_exit_2(
    tmp_path: Path, no_leaks: LeakWatch, args: tuple[str, ...], env: dict[str, str], line: str
) -> None:
    result = run_serve(tmp_path, *args, **env)
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
    assert result.stdout == ""


def test_an_unloadable_model_is_one_prefixed_line_and_exit_1(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    (tmp_path / "model").mkdir()
    result = run_serve(tmp_path)
    assert result.returncode == errors.EXIT_FAILURE, result.stderr
    assert result.stderr.startswith("[serve] error: cannot load the model: "), result.stderr
    assert "no model file" in result.stderr and "Traceback" not in result.stderr


def test_a_users_logging_configuration_is_theirs(
    tmp_path: Path, mlp_file: Path, no_leaks: LeakWatch
) -> None:
    # inference.py calls logging.basicConfig at import: its format applies to its own lines
    # (before, serve's root handler made that call a no-op); serve's and gunicorn's lines keep
    # the prefix.
    root = make_tree(tmp_path / "ml", mlp_file, inference="logs.py")
    with running(root, tmp_path / "serve.log", USER_LOG_FORMAT="USER %(name)s %(message)s") as s:
        port = s.port
    log = (tmp_path / "serve.log").read_text()
    assert "USER user.model loading the model\n" in log, log
    assert "[serve] serving " in log
    assert f"[serve] Listening at: http://127.0.0.1:{port} " in log  # gunicorn's line
    assert "[serve] Shutting down: Master" in log
    assert all(
        line.startswith(("[serve] ", "[serve worker ", "USER ")) for line in log.splitlines()
    )


def test_without_one_a_users_lines_come_out_prefixed_by_worker(
    tmp_path: Path, mlp_file: Path, no_leaks: LeakWatch
) -> None:
    # No configuration of the user's: their INFO lines still show, in serve's format, with the
    # worker that wrote them (each worker loads its own model, as on GPU hosts).
    root = make_tree(tmp_path / "ml", mlp_file, inference="logs.py")
    with running(root, tmp_path / "serve.log", SERVE_PRELOAD_MODEL="false"):
        pass
    log = (tmp_path / "serve.log").read_text()
    for slot in (0, 1):
        assert f"[serve worker {slot}] user.model: loading the model\n" in log, log
    assert "[serve worker 0] Worker exiting (pid: " in log  # gunicorn's line in a worker
    assert all(line.startswith(("[serve] ", "[serve worker ")) for line in log.splitlines())
