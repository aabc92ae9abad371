"""Settings: CLI flag > LAUNCHER_* variable > sagemaker_* hyperparameter > default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher import settings
from launcher.errors import ConfigError
from launcher.plan import Backend
from launcher.settings import Sources


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
