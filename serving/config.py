"""The serving configuration: one frozen value built from the environment, nothing read later.

`load` is pure: the environment, the usable CPU count and the visible GPU ids are passed in, so
every rule here is testable without a machine of that shape. Variables follow the SageMaker
inference toolkit (`SAGEMAKER_*`); the few of our own are prefixed `SERVE_`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ConfigError

DEFAULT_BASE_DIR = "/opt/ml"
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 60.0
# SageMaker real-time endpoints refuse payloads above 6 MB; batch transform may raise it.
DEFAULT_MAX_PAYLOAD_MB = 6.0
DEFAULT_PROGRAM = "inference.py"
DEFAULT_ACCEPT = "application/json"
# Idle keep-alive connections are closed after this long. It also bounds how long a SIGTERM
# drain waits for an idle client to go away, so it is kept short.
KEEPALIVE_S = 5

# Dynamic batching (off by default, as in TorchServe, whose batch_size default is 1). When it is
# on, a batch waits at most this long for more requests; TorchServe's 100 ms is far more than a
# CPU model needs (the added p50 latency is bounded by it).
DEFAULT_BATCH_DELAY_MS = 5.0
BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")
# Multi-model endpoints: no count cap by default (memory decides); keep this much host memory
# available, evicting least recently used models to get it back.
DEFAULT_MME_MIN_FREE_MB = 256

_LOG_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything `serve` needs to start; built once by `load`.

    `preload` means the model is loaded once in the master before the workers fork (memory
    shared copy-on-write); it is off when GPUs are used, because CUDA must not be initialised
    before fork, and then every worker loads its own copy after pinning its GPU.
    """

    base_dir: Path
    model_dir: Path
    code_dir: Path
    program: str
    program_required: bool
    host: str
    port: int
    workers: int
    gpu_ids: tuple[str, ...]
    threads_per_worker: int
    timeout_s: float
    max_payload_bytes: int
    default_accept: str
    preload: bool
    keepalive_s: int
    log_level: str
    # Dynamic batching (`serving.batching`): 1 = off.
    batch_size: int = 1
    max_batch_delay_s: float = DEFAULT_BATCH_DELAY_MS / 1000
    # Batch transform (`serving.records`): what /execution-parameters reports, and whether
    # CSV / JSON Lines bodies are split into records for user hooks.
    batch_strategy: str = "MULTI_RECORD"
    split_records: bool = False
    # Multi-model endpoints (`serving.multimodel`).
    multi_model: bool = False
    models_dir: Path = Path(DEFAULT_BASE_DIR) / "models"
    mme_max_models: int = 0  # models loaded at once per worker; 0 = no count cap
    mme_min_free_bytes: int = DEFAULT_MME_MIN_FREE_MB * 1024 * 1024

    @property
    def program_path(self) -> Path:
        """Where the user's inference module is looked for (it may not exist)."""
        return self.code_dir / self.program

    def gpu_for_slot(self, slot: int) -> str | None:
        """The GPU id worker `slot` pins itself to, or None on a CPU-only host."""
        if not self.gpu_ids:
            return None
        return self.gpu_ids[slot % len(self.gpu_ids)]


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected an integer") from None
    if not low <= value <= high:
        raise ConfigError(name, raw, f"expected an integer in [{low}, {high}]")
    return value


def _float(
    environ: Mapping[str, str],
    name: str,
    default: float,
    accept: Callable[[float], bool],
    expected: str,
) -> float:
    """`name`'s value as a finite float that `accept`s, else `default` when unset or blank.
    Raises ConfigError (naming the variable, the value and `expected`) for anything else."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, "expected a number") from None
    if not math.isfinite(value) or not accept(value):
        raise ConfigError(name, raw, expected)
    return value


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    return _float(environ, name, default, lambda v: v > 0, "expected a positive number")


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, raw, "expected true or false")


def _batch_strategy(environ: Mapping[str, str]) -> tuple[str, bool]:
    """(what /execution-parameters reports, whether records are split): splitting only when
    batch transform named MULTI_RECORD explicitly, as it does in the container's environment."""
    name = "SAGEMAKER_BATCH_STRATEGY"
    raw = environ.get(name, "").strip().upper().replace("-", "_")
    if not raw:
        return "MULTI_RECORD", False
    if raw == "MULTIRECORD":
        raw = "MULTI_RECORD"
    elif raw == "SINGLERECORD":
        raw = "SINGLE_RECORD"
    if raw not in BATCH_STRATEGIES:
        raise ConfigError(name, environ[name], f"expected one of {', '.join(BATCH_STRATEGIES)}")
    return raw, raw == "MULTI_RECORD"


def _batch_size(environ: Mapping[str, str]) -> int:
    # SERVE_BATCH_SIZE wins over the TorchServe-toolkit name it mirrors.
    size = _int(environ, "SAGEMAKER_TS_BATCH_SIZE", 1, 1, 1024)
    return _int(environ, "SERVE_BATCH_SIZE", size, 1, 1024)


