"""The launcher's own settings, declared once, with one precedence rule applied in one place.

`SETTINGS` is the table: one `Setting` row per setting (the launcher's and the `mpi` backend's)
naming its command-line flag, `LAUNCHER_*` variable and `sagemaker_*` hyperparameter (each
where it has one), its parser and its default. `resolve` reads the rows, the command lines
take their options from the rows that have a flag (`cli`), and a test checks docs/usage.md
against the rows. `Backend` lives here because it is a setting: the planner imports it.

CLI flag > `LAUNCHER_*` environment variable > SageMaker hyperparameter > default
(DESIGN.md decision 11). Every value is validated here; a bad one raises `ConfigError` naming
where it came from (`command line: --grace-period`, `environment: LAUNCHER_BACKEND`,
`.../hyperparameters.json: sagemaker_mpi_num_of_processes_per_host`), only ever a source the
setting has, and nothing else escapes `resolve` for any value from any source.

Numbers are finite and bounded: durations are seconds in [0 or above, `MAX_SECONDS`], counts
whole numbers in [1, `MAX_PROCS_PER_HOST`], ports whole numbers in [0 or 1, 65535]. `inf`,
`nan`, `1e999`, booleans, fractions where a count is meant and numbers beyond the bounds
are refused, whatever their form (`"inf"` in a variable, `Infinity` or `"NaN"` in a
hyperparameter). Whole numbers may be written `4`, `"4"`, `4.0` or `"4.0"`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from launcher.errors import ConfigError

T = TypeVar("T")

DEFAULT_GRACE_S = 30.0
DEFAULT_PEER_TIMEOUT_S = 600.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
DEFAULT_CONTROL_PORT = 7787  # the leader's control channel; every other port is picked free
# The longest any duration may be: SageMaker's longest training job (28 days). It also keeps
# every timeout far below threading.TIMEOUT_MAX (about 9.2e9 s), past which a wait raises
# OverflowError.
MAX_SECONDS = 28 * 24 * 3600
# Heartbeats go out every max(timeout / 4, 0.05) s: a timeout under two of those periods
# declares every host lost, so it cannot be meant.
MIN_HEARTBEAT_TIMEOUT_S = 0.1
# Far beyond any host (8-16 GPUs, at most a few hundred cores) and small enough that a typo
# such as 1e9 is refused instead of starting processes until the host falls over.
MAX_PROCS_PER_HOST = 1024
# The same for a whole job's processes (`mpirun -np`).
MAX_PROCESSES = 1 << 20
# Rank numbers (the console filter) are 32-bit in every framework the launcher serves.
MAX_RANK = 2**31 - 1
# Any setting a row's parser returns, whatever the function, stays within this: a safety net
# behind each parser's own bounds.
_MAX_ANY_INT = 2**31 - 1


class Backend(enum.Enum):
    """How the ranks of a job find each other (DESIGN.md decision 4)."""

    NONE = "none"  # one process, no rank variables: the toolkit's plain `train`
    TORCH = "torch"
    HOROVOD = "horovod"
    MPI = "mpi"


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table: where a setting may come from, how its value is checked,
    what it is when no source sets it, and how `--help` and docs/usage.md describe it.

    `name` is the `Settings` field. `flag`, `env` and `hp` are its sources (the command-line
    option, the `LAUNCHER_*` variable, the `sagemaker_*` hyperparameter); None where it has
    none, and then no error message ever names one. `parse` turns a raw value into the
    setting and raises ValueError, TypeError or ArithmeticError for a bad one. `shown` is the
    default as documented, where the plain value would not say it (None: "every slot").
    With `only`, the setting is read only for that backend; any other keeps the default.
    """

    name: str
    flag: str | None
    env: str | None
    hp: str | None
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    shown: str = ""
    only: Backend | None = None

    @property
    def dest(self) -> str | None:
        """The flag's attribute in argparse's namespace (and the key of `Sources.cli`)."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else None

    @property
    def default_text(self) -> str:
        """The default as `--help` and docs/usage.md write it."""
        if self.shown or self.default is None:
            return self.shown
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


@dataclass(frozen=True, slots=True)
class Sources:
    """Where settings come from. `hps` are the decoded `sagemaker_*` hyperparameters; `cli`
    maps argparse's attribute names (`Setting.dest`) to values, None meaning not given."""

    cli: Mapping[str, Any]
    environ: Mapping[str, str]
    hps: Mapping[str, Any]
    hps_file: str = "hyperparameters.json"

    def read(self, setting: Setting) -> Any:
        """`setting` from the first source that sets it, parsed; its default when none does.

        Only the sources the row names are consulted, in precedence order. `parse` raising
        ValueError, TypeError or ArithmeticError (OverflowError) becomes a `ConfigError` naming
        the source and key, with the value shown shortened. A parsed float that is not finite,
        or an integer beyond 2**31 - 1, is refused here too, whatever the parser (a safety net
        behind each parser's own bounds). An empty variable counts as unset.
        """
        for where, key, value in (
            ("command line", setting.flag, self.cli.get(setting.dest) if setting.dest else None),
            (
                "environment",
                setting.env,
                self.environ.get(setting.env) or None if setting.env else None,
            ),
            (self.hps_file, setting.hp, self.hps.get(setting.hp) if setting.hp else None),
        ):
            if value is None or key is None:
                continue
            try:
                return _checked(setting.parse(value))
            except (ValueError, TypeError, ArithmeticError) as e:
                raise ConfigError(
                    where,
                    key,
                    f"{_shown(value)} is invalid: {_reason(e)}",
                    hint="docs/usage.md lists the valid values",
                ) from None
        return setting.default


