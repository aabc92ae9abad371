"""The launcher's own settings, with one precedence rule applied in one place.

CLI flag > `LAUNCHER_*` environment variable > SageMaker hyperparameter > default
(DESIGN.md decision 11). Every value is validated here; a bad one raises `ConfigError` naming
where it came from (`command line: --grace-period`, `environment: LAUNCHER_BACKEND`,
`.../hyperparameters.json: sagemaker_mpi_num_of_processes_per_host`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from launcher.errors import ConfigError
from launcher.plan import Backend

T = TypeVar("T")

DEFAULT_GRACE_S = 30.0
DEFAULT_PEER_TIMEOUT_S = 600.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
DEFAULT_CONTROL_PORT = 7787  # the leader's control channel; every other port is picked free


@dataclass(frozen=True, slots=True)
class Sources:
    """Where settings come from. `hps` are the decoded `sagemaker_*` hyperparameters."""

    cli: Mapping[str, Any]
    environ: Mapping[str, str]
    hps: Mapping[str, Any]
    hps_file: str = "hyperparameters.json"

    def pick(self, flag: str, env: str, hp: str | None, parse: Callable[[Any], T], default: T) -> T:
        for where, key, value in (
            ("command line", f"--{flag}", self.cli.get(flag.replace("-", "_"))),
            ("environment", env, self.environ.get(env) or None),
            (self.hps_file, hp, self.hps.get(hp) if hp else None),
        ):
            if value is None or key is None:
                continue
            try:
                return parse(value)
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    where,
                    key,
                    f"{value!r} is invalid: {e}",
                    hint="docs/usage.md lists the valid values",
                ) from None
        return default


@dataclass(frozen=True, slots=True)
class Settings:
    backend: Backend
    procs_per_host: int | str  # a count, or "gpu" / "auto": one per visible GPU, else 1
    grace_s: float
    log_dir: Path | None
    show_ranks: frozenset[int] | None
    peer_timeout_s: float
    heartbeat_timeout_s: float
    control_port: int
    master_port: int
    job_token: str | None


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be a number of seconds >= 0")
    return number


def _port(value: Any) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number 0-65535")
    return number


_GPU: int | str = "gpu"


def procs_per_host(value: Any) -> int | str:
    if isinstance(value, str) and value in ("gpu", "auto"):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a count, 'gpu' or 'auto'")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _ranks(value: Any) -> frozenset[int]:
    ranks = frozenset(int(r) for r in str(value).split(",") if r.strip())
    if not ranks or min(ranks) < 0:
        raise ValueError("must be a comma-separated list of ranks, e.g. 0,3")
    return ranks


def _backend(value: Any) -> Backend:
    try:
        return Backend(str(value).lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(b.value for b in Backend)}") from None


def sagemaker_backend(hps: Mapping[str, Any]) -> Backend | None:
    """The backend the SageMaker distribution hyperparameters ask for, if any."""
    if hps.get("sagemaker_mpi_enabled"):
        return Backend.MPI
    if hps.get("sagemaker_torch_distributed_enabled") or hps.get("sagemaker_pytorch_ddp_enabled"):
        return Backend.TORCH
    return None


def resolve(sources: Sources, *, default_backend: Backend) -> Settings:
    hp_backend = sagemaker_backend(sources.hps)
    backend = sources.pick(
        "backend", "LAUNCHER_BACKEND", None, _backend, hp_backend or default_backend
    )
    log_dir = sources.pick("log-dir", "LAUNCHER_LOG_DIR", None, lambda v: Path(str(v)), None)
    return Settings(
        backend=backend,
        procs_per_host=sources.pick(
            "nproc-per-host",
            "LAUNCHER_PROCS_PER_HOST",
            "sagemaker_mpi_num_of_processes_per_host",
            procs_per_host,
            _GPU,
        ),
        grace_s=sources.pick(
            "grace-period", "LAUNCHER_GRACE_PERIOD", None, _positive_float, DEFAULT_GRACE_S
        ),
        log_dir=log_dir,
        show_ranks=sources.pick("ranks", "LAUNCHER_RANKS", None, _ranks, None),
        peer_timeout_s=sources.pick(
            "peer-timeout", "LAUNCHER_PEER_TIMEOUT", None, _positive_float, DEFAULT_PEER_TIMEOUT_S
        ),
        heartbeat_timeout_s=sources.pick(
            "heartbeat-timeout",
            "LAUNCHER_HEARTBEAT_TIMEOUT",
            None,
            _positive_float,
            DEFAULT_HEARTBEAT_TIMEOUT_S,
        ),
        control_port=sources.pick(
            "control-port", "LAUNCHER_CONTROL_PORT", None, _port, DEFAULT_CONTROL_PORT
        ),
        master_port=sources.pick("master-port", "LAUNCHER_MASTER_PORT", None, _port, 0),
        job_token=sources.environ.get("LAUNCHER_JOB_TOKEN") or None,
    )


def local_slots(setting: int | str, gpu_count: int) -> int:
    """Ranks on this host: the count given, else one per visible GPU, else one."""
    if isinstance(setting, int):
        return setting
    return gpu_count or 1
