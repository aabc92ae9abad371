"""Command lines: `train` (SageMaker's entry point) and `launcher run|plan|local|preflight|
stacks|doctor`.

Parses the arguments and hands them to `commands`. The only module that calls `sys.exit`.
Every `LauncherError` becomes one prefixed line on stderr and its exit code (2 for bad input,
3 for peers that never came); in `train` it is also written to output/failure. No traceback
is shown for an error the launcher understands.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from launcher import __version__, console, settings
from launcher.errors import EXIT_FAILURE, LauncherError, UsageError
from launcher.settings import Backend

log = logging.getLogger("launcher")


def preload() -> None:
    """Import everything a command needs now (for `launcher.local.zygote`, before it forks)."""
    _commands()


def _commands(module: str = "launcher.commands") -> ModuleType:
    """Import the pipeline (and `module`: a subpackage's command, e.g. `launcher.local.command`)
    with the cyclic GC paused: the imports create thousands of objects (dataclasses, enums) and
    no garbage, and GC passes during them cost every launch ~10 ms, which a 64-host local job
    pays 64 times on 2 cores."""
    import importlib  # noqa: PLC0415 - frozen into the interpreter: costs nothing

    gc.disable()
    try:
        importlib.import_module("launcher.commands")
        return importlib.import_module(module)
    finally:
        gc.enable()


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter at the width it would pick itself ($COLUMNS, else the
    terminal's, else 80, less 2), found without `shutil`: argparse imports it (and with it
    bz2, lzma and fnmatch, some 2 ms) for every option added, on every launch."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
                except (AttributeError, OSError, ValueError):
                    width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line raised as `UsageError` (one line, exit 2, and
    output/failure for `train`) instead of a usage block and `sys.exit` from inside argparse."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"command line: {message}", hint=f"see {self.prog} --help")


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new one's attribute and logs one warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        log.warning("%s is deprecated: use %s", option_string, self.const)
        setattr(namespace, self.dest, values)


# Old spellings that scripts still use: flag -> the setting's flag.
_DEPRECATED = {"--procs-per-host": "--nproc-per-host"}


def _add_settings(
    parser: argparse.ArgumentParser,
    names: Collection[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """The options of the settings that have a flag (`settings.SETTINGS`), or of `names`
    only; `defaults` replaces a setting's default for this command."""
    defaults = defaults or {}
    for setting in settings.SETTINGS:
        if setting.flag is None or (names is not None and setting.name not in names):
            continue
        default = defaults.get(setting.name)
        # A command's own default is given on its command line: the variable cannot apply.
        sources = [f"default {default or setting.default_text}"]
        if setting.env and default is None:
            sources.append(f"environment {setting.env}")
        parser.add_argument(
            setting.flag,
            dest=setting.dest,
            metavar=setting.metavar,
            default=default,
            help=f"{setting.help} ({'; '.join(sources)})",
        )
        for old, new in _DEPRECATED.items():
            if new == setting.flag:
                parser.add_argument(
                    old, dest=setting.dest, action=_Deprecated, const=new, help=argparse.SUPPRESS
                )


def _add_run_options(parser: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    """The options `train`, `launcher run` and `launcher plan` share."""
    _add_settings(parser)
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="launcher", description="Distributed training launcher")
    parser.add_argument("--version", action="version", version=f"ml-launcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start ranks of a script on this host, like torchrun")
    _add_run_options(run)
    run.add_argument("-m", dest="module", action="store_true", help="run a module (python -m)")
    run.add_argument("--no-python", action="store_true", help="the program is an executable")
    run.add_argument("--output-dir", dest="output_dir", help="write success/failure files here")
    run.add_argument("program")
    run.add_argument("args", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)
    plan_cmd = sub.add_parser(
        "plan", help="what `train` would run from the SageMaker tree; the platform found"
    )
    _add_run_options(plan_cmd, dry_run=False)
    plan_cmd.set_defaults(func=_plan)
    loc = sub.add_parser("local", help="a SageMaker-shaped cluster of N hosts on this machine")
    loc.add_argument("--hosts", type=int, default=2, help="simulated hosts (default 2)")
    # The backend's default is torch here: it becomes the trees' distribution hyperparameter.
    _add_settings(
        loc,
        ("backend", "procs_per_host", "grace_s", "hang_timeout_s", "max_restarts"),
        {"backend": "torch"},
    )
    loc.add_argument("--job-dir", default="launcher-jobs", help="where job folders go")
    loc.add_argument("program")
    loc.add_argument("args", nargs=argparse.REMAINDER)
    loc.set_defaults(func=_local)
    stk = sub.add_parser(
        "stacks", help="print the current stack of every rank of the jobs running on this host"
    )
    stk.add_argument("--pid", type=int, help="only the job of the launcher with this pid")
    stk.add_argument(
        "--local",
        action="store_true",
        help="this host's ranks only (by default the leader of a multi-host job answers for all)",
    )
    stk.set_defaults(func=_stacks)
    pre = sub.add_parser(
        "preflight", help="check every host, GPU, link and directory of the job; exit 78 if bad"
    )
    _add_settings(pre)
    pre.set_defaults(func=_preflight)
    doc = sub.add_parser("doctor", help="check this host for a backend: GPUs, network, frameworks")
    doc.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        help="the backend to check for (default: what `train` would use here, else torch)",
    )
    doc.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    doc.set_defaults(func=_doctor)
    # Listed for --help only: `main` hands `launcher train ...` to `train_main` before parsing.
    sub.add_parser("train", help="the same as the `train` command", add_help=False)
    return parser