def _shown(value: Any) -> str:
    # Only on the error path: `launcher run` never reads a tree and need not import its parser.
    from launcher.sagemaker.files import shown  # noqa: PLC0415

    return shown(value)


_KINDS = {bool: "a boolean", list: "a list", dict: "an object", int: "a number", str: "a string"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _checked(result: T) -> T:
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError("must be a finite number")
    if isinstance(result, int) and not isinstance(result, bool) and abs(result) > _MAX_ANY_INT:
        raise ValueError(f"must be at most {_MAX_ANY_INT}")
    return result


def _reason(error: Exception) -> str:
    # Our parsers' messages are short; a foreign parser's may quote the whole value.
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else f"{text[:117]}..."


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of one command, resolved once (`resolve`); one field per `SETTINGS` row."""

    backend: Backend
    procs_per_host: int | str  # a count, or "gpu" / "auto": one per visible GPU, else 1
    grace_s: float
    log_dir: Path | None
    show_ranks: frozenset[int] | None
    master_port: int
    peer_timeout_s: float
    heartbeat_timeout_s: float
    control_port: int
    leader_addr: str  # "": the leader's host name
    job_token: str | None
    host_name: str  # `launcher run`'s host name in prefixes; "": the node name
    # Seconds without progress before the job is hung; None: automatic; 0: off (docs/hangs.md).
    hang_timeout_s: float | None = None
    # Whole-job restarts (launcher/restarts): attempts after the first; the checkpoint folder.
    max_restarts: int = 0
    checkpoint_dir: Path | None = None  # None: SageMaker's (checkpointconfig.json, /opt/ml/...)
    # The `mpi` backend's: read only when the backend is `mpi`, else these defaults.
    mpi_num_processes: int | None = None  # -np; None: every slot of every host
    mpi_options: str = ""
    mpirun: str = "mpirun"
    sshd: str = ""  # "": sshd on PATH, else /usr/sbin/sshd
    ssh_port: int = 0  # each follower's sshd; 0: a free port
    # `launcher run`: where the hosts come from (launcher.platforms); the token from a file.
    hosts_from: str = "auto"
    job_token_file: Path | None = None
    # The preflight (docs/preflight.md): off, quick or full; its floors and directories.
    preflight: str = "off"
    preflight_min_gbps: float | None = None  # cross-host all_reduce busbw floor; None: none
    preflight_min_tflops: float | None = None  # per-GPU matmul floor; None: model defaults
    preflight_min_free_gb: float = 1.0
    preflight_expect_gpus: int | None = None
    preflight_timeout_s: float = 120.0


def number(value: Any) -> float:
    """A finite number from an int, a float or its text. Raises ValueError otherwise."""
    if isinstance(value, bool):  # a bool is an int to Python, never a number to a user
        raise ValueError(f"must be a number, not {_kind(value)}")
    if isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    elif isinstance(value, int | float):
        try:
            result = float(value)
        except OverflowError:  # an int beyond the float range
            raise ValueError("is far too large") from None
    else:
        raise ValueError(f"must be a number, not {_kind(value)}")
    if not math.isfinite(result):
        raise ValueError("must be a finite number")
    return result


def whole(value: Any) -> int:
    """A whole number from an int, an integral float, or their text. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())  # exact for long digit strings, which float would round
        except ValueError:
            pass  # "4.0", "1e3", or not a number: number() says which
    result = number(value)
    if not result.is_integer():
        raise ValueError("must be a whole number")
    return int(result)


