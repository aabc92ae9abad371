"""Settings: CLI flag > LAUNCHER_* variable > sagemaker_* hyperparameter > default."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from launcher import settings
from launcher.errors import ConfigError
from launcher.settings import Backend, Setting, Sources


def resolve(
    cli: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    hps: dict[str, Any] | None = None,
    default_backend: Backend = Backend.TORCH,
) -> settings.Settings:
    sources = Sources(cli or {}, environ or {}, hps or {}, "/opt/ml/input/config/hp.json")
    return settings.resolve(sources, default_backend=default_backend)


def test_defaults() -> None:
    got = resolve()
    assert got.backend is Backend.TORCH
    assert got.procs_per_host == "gpu"
    assert got.grace_s == settings.DEFAULT_GRACE_S == 30.0
    assert (got.log_dir, got.show_ranks, got.job_token) == (None, None, None)
    assert got.peer_timeout_s == settings.DEFAULT_PEER_TIMEOUT_S
    assert got.heartbeat_timeout_s == settings.DEFAULT_HEARTBEAT_TIMEOUT_S
    assert (got.control_port, got.master_port) == (settings.DEFAULT_CONTROL_PORT, 0)
    assert resolve(default_backend=Backend.NONE).backend is Backend.NONE


def test_precedence_for_the_process_count() -> None:
    hp = {"sagemaker_mpi_num_of_processes_per_host": 2}
    env = {"LAUNCHER_PROCS_PER_HOST": "3"}
    cli = {"nproc_per_host": "4"}
    assert resolve(hps=hp).procs_per_host == 2
    assert resolve(environ=env, hps=hp).procs_per_host == 3
    assert resolve(cli=cli, environ=env, hps=hp).procs_per_host == 4


def test_an_empty_variable_counts_as_unset() -> None:
    assert resolve(environ={"LAUNCHER_GRACE_PERIOD": ""}).grace_s == 30.0


def test_a_cli_value_of_none_falls_through() -> None:
    got = resolve(cli={"grace_period": None}, environ={"LAUNCHER_GRACE_PERIOD": "2.5"})
    assert got.grace_s == 2.5


@pytest.mark.parametrize(
    ("hps", "expected"),
    [
        ({}, Backend.NONE),  # no distribution asked for: the caller's default
        ({"sagemaker_torch_distributed_enabled": True}, Backend.TORCH),
        ({"sagemaker_pytorch_ddp_enabled": True}, Backend.TORCH),
        ({"sagemaker_mpi_enabled": True}, Backend.MPI),
        ({"sagemaker_mpi_enabled": True, "sagemaker_pytorch_ddp_enabled": True}, Backend.MPI),
        ({"sagemaker_torch_distributed_enabled": False}, Backend.NONE),
    ],
)
def test_backend_from_the_distribution_hyperparameters(
    hps: dict[str, Any], expected: Backend
) -> None:
    assert resolve(hps=hps, default_backend=Backend.NONE).backend is expected


def test_backend_variable_wins_over_the_hyperparameters() -> None:
    got = resolve(environ={"LAUNCHER_BACKEND": "Horovod"}, hps={"sagemaker_mpi_enabled": True})
    assert got.backend is Backend.HOROVOD
    assert resolve(cli={"backend": "none"}, environ={"LAUNCHER_BACKEND": "mpi"}).backend is (
        Backend.NONE
    )


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("8", 8), ("gpu", "gpu"), (2, 2)])
def test_process_count_values(value: Any, expected: int | str) -> None:
    assert resolve(cli={"nproc_per_host": value}).procs_per_host == expected
    assert resolve(environ={"LAUNCHER_PROCS_PER_HOST": str(value)}).procs_per_host == expected


@pytest.mark.parametrize(
    ("cli", "where"),
    [
        ({"nproc_per_host": "0"}, "command line: --nproc-per-host: '0' is invalid"),
        ({"nproc_per_host": "many"}, "command line: --nproc-per-host: 'many' is invalid"),
        ({"grace_period": "-1"}, "command line: --grace-period: '-1' is invalid"),
        ({"grace_period": "nan"}, "command line: --grace-period"),
        ({"ranks": "0,x"}, "command line: --ranks"),
        ({"ranks": ","}, "command line: --ranks"),
        ({"ranks": "-1"}, "command line: --ranks"),
        ({"backend": "nccl"}, "command line: --backend: 'nccl' is invalid: must be one of"),
        ({"master_port": "70000"}, "command line: --master-port: '70000' is invalid"),
    ],
)
def test_bad_cli_values_name_the_flag(cli: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(cli=cli)
    assert str(caught.value).startswith(where)


def test_bad_environment_and_hyperparameter_values_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"^environment: LAUNCHER_PEER_TIMEOUT: 'soon'"):
        resolve(environ={"LAUNCHER_PEER_TIMEOUT": "soon"})
    with pytest.raises(
        ConfigError,
        match=r"^/opt/ml/input/config/hp\.json: sagemaker_mpi_num_of_processes_per_host: True",
    ):
        resolve(hps={"sagemaker_mpi_num_of_processes_per_host": True})


def test_rank_filter_log_dir_ports_and_token() -> None:
    got = resolve(
        cli={"ranks": "3, 0,3", "log_dir": "/tmp/logs", "master_port": "29500"},
        environ={"LAUNCHER_CONTROL_PORT": "9000", "LAUNCHER_JOB_TOKEN": "t0k"},
    )
    assert got.show_ranks == frozenset({0, 3})
    assert got.log_dir == Path("/tmp/logs")
    assert (got.master_port, got.control_port, got.job_token) == (29500, 9000, "t0k")


@pytest.mark.parametrize(
    ("setting", "gpus", "slots"), [(4, 8, 4), (4, 0, 4), ("gpu", 8, 8), ("auto", 0, 1)]
)
def test_local_slots(setting: int | str, gpus: int, slots: int) -> None:
    assert settings.local_slots(setting, gpus) == slots


# --- every numeric setting, every source: non-finite, out of range, wrong type ------------

HP_FILE = "/opt/ml/input/config/hp.json"
# settings.MAX_SECONDS, MAX_PROCS_PER_HOST and MAX_PROCESSES, as literals: each test below must
# fail on its own on a launcher without the bounds.
MAX_SECONDS = 28 * 24 * 3600
MAX_PROCS = 1024
MAX_PROCESSES = 1 << 20


def test_the_bounds() -> None:
    assert (settings.MAX_SECONDS, settings.MAX_PROCS_PER_HOST) == (MAX_SECONDS, MAX_PROCS)
    assert settings.MAX_PROCESSES == MAX_PROCESSES


# (CLI attribute, flag, variable, hyperparameter, backend): the sources each setting has.
# A setting without a flag has no CLI attribute either: the command line cannot set it.
NUMERIC: dict[str, tuple[str | None, str | None, str, str | None, Backend]] = {
    "grace": ("grace_period", "--grace-period", "LAUNCHER_GRACE_PERIOD", None, Backend.TORCH),
    "peer": (None, None, "LAUNCHER_PEER_TIMEOUT", None, Backend.TORCH),
    "heartbeat": (None, None, "LAUNCHER_HEARTBEAT_TIMEOUT", None, Backend.TORCH),
    "control-port": (None, None, "LAUNCHER_CONTROL_PORT", None, Backend.TORCH),
    "master-port": ("master_port", "--master-port", "LAUNCHER_MASTER_PORT", None, Backend.TORCH),
    "procs": (
        "nproc_per_host",
        "--nproc-per-host",
        "LAUNCHER_PROCS_PER_HOST",
        "sagemaker_mpi_num_of_processes_per_host",
        Backend.TORCH,
    ),
    "mpi-procs": (
        None,
        None,
        "LAUNCHER_MPI_NUM_PROCESSES",
        "sagemaker_mpi_num_processes",
        Backend.MPI,
    ),
    "ssh-port": (None, None, "LAUNCHER_SSH_PORT", None, Backend.MPI),
}
NON_FINITE_TEXT = ["inf", "-inf", "+inf", "nan", "NaN", "-nan", "Infinity", "INFINITY", "1e999",
                   "-1e999", " inf ", "1" * 400]  # fmt: skip
NON_FINITE = [math.inf, -math.inf, math.nan]
BAD_EVERYWHERE = ["-1", "1e308", "99999999999999999999", "7" * 5000, "soon", "1,5", "0x10"]
BAD_TYPES = [True, False, [1], {"a": 1}, 10**30, -(10**30), 10**400]
ZERO_MEANINGLESS = {"peer", "heartbeat", "control-port", "procs", "mpi-procs"}
WHOLE = {"control-port", "master-port", "procs", "mpi-procs", "ssh-port"}


def _raises_naming(where: str, key: str, **sources: Any) -> None:
    backend = sources.pop("backend")
    with pytest.raises(ConfigError) as caught:
        resolve(default_backend=backend, **sources)
    text = str(caught.value)
    assert text.startswith(f"{where}: {key}: "), text
    assert "\n" not in text and len(text) < 300, text


def _bad_values(name: str) -> list[Any]:
    values: list[Any] = [*NON_FINITE_TEXT, *BAD_EVERYWHERE]
    if name in ZERO_MEANINGLESS:
        values += ["0", "0.0", "-0"]
    if name in WHOLE:
        values += ["1.5", "2.000001"]
    if name == "mpi-procs":
        values += [str(MAX_PROCESSES + 1)]
    elif name in WHOLE:  # past every port, and past the processes of one host
        values += ["65536", "1e5"]
    else:
        values += [str(MAX_SECONDS + 1), "1e7"]
    if name == "heartbeat":
        values += ["0.05", "1e-300"]
    return values


@pytest.mark.parametrize("name", [n for n, (_, flag, _, _, _) in NUMERIC.items() if flag])
def test_bad_numbers_from_the_command_line_name_the_flag(name: str) -> None:
    attr, flag, _, _, backend = NUMERIC[name]
    assert attr is not None and flag is not None
    for value in [*_bad_values(name), *NON_FINITE, *BAD_TYPES]:
        _raises_naming("command line", flag, cli={attr: value}, backend=backend)


@pytest.mark.parametrize("name", list(NUMERIC))
def test_bad_numbers_from_the_environment_name_the_variable(name: str) -> None:
    _, _, variable, _, backend = NUMERIC[name]
    for value in _bad_values(name):
        _raises_naming("environment", variable, environ={variable: value}, backend=backend)


@pytest.mark.parametrize("name", [n for n, (_, _, _, hp, _) in NUMERIC.items() if hp])
def test_bad_numbers_from_hyperparameters_name_the_key(name: str) -> None:
    _, _, _, hp, backend = NUMERIC[name]
    assert hp is not None
    # Decoded values (Infinity, NaN, 1e999 decode to floats) and strings json.loads kept.
    for value in [*NON_FINITE, *BAD_TYPES, *_bad_values(name), 1.5, 0.5, -1, 0]:
        _raises_naming(HP_FILE, hp, hps={hp: value}, backend=backend)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("grace", "0", 0.0),
        ("grace", " 2.5 ", 2.5),
        ("grace", "1e3", 1000.0),
        ("grace", 7, 7.0),
        ("peer", "0.5", 0.5),
        ("peer", str(MAX_SECONDS), float(MAX_SECONDS)),
        ("heartbeat", "0.1", 0.1),
        ("control-port", "1", 1),
        ("control-port", "65535", 65535),
        ("master-port", "0", 0),
        ("master-port", "29500.0", 29500),
        ("procs", "4.0", 4),
        ("procs", 2.0, 2),
        ("procs", " 8 ", 8),
        ("procs", str(MAX_PROCS), MAX_PROCS),
        ("mpi-procs", "16", 16),
        ("ssh-port", "0", 0),
        ("ssh-port", "2222", 2222),
    ],
)
def test_good_numbers_in_every_form(name: str, value: Any, expected: float) -> None:
    attr, _, variable, _, backend = NUMERIC[name]
    field = {
        "grace": "grace_s",
        "peer": "peer_timeout_s",
        "heartbeat": "heartbeat_timeout_s",
        "procs": "procs_per_host",
        "mpi-procs": "mpi_num_processes",
    }.get(name, variable.removeprefix("LAUNCHER_").lower())
    if attr is not None:
        got = getattr(resolve(cli={attr: value}, default_backend=backend), field)
        assert got == expected and type(got) is type(expected)
    if isinstance(value, str):
        got = getattr(resolve(environ={variable: value}, default_backend=backend), field)
        assert got == expected and type(got) is type(expected)


def test_mpi_numbers_are_read_only_for_the_mpi_backend() -> None:
    environ = {"LAUNCHER_SSH_PORT": "inf", "LAUNCHER_MPI_NUM_PROCESSES": "nan"}
    got = resolve(environ=environ, default_backend=Backend.TORCH)
    assert (got.mpi_num_processes, got.ssh_port) == (None, 0)
    got = resolve(hps={"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_processes": 4})
    assert (got.backend, got.mpi_num_processes, got.ssh_port) == (Backend.MPI, 4, 0)


def _row(parse: Any, default: Any, flag: str | None = "--x", hp: str | None = None) -> Setting:
    return Setting("x", flag, "LAUNCHER_X", hp, parse, default, "a test setting")


def test_a_parser_from_elsewhere_cannot_let_a_non_finite_or_huge_number_through() -> None:
    """A row's parser may be any function (e.g. `int`, `float`): the safety net still holds."""
    sources = Sources({}, {}, {"sagemaker_x": math.inf}, HP_FILE)
    with pytest.raises(ConfigError, match=r"^/opt/ml/input/config/hp\.json: sagemaker_x: inf"):
        sources.read(_row(int, 0, hp="sagemaker_x"))  # int(inf): OverflowError
    for value in ("1e999", "nan"):
        with pytest.raises(ConfigError, match=r"^environment: LAUNCHER_X: .*finite"):
            Sources({}, {"LAUNCHER_X": value}, {}).read(_row(float, 0.0))
    with pytest.raises(ConfigError, match=r"^command line: --x: "):
        Sources({"x": str(10**30)}, {}, {}).read(_row(int, 0))