def _batch_delay_s(environ: Mapping[str, str]) -> float:
    delay = _non_negative_float(environ, "SAGEMAKER_TS_MAX_BATCH_DELAY", DEFAULT_BATCH_DELAY_MS)
    return _non_negative_float(environ, "SERVE_MAX_BATCH_DELAY_MS", delay) / 1000


def _non_negative_float(environ: Mapping[str, str], name: str, default: float) -> float:
    return _float(
        environ, name, default, lambda v: 0 <= v <= 60_000, "expected a number in [0, 60000]"
    )


def _log_level(environ: Mapping[str, str]) -> str:
    name = "SAGEMAKER_CONTAINER_LOG_LEVEL"
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return "info"
    if raw.isdigit():
        # The toolkit passes Python's numeric levels (20 = INFO); round down to a known one.
        number = int(raw)
        known = [level for level in _LOG_LEVELS if level <= number]
        return _LOG_LEVELS[max(known)] if known else "debug"
    if raw in _LOG_LEVELS.values():
        return raw
    raise ConfigError(name, raw, "expected a numeric level (10-50) or a level name")


def _code_dir(environ: Mapping[str, str], model_dir: Path) -> Path:
    name = "SAGEMAKER_SUBMIT_DIRECTORY"
    raw = environ.get(name, "").strip()
    if not raw:
        return model_dir / "code"
    if "://" in raw:
        # The PyTorch SDK repacks inference code into model.tar.gz under code/ and points this
        # variable there; remote URIs are a training-time feature.
        raise ConfigError(name, raw, "only a local directory is supported by serve")
    return Path(raw)


def load(environ: Mapping[str, str], cpu_count: int, gpu_ids: Sequence[str] = ()) -> ServeConfig:
    """Build the configuration from `environ`, `cpu_count` usable cores and visible GPUs.

    Raises ConfigError naming the variable and value for any malformed setting. Workers
    default to one per GPU, else one per core; each worker gets cores/workers intra-op
    threads (at least 1) unless OMP_NUM_THREADS says otherwise.
    """
    base_dir = Path(environ.get("SAGEMAKER_BASE_DIR", "").strip() or DEFAULT_BASE_DIR)
    model_dir = base_dir / "model"
    cores = max(1, cpu_count)
    workers = _int(environ, "SAGEMAKER_MODEL_SERVER_WORKERS", len(gpu_ids) or cores, 1, 1024)
    threads = _int(environ, "OMP_NUM_THREADS", max(1, cores // workers), 1, 1024)
    timeout_s = _positive_float(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S)
    # The toolkit lets the *_SECONDS spelling override the plain one.
    timeout_s = _positive_float(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", timeout_s)
    payload_mb = _positive_float(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB)
    strategy, split = _batch_strategy(environ)
    multi_model = _flag(environ, "SAGEMAKER_MULTI_MODEL", False)
    min_free_mb = _int(environ, "SERVE_MME_MIN_FREE_MEMORY_MB", DEFAULT_MME_MIN_FREE_MB, 0, 1 << 40)
    program = environ.get("SAGEMAKER_PROGRAM", "").strip() or DEFAULT_PROGRAM
    if Path(program).name != program:
        raise ConfigError("SAGEMAKER_PROGRAM", program, "expected a file name, not a path")
    return ServeConfig(
        base_dir=base_dir,
        model_dir=model_dir,
        code_dir=_code_dir(environ, model_dir),
        program=program,
        # A module named explicitly must exist; the default model/code/inference.py may not.
        program_required=bool(
            environ.get("SAGEMAKER_PROGRAM", "").strip()
            or environ.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
        ),
        host=environ.get("SERVE_BIND_HOST", "").strip() or "0.0.0.0",  # noqa: S104
        port=_int(environ, "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT, 1, 65535),
        workers=workers,
        gpu_ids=tuple(gpu_ids),
        threads_per_worker=threads,
        timeout_s=timeout_s,
        max_payload_bytes=int(payload_mb * 1024 * 1024),
        default_accept=environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip()
        or DEFAULT_ACCEPT,
        # Preloading is never done with GPUs: CUDA initialised in the master breaks the forked
        # workers
        # before fork. Multi-model endpoints start with no model at all.
        preload=_flag(environ, "SERVE_PRELOAD_MODEL", True) and not gpu_ids and not multi_model,
        keepalive_s=KEEPALIVE_S,
        log_level=_log_level(environ),
        batch_size=_batch_size(environ),
        max_batch_delay_s=_batch_delay_s(environ),
        batch_strategy=strategy,
        split_records=split,
        multi_model=multi_model,
        # The toolkit's model_dir in this mode; SageMaker mounts every model under it.
        models_dir=base_dir / "models",
        mme_max_models=_int(environ, "SERVE_MME_MAX_MODELS", 0, 0, 100_000),
        mme_min_free_bytes=min_free_mb * 1024 * 1024,
    )