def seconds(value: Any, *, minimum: float = 0.0, above: bool = False) -> float:
    """Seconds, finite, at least `minimum` (above it with `above`) and at most `MAX_SECONDS`."""
    result = number(value)
    low = result > minimum if above else result >= minimum
    if not low or result > MAX_SECONDS:
        bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
        raise ValueError(f"must be a number of seconds {bound} and at most {MAX_SECONDS}")
    return result


def count(value: Any, maximum: int = MAX_PROCS_PER_HOST) -> int:
    """A count of processes: a whole number from 1 to `maximum`."""
    result = whole(value)
    if not 1 <= result <= maximum:
        raise ValueError(f"must be a count from 1 to {maximum}")
    return result


def port(value: Any, *, zero: bool = True) -> int:
    """A TCP port: a whole number up to 65535; 0 ("pick a free one") only with `zero`."""
    result = whole(value)
    low = 0 if zero else 1
    if not low <= result <= 65535:
        raise ValueError(f"must be a port number {low}-65535")
    return result


def _positive_float(value: Any) -> float:
    return seconds(value)


def _port(value: Any) -> int:
    return port(value)


def _control_port(value: Any) -> int:
    # Every host connects to the leader on this port: 0 (any free port) could not be found.
    return port(value, zero=False)


def _peer_timeout(value: Any) -> float:
    return seconds(value, above=True)  # 0 s: no host could ever arrive


def _heartbeat_timeout(value: Any) -> float:
    return seconds(value, minimum=MIN_HEARTBEAT_TIMEOUT_S)


_GPU: int | str = "gpu"


def procs_per_host(value: Any) -> int | str:
    if isinstance(value, str) and value.strip() in ("gpu", "auto"):
        return value.strip()
    try:
        return count(value)
    except ValueError:
        raise ValueError(
            f"must be a count from 1 to {MAX_PROCS_PER_HOST}, 'gpu' or 'auto'"
        ) from None


def hang_timeout(value: Any) -> float | None:
    """`--hang-timeout`: "auto" (None, the automatic window), 0 (off) or seconds up to
    `MAX_SECONDS`, as `launcher.hangs.verdict.parse_setting` reads them (a JSON number from a
    hyperparameter too). Raises ValueError."""
    if isinstance(value, str):
        # Lazily: `launcher run` without the setting imports nothing of launcher.hangs.
        from launcher.hangs.verdict import parse_setting  # noqa: PLC0415

        parsed = parse_setting(value)
        return None if parsed is None else seconds(parsed)
    return seconds(value)