def test_a_setting_without_a_flag_ignores_the_command_line_and_never_names_one() -> None:
    row = _row(int, 7, flag=None)
    assert Sources({"x": "inf"}, {}, {}).read(row) == 7
    with pytest.raises(ConfigError) as caught:
        Sources({"x": "1"}, {"LAUNCHER_X": "soon"}, {}).read(row)
    assert str(caught.value).startswith("environment: LAUNCHER_X: 'soon' is invalid")
    # The launcher's own rows: no phantom flag reaches an error message, whatever the input.
    cli = {"peer_timeout": "inf", "control_port": "0", "ssh_port": "x", "mpi_num_processes": "0"}
    got = resolve(cli=cli, default_backend=Backend.MPI)
    assert (got.peer_timeout_s, got.control_port) == (settings.DEFAULT_PEER_TIMEOUT_S, 7787)
    assert (got.ssh_port, got.mpi_num_processes) == (0, None)


def test_messages_show_long_values_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(environ={"LAUNCHER_GRACE_PERIOD": "9" * 100_000})
    assert len(str(caught.value)) < 350
    with pytest.raises(ConfigError) as caught:
        resolve(hps={"sagemaker_mpi_num_of_processes_per_host": ["x" * 100_000] * 100})
    assert len(str(caught.value)) < 350


@pytest.mark.parametrize(
    ("cli", "where"),
    [
        ({"ranks": "99999999999999999999"}, "command line: --ranks: "),
        ({"log_dir": ""}, "command line: --log-dir: "),
        ({"log_dir": "a\0b"}, "command line: --log-dir: "),
    ],
)
def test_other_bad_values_name_their_source(cli: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(cli=cli)
    assert str(caught.value).startswith(where)
