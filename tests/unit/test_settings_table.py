"""The settings table (`settings.SETTINGS`): docs/usage.md, the command lines and `resolve`
all follow it, so a setting is declared once and documented as it is."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from launcher import cli, settings
from launcher.errors import UsageError
from launcher.mpi import job as mpijob
from launcher.settings import SETTINGS, Backend, Sources

USAGE = Path(__file__).resolve().parents[2] / "docs" / "usage.md"
HEADER = "| Option | Environment | Hyperparameter | Default | Meaning |"
# LAUNCHER_* variables docs/usage.md may name that are not settings: read by other modules
# (containment), or set by the launcher for its own processes.
NOT_SETTINGS = {
    "LAUNCHER_CGROUP",
    "LAUNCHER_JOB_SCOPE",
    "LAUNCHER_MPI_ENV",
    "LAUNCHER_MPI_FORWARDED",
    "LAUNCHER_HOST",
    # Platform facts a Kubernetes manifest sets for `--hosts-from` (launcher.platforms).
    "LAUNCHER_NNODES",
    "LAUNCHER_K8S_SUBDOMAIN",
    "LAUNCHER_K8S_JOB",
    "LAUNCHER_JOBSET_",
}


def _plain(cell: str) -> str:
    """A markdown cell as text: no backticks, `\\|` as `|`."""
    return cell.replace("`", "").replace("\\|", "|").strip()


def documented() -> list[dict[str, str]]:
    """The rows of docs/usage.md's settings table, as plain text by column."""
    lines = USAGE.read_text().splitlines()
    start = lines.index(HEADER)
    names = ["option", "env", "hp", "default", "meaning"]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        assert len(cells) == len(names), line
        rows.append(dict(zip(names, (_plain(c) for c in cells), strict=True)))
    return rows


def test_every_setting_is_documented_as_declared_and_nothing_else_is() -> None:
    rows = documented()
    by_env = {row["env"]: row for row in rows}
    assert len(by_env) == len(rows), "a variable is documented twice"
    declared = {s.env for s in SETTINGS}
    assert set(by_env) - declared == set(), "documented settings that do not exist"
    assert declared - set(by_env) == set(), "settings missing from docs/usage.md"
    assert [row["env"] for row in rows] == [s.env for s in SETTINGS], "not in the table's order"
    for setting in SETTINGS:
        assert setting.env is not None
        row = by_env[setting.env]
        option = f"{setting.flag} {setting.metavar}" if setting.flag else ""
        assert row["option"] == option, setting.name
        if setting.hp:
            assert row["hp"] == setting.hp, setting.name
        else:
            assert "sagemaker_" not in row["hp"], setting.name
        assert row["default"] == setting.default_text, setting.name
        assert row["meaning"] == setting.help, setting.name


def test_the_docs_name_no_launcher_variable_that_is_not_read_or_set() -> None:
    named = set(re.findall(r"\bLAUNCHER_[A-Z_]+\b", USAGE.read_text()))
    unknown = named - {s.env for s in SETTINGS} - NOT_SETTINGS
    assert not unknown, unknown


def test_the_settings_dataclass_has_one_field_per_row() -> None:
    fields = [f.name for f in dataclasses.fields(settings.Settings)]
    assert fields == [s.name for s in SETTINGS]
    assert all(s.env and s.env.startswith("LAUNCHER_") for s in SETTINGS)
    # The launcher's own hyperparameters are `sagemaker_*`, or `launcher_*` for settings that
    # are the launcher's alone (`launcher_hang_timeout`).
    assert all(s.hp is None or s.hp.startswith(("sagemaker_", "launcher_")) for s in SETTINGS)


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option string of `parser` and its attribute name."""
    return {o: a.dest for a in parser._actions for o in a.option_strings}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_command_lines_take_their_setting_options_from_the_table() -> None:
    flagged = {s.flag: s.dest for s in SETTINGS if s.flag}
    commands = _subparsers()
    for name, parser in [
        ("train", cli._train_parser()),
        ("run", commands["run"]),
        ("plan", commands["plan"]),
    ]:
        options = _options(parser)
        assert {o: options.get(o) for o in flagged} == flagged, name
    local = _options(commands["local"])
    for flag in ("--backend", "--nproc-per-host", "--grace-period"):
        assert local[flag] == flagged[flag]
    assert not {"--log-dir", "--ranks", "--master-port"} & set(local)


def test_launcher_plan_takes_no_dry_run_flag() -> None:
    assert "--dry-run" not in _options(_subparsers()["plan"])
    with pytest.raises(UsageError, match="unrecognized arguments: --dry-run"):
        cli._parser().parse_args(["plan", "--dry-run"])


def test_every_command_dispatches_through_its_own_function() -> None:
    for name, parser in _subparsers().items():
        if name != "train":  # `main` hands `launcher train` to `train_main` before parsing
            assert callable(parser.get_default("func")), name


@pytest.mark.parametrize(
    "argv",
    [
        ["local", "--procs-per-host", "3", "x.py"],
        ["run", "--procs-per-host", "3", "x.py"],
        ["plan", "--procs-per-host=3"],
    ],
)
def test_the_old_process_count_flag_still_works_with_one_warning(
    argv: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher"):
        args = cli._parser().parse_args(argv)
    assert args.nproc_per_host == "3"
    assert [r.getMessage() for r in caplog.records] == [
        "--procs-per-host is deprecated: use --nproc-per-host"
    ]
    assert "--procs-per-host" not in cli._parser().format_help()


def test_launcher_local_keeps_torch_as_its_default_backend() -> None:
    args = _subparsers()["local"].parse_args(["x.py"])
    sources = Sources(vars(args), {"LAUNCHER_BACKEND": "mpi"}, {})
    assert settings.resolve(sources, default_backend=Backend.TORCH).backend is Backend.TORCH


def test_the_mpi_settings_come_from_the_one_resolution() -> None:
    environ = {
        "LAUNCHER_MPI_NUM_PROCESSES": "6",
        "LAUNCHER_MPI_OPTIONS": "-x A=1",
        "LAUNCHER_SSHD": "/opt/sshd",
        "LAUNCHER_SSH_PORT": "2222",
        "LAUNCHER_MPIRUN": "/opt/mpi/bin/mpirun",
    }
    sources = Sources({}, environ, {})
    chosen = settings.resolve(sources, default_backend=Backend.MPI)
    got = mpijob.mpi_settings(chosen)
    assert got == mpijob.MpiSettings(6, "-x A=1", 2222, "/opt/sshd", "/opt/mpi/bin/mpirun")
    assert mpijob.mpi_settings(sources) == got  # the same rows, read from the sources alone


def test_train_resolves_the_settings_once_for_an_mpi_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from launcher import commands
    from tests.helpers.trees import encode_hps, write_tree

    hps = encode_hps({"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_processes": 1})
    write_tree(tmp_path, "algo-1", ["algo-1"], hps, "print(1)\n")
    calls: list[Sources] = []
    real = settings.resolve

    def counted(sources: Sources, *, default_backend: Backend) -> settings.Settings:
        calls.append(sources)
        return real(sources, default_backend=default_backend)

    monkeypatch.setattr(settings, "resolve", counted)
    args = cli._train_parser().parse_args(["--dry-run"])
    assert commands.train(args, {"PATH": "/usr/bin:/bin"}, tmp_path) == 0
    assert len(calls) == 1
    assert '"-np", "1"' in capsys.readouterr().out  # mpirun's plan, from that resolution