def _train_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train", description="Run the training job described by $SAGEMAKER_BASE_DIR"
    )
    parser.add_argument("--version", action="version", version=f"ml-launcher {__version__}")
    _add_run_options(parser)
    return parser


def _guard(body: Callable[[], int], output_dir: Path | None = None) -> NoReturn:
    """Run `body`, turning launcher errors into one line, a failure file and an exit code."""
    try:
        code = body()
    except LauncherError as e:
        log.error("%s", e)
        if output_dir is not None:
            from launcher import report  # noqa: PLC0415 - only on this path

            report.write_failure(output_dir, f"{e}\n")
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `train --dry-run | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_FAILURE
    sys.exit(code)


def _raise(error: LauncherError) -> int:
    raise error


def train_main(argv: Sequence[str] | None = None) -> NoReturn:
    """`train`: the SageMaker training entry point (DESIGN.md's pipeline, one host)."""
    from launcher.sagemaker import config  # noqa: PLC0415 - only train and plan read a SageMaker tree

    console.setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    base = config.base_dir_from(environ)
    # A failure file goes into an existing tree only: `train` never creates /opt/ml from nothing.
    # os.path.isdir, not Path.is_dir: a path longer than PATH_MAX must not raise here.
    dry_run = "--dry-run" in argv
    output = None if dry_run or not os.path.isdir(base) else base / "output"  # noqa: PTH112
    _guard(lambda: _commands().train(_train_parser().parse_args(argv), environ, base), output)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """`launcher`: run, plan, local, doctor."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        train_main(argv[1:])
    console.setup_logging()
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        error = e  # `e` is unbound after the block; the lambda runs inside _guard
        _guard(lambda: _raise(error))
    command: Callable[[argparse.Namespace, dict[str, str]], NoReturn] = args.func
    command(args, dict(os.environ))


def _run(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    out = Path(args.output_dir) if args.output_dir else None
    _guard(lambda: _commands().run(args, environ), None if args.dry_run else out)


def _plan(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    from launcher.sagemaker import config  # noqa: PLC0415 - only train and plan read a SageMaker tree

    base = config.base_dir_from(environ)
    _guard(lambda: _commands().plan_command(args, environ, base))


def _local(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    _guard(lambda: _commands("launcher.local.command").local(args, environ))


def _stacks(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    _guard(lambda: _commands("launcher.hangs.command").stacks(args, environ))


def _preflight(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    from launcher.sagemaker import config  # noqa: PLC0415 - only commands that read a tree

    base = config.base_dir_from(environ)
    output = base / "output" if os.path.isdir(base) else None  # noqa: PTH112 - see train_main

    _guard(lambda: _commands("launcher.preflight.command").preflight(args, environ, base), output)


def _doctor(args: argparse.Namespace, environ: dict[str, str]) -> NoReturn:
    _guard(lambda: _commands().doctor(args, environ))