PREFLIGHT_LEVELS = ("off", "quick", "full")


def _preflight(value: Any) -> str:
    """`--preflight`: off, quick or full (a boolean-like `true` from a hyperparameter: quick)."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "on")):
        return "quick"
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "0")):
        return "off"
    if not isinstance(value, str) or value.strip().lower() not in PREFLIGHT_LEVELS:
        raise ValueError(f"must be one of {', '.join(PREFLIGHT_LEVELS)}")
    return value.strip().lower()


def _positive_number(value: Any) -> float:
    result = number(value)
    if not 0 < result <= 1e9:
        raise ValueError("must be a number above 0")
    return result


def _free_gb(value: Any) -> float:
    result = number(value)
    if not 0 <= result <= 1e9:
        raise ValueError("must be a number of GB, 0 or more")
    return result


def _preflight_timeout(value: Any) -> float:
    return seconds(value, minimum=1.0)


def _gpu_count(value: Any) -> int:
    result = whole(value)
    if not 0 <= result <= MAX_PROCS_PER_HOST:
        raise ValueError(f"must be a count from 0 to {MAX_PROCS_PER_HOST}")
    return result


MAX_RESTARTS = 1000  # far beyond any sensible budget; a typo such as 1e9 is refused


def max_restarts(value: Any) -> int:
    """`--max-restarts`: a whole number from 0 to `MAX_RESTARTS`. Raises ValueError."""
    result = whole(value)
    if not 0 <= result <= MAX_RESTARTS:
        raise ValueError(f"must be a whole number from 0 to {MAX_RESTARTS}")
    return result


def _mpi_processes(value: Any) -> int:
    return count(value, MAX_PROCESSES)


def _ranks(value: Any) -> frozenset[int]:
    if not isinstance(value, str):
        raise TypeError(f"must be a comma-separated list of ranks, not {_kind(value)}")
    try:
        ranks = frozenset(whole(r) for r in value.split(",") if r.strip())
    except ValueError:
        ranks = frozenset()
    if not ranks or min(ranks) < 0 or max(ranks) > MAX_RANK:
        raise ValueError("must be a comma-separated list of ranks, e.g. 0,3")
    return ranks


def _backend(value: Any) -> Backend:
    try:
        return Backend(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(b.value for b in Backend)}") from None


def _log_dir(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("must be a directory path")
    return Path(value)


def sagemaker_backend(hps: Mapping[str, Any]) -> Backend | None:
    """The backend the SageMaker distribution hyperparameters ask for, if any."""
    if hps.get("sagemaker_mpi_enabled"):
        return Backend.MPI
    if hps.get("sagemaker_torch_distributed_enabled") or hps.get("sagemaker_pytorch_ddp_enabled"):
        return Backend.TORCH
    return None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_kind(value)}")
    return value


def _file_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("must be a file path")
    return Path(value)


def _hosts_from(value: Any) -> str:
    """A `--hosts-from` value (`launcher.platforms.model.Kind`), checked here so that a typo
    is refused like any setting; the platform is read only by `launcher run`."""
    choices = ("auto", "sagemaker", "slurm", "kubeflow", "indexed-job", "jobset", "static")
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return text


# The table: one row per setting, in the order `resolve` reads them and docs/usage.md lists them.
# `cli._add_settings` derives the command-line options from the rows that have a flag, and
# tests/unit/test_settings_table.py checks docs/usage.md against it.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend", "--backend", "LAUNCHER_BACKEND", None, _backend, None,
        "torch, horovod, mpi or none", "B", shown="none for train, torch for run",
    ),
    Setting(
        "procs_per_host", "--nproc-per-host", "LAUNCHER_PROCS_PER_HOST",
        "sagemaker_mpi_num_of_processes_per_host", procs_per_host, _GPU,
        "ranks on this host; gpu/auto: one per visible GPU, else 1", "N|gpu|auto",
    ),
    Setting(
        "grace_s", "--grace-period", "LAUNCHER_GRACE_PERIOD", None, _positive_float,
        DEFAULT_GRACE_S, "seconds between SIGTERM and SIGKILL when stopping ranks", "SECONDS",
    ),
    Setting(
        "log_dir", "--log-dir", "LAUNCHER_LOG_DIR", None, _log_dir, None,
        "also write DIR/rank-N/stdout.log and stderr.log", "DIR", shown="none",
    ),
    Setting(
        "show_ranks", "--ranks", "LAUNCHER_RANKS", None, _ranks, None,
        "show only these ranks on the console (the files get everything)", "0,3", shown="all",
    ),
    Setting(
        "master_port", "--master-port", "LAUNCHER_MASTER_PORT", None, _port, 0,
        "rank 0's torch store port", "PORT", shown="0: a free port",
    ),
    Setting(
        "peer_timeout_s", None, "LAUNCHER_PEER_TIMEOUT", None, _peer_timeout,
        DEFAULT_PEER_TIMEOUT_S,
        "seconds to wait for every host (and, for mpi, every follower's sshd)",
    ),
    Setting(
        "heartbeat_timeout_s", None, "LAUNCHER_HEARTBEAT_TIMEOUT", None, _heartbeat_timeout,
        DEFAULT_HEARTBEAT_TIMEOUT_S, "seconds of silence after which a host counts as lost",
    ),
    Setting(
        "control_port", None, "LAUNCHER_CONTROL_PORT", None, _control_port,
        DEFAULT_CONTROL_PORT, "the leader's control port (every host must use the same one)",
    ),
    Setting(
        "leader_addr", None, "LAUNCHER_LEADER_ADDR", None, _text, "",
        "followers connect here (when the host names do not resolve)",
        shown="the leader's host name",
    ),
    Setting(
        "job_token", None, "LAUNCHER_JOB_TOKEN", None, _text, None,
        "the secret that authenticates the control channel; the same on every host."
        " Never passed on to the ranks or to pip",
        shown="derived, not secret",
    ),
    Setting(
        "host_name", None, "LAUNCHER_HOST_NAME", None, _text, "",
        "launcher run: the host name in prefixes", shown="node name",
    ),
    Setting(
        "hang_timeout_s", "--hang-timeout", "LAUNCHER_HANG_TIMEOUT", "launcher_hang_timeout",
        hang_timeout, None,
        "seconds without progress before the job is hung (exit 124); auto: learned, armed once"
        " the job reports progress; 0: off", "SECONDS|auto|0", shown="auto",
    ),
    Setting(
        "max_restarts", "--max-restarts", "LAUNCHER_MAX_RESTARTS", "launcher_max_restarts",
        max_restarts, 0, "restart the whole job this many times after a retryable failure",
        "N",
    ),
    Setting(
        "checkpoint_dir", "--checkpoint-dir", "LAUNCHER_CHECKPOINT_DIR", None, _log_dir, None,
        "the checkpoint folder the ranks get (never cleaned)", "DIR",
        shown="checkpointconfig.json LocalPath, else /opt/ml/checkpoints",
    ),
    Setting(
        "mpi_num_processes", None, "LAUNCHER_MPI_NUM_PROCESSES", "sagemaker_mpi_num_processes",
        _mpi_processes, None, "mpi: the number of processes (-np)", shown="every slot",
        only=Backend.MPI,
    ),
    Setting(
        "mpi_options", None, "LAUNCHER_MPI_OPTIONS", "sagemaker_mpi_custom_mpi_options", str,
        "", "mpi: extra mpirun options; one with the key of a default replaces it",
        only=Backend.MPI,
    ),
    Setting(
        "mpirun", None, "LAUNCHER_MPIRUN", None, _text, "mpirun",
        "mpi: the mpirun program (found on PATH)", only=Backend.MPI,
    ),
    Setting(
        "sshd", None, "LAUNCHER_SSHD", None, _text, "", "mpi: the sshd program",
        shown="sshd on PATH, else /usr/sbin/sshd", only=Backend.MPI,
    ),
    Setting(
        "ssh_port", None, "LAUNCHER_SSH_PORT", None, _port, 0,
        "mpi: the port of each follower's sshd", shown="0: a free port", only=Backend.MPI,
    ),
    Setting(
        "hosts_from", "--hosts-from", "LAUNCHER_HOSTS_FROM", None, _hosts_from, "auto",
        "launcher run: auto, sagemaker, slurm, kubeflow, indexed-job, jobset or static"
        " (this host alone)", "PLATFORM",
    ),
    Setting(
        "job_token_file", "--secret-file", "LAUNCHER_JOB_TOKEN_FILE", None, _file_path, None,
        "a file holding the control channel's secret (a mounted Kubernetes Secret);"
        " LAUNCHER_JOB_TOKEN wins over it", "FILE", shown="none",
    ),
    Setting(
        "preflight", "--preflight", "LAUNCHER_PREFLIGHT", "launcher_preflight", _preflight,
        "off", "check every host, GPU, link and directory before the user's code (exit 78 on"
        " failure; docs/preflight.md)", "off|quick|full",
    ),
    Setting(
        "preflight_min_gbps", "--preflight-min-gbps", "LAUNCHER_PREFLIGHT_MIN_GBPS",
        "launcher_preflight_min_gbps", _positive_number, None,
        "preflight: the cross-host all_reduce busbw floor in GB/s (below it fails, and pairs of"
        " hosts are timed to name the slow one)", "GBPS", shown="none",
    ),
    Setting(
        "preflight_min_tflops", None, "LAUNCHER_PREFLIGHT_MIN_TFLOPS",
        "launcher_preflight_min_tflops", _positive_number, None,
        "preflight: the per-GPU matmul floor in TFLOPS, enforced", shown="per GPU model, warns",
    ),
    Setting(
        "preflight_min_free_gb", None, "LAUNCHER_PREFLIGHT_MIN_FREE_GB",
        "launcher_preflight_min_free_gb", _free_gb, 1.0,
        "preflight: free space every checked directory must have, GB",
    ),
    Setting(
        "preflight_expect_gpus", None, "LAUNCHER_PREFLIGHT_EXPECT_GPUS",
        "launcher_preflight_expect_gpus", _gpu_count, None,
        "preflight: the GPUs every host must have", shown="the same on every host",
    ),
    Setting(
        "preflight_timeout_s", None, "LAUNCHER_PREFLIGHT_TIMEOUT", None, _preflight_timeout,
        120.0, "preflight: seconds before a host's measurements count as failed",
    ),
)  # fmt: skip


def resolve(sources: Sources, *, default_backend: Backend) -> Settings:
    """Every setting from `sources`, row by row of `SETTINGS`. Raises `ConfigError` naming the
    source and key of the first bad value; nothing else escapes, whatever the values.

    The backend's default is the distribution hyperparameters' backend, else
    `default_backend` (the command's). The `mpi` backend's rows are read, and so checked,
    only when the backend is `mpi`, so that a bad one stops `train` before anything starts
    or any host waits for this one, while it cannot stop a job of another backend.
    """
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name == "backend":
            default = sagemaker_backend(sources.hps) or default_backend
            setting = replace(setting, default=default)  # noqa: PLW2901 - the command's default
        elif setting.only is not None and values["backend"] is not setting.only:
            values[setting.name] = setting.default
            continue
        values[setting.name] = sources.read(setting)
    return Settings(**values)


def local_slots(setting: int | str, gpu_count: int) -> int:
    """Ranks on this host: the count given, else one per visible GPU, else one."""
    if isinstance(setting, int):
        return setting
    return gpu_count or 1
