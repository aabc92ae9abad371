"""Read the SageMaker container tree (`$SAGEMAKER_BASE_DIR`, default /opt/ml) into frozen data.

`load(base_dir, environ)` is the only entry point. It reads the three JSON files under
`input/config/`, decodes hyperparameters the way sagemaker-training 5.1.4 does, validates every
key it relies on, and returns a `JobConfig`. It never touches `os.environ` (the environment is
an argument), never writes, and does nothing at import time.

Failure behaviour: any problem raises `ConfigError` naming the file and the key, with one line
of text that tells the user what is wrong (exit code 2 in the CLI). Nothing is half-loaded.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from launcher.errors import ConfigError

DEFAULT_BASE_DIR = "/opt/ml"
DEFAULT_GROUP = "homogeneousCluster"
DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_INTERFACE = "eth0"
DEFAULT_LOG_LEVEL = 20
# SageMaker's own limits keep these files to kilobytes; anything this large is a broken tree,
# and refusing it early beats decoding hundreds of megabytes of JSON.
MAX_CONFIG_BYTES = 4 * 1024 * 1024

# Reserved besides the `sagemaker_` prefix (the toolkit's params.SAGEMAKER_HYPERPARAMETERS).
RESERVED_HYPERPARAMETERS = frozenset(
    {
        "sagemaker_program",
        "sagemaker_submit_directory",
        "sagemaker_enable_cloudwatch_metrics",
        "sagemaker_region",
        "sagemaker_container_log_level",
        "sagemaker_job_name",
        "default_user_module_name",
        "_tuning_objective_metric",
        "sagemaker_s3_output",
    }
)
# The flags that mark the current instance group as distributed (sagemaker-contract §10.1).
DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_torch_distributed_enabled",
    "sagemaker_pytorch_ddp_enabled",
)


@dataclass(frozen=True, slots=True)
class Paths:
    """Every path of the tree, derived from the base directory."""

    base: Path

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def input_config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    @property
    def code_dir(self) -> Path:
        return self.base / "code"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.base / "output" / "data"

    @property
    def output_intermediate_dir(self) -> Path:
        return self.base / "output" / "intermediate"

    def channel_dir(self, name: str) -> Path:
        return self.data_dir / name


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    name: str
    instance_type: str
    hosts: tuple[str, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    """resourceconfig.json. `raw` keeps the file as read (SM_RESOURCE_CONFIG echoes it)."""

    current_host: str
    hosts: tuple[str, ...]
    current_group_name: str
    current_instance_type: str
    network_interface_name: str
    instance_groups: tuple[InstanceGroup, ...]
    topology: tuple[Any, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """hyperparameters.json, decoded. `user` reaches argv and SM_HP_*; `sagemaker` does not."""

    user: Mapping[str, Any]
    sagemaker: Mapping[str, Any]

    @property
    def framework_params(self) -> dict[str, Any]:
        """SM_FRAMEWORK_PARAMS: `sagemaker_*` keys that are not reserved names."""
        return {k: v for k, v in self.sagemaker.items() if k not in RESERVED_HYPERPARAMETERS}

    def flag(self, key: str) -> bool:
        """A distribution flag is on when its decoded value is truthy (`"false"` is off)."""
        return bool(self.sagemaker.get(key))


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Everything the SageMaker tree and the environment say about this job on this host."""

    paths: Paths
    resources: ResourceConfig
    hyperparameters: Hyperparameters
    input_data_config: Mapping[str, Any]
    entry_point: str  # "" when none is configured (an error at launch, not at load)
    submit_dir: str  # SM_MODULE_DIR: sagemaker_submit_directory, else the code dir
    framework_module: str | None
    log_level: int
    training_job_name: str | None  # TRAINING_JOB_NAME, only in SM_TRAINING_ENV
    sagemaker_job_name: str
    region: str
    distribution_instance_groups: tuple[str, ...]
    distribution_hosts: tuple[str, ...]

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(sorted(self.input_data_config))

    @property
    def master_host(self) -> str:
        """SageMaker's master election: the first distribution host, else the first host."""
        if self.distribution_hosts:
            return self.distribution_hosts[0]
        return self.resources.hosts[0]

    @property
    def is_master(self) -> bool:
        return self.resources.current_host == self.master_host

    @property
    def in_distribution(self) -> bool:
        """Whether this host takes part in the distributed world (heterogeneous clusters)."""
        return self.resources.current_host in self.distribution_hosts


def base_dir_from(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)


def load(base_dir: Path, environ: Mapping[str, str]) -> JobConfig:
    """Read and validate the tree at `base_dir`. Raises `ConfigError` naming file and key."""
    paths = Paths(base_dir)
    hps_path = paths.input_config_dir / "hyperparameters.json"
    res_path = paths.input_config_dir / "resourceconfig.json"
    data_path = paths.input_config_dir / "inputdataconfig.json"
    raw_hps = _read_object(hps_path)
    resources = _resources(res_path, _read_object(res_path))
    input_data = _input_data(data_path, _read_object(data_path))
    hps = _hyperparameters(hps_path, raw_hps)

    entry_point = environ.get("SAGEMAKER_PROGRAM") or _str_hp(hps_path, hps, "sagemaker_program")
    submit_dir = _str_hp(hps_path, hps, "sagemaker_submit_directory") or str(paths.code_dir)
    log_level = hps.sagemaker.get("sagemaker_container_log_level", DEFAULT_LOG_LEVEL)
    if isinstance(log_level, bool) or not isinstance(log_level, int):
        raise ConfigError(hps_path, "sagemaker_container_log_level", "must be an integer level")
    region = _str_hp(hps_path, hps, "sagemaker_region") or _default_region(environ)
    groups = _distribution_groups(hps_path, hps, resources)
    return JobConfig(
        paths=paths,
        resources=resources,
        hyperparameters=hps,
        input_data_config=input_data,
        entry_point=entry_point,
        submit_dir=submit_dir,
        framework_module=environ.get("SAGEMAKER_TRAINING_MODULE") or None,
        log_level=log_level,
        training_job_name=environ.get("TRAINING_JOB_NAME"),
        sagemaker_job_name=_str_hp(hps_path, hps, "sagemaker_job_name"),
        region=region,
        distribution_instance_groups=groups,
        distribution_hosts=_distribution_hosts(resources, groups),
    )


def _read_object(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(path, None, "is a directory, not a JSON file")
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never end
            raise ConfigError(path, None, "is not a regular file")
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise ConfigError(path, None, "is missing", hint="SageMaker writes it; create it") from None
    except PermissionError:
        raise ConfigError(path, None, "cannot be read (permission denied)") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"is over the {MAX_CONFIG_BYTES}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"is not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise ConfigError(path, str(e), "appears twice") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            path, None, f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise ConfigError(path, None, "nests too deeply") from None
    if not isinstance(value, dict):
        raise ConfigError(path, None, f"must hold a JSON object, not {_kind(value)}")
    return value


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def decode_hyperparameter(value: Any) -> Any:
    """SageMaker's decoding: JSON-decode strings, keep the raw value when that fails."""
    if not isinstance(value, str):
        return value  # the toolkit's json.loads raises TypeError and keeps it as is
    try:
        return json.loads(value)
    except ValueError:
        return value


def _unfit_for_environ(value: Any) -> str | None:
    """Why `value` (or a string inside it) cannot reach environ or argv; None when it can."""
    if isinstance(value, str):
        if "\0" in value:
            return "holds a NUL character"
        # json.loads turns "\\ud800" into a lone surrogate, which no environment can hold.
        return (
            None
            if value.isascii() or value.isprintable() or _utf8(value)
            else "holds a lone surrogate"
        )
    if isinstance(value, dict | list):
        parts = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return next((p for p in map(_unfit_for_environ, parts) if p), None)
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hyperparameters(path: Path, raw: dict[str, Any]) -> Hyperparameters:
    user: dict[str, Any] = {}
    sagemaker: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "":
            raise ConfigError(path, '""', "empty hyperparameter names cannot become arguments")
        if "=" in key:  # SM_HP_<KEY> would not be a valid environment variable name
            raise ConfigError(path, key, "hyperparameter names cannot contain '='")
        decoded = decode_hyperparameter(value)
        problem = _unfit_for_environ(key) or _unfit_for_environ(decoded)
        if problem:
            raise ConfigError(path, key if key.isprintable() else repr(key), problem)
        if key.startswith("sagemaker_") or key in RESERVED_HYPERPARAMETERS:
            sagemaker[key] = decoded
        else:
            user[key] = decoded
    return Hyperparameters(MappingProxyType(user), MappingProxyType(sagemaker))


def _str_hp(path: Path, hps: Hyperparameters, key: str) -> str:
    value = hps.sagemaker.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(path, key, f"must be a string, not {_kind(value)}")
    return value


def _host_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, key, f"must be a list of host names, not {_kind(value)}")
    if not value:
        raise ConfigError(path, key, "must name at least one host")
    seen: set[str] = set()
    for host in value:
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(path, key, f"holds an invalid host name {host!r}")
        if any(c.isspace() for c in host):
            raise ConfigError(path, key, f"host name {host!r} contains whitespace")
        if not host.isprintable() or _unfit_for_environ(host):
            raise ConfigError(path, key, f"host name {host!r} contains control characters")
        if host in seen:
            raise ConfigError(path, key, f"names host {host!r} twice")
        seen.add(host)
    return tuple(value)


def _opt_str(path: Path, raw: Mapping[str, Any], key: str, default: str, where: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(path, where + key, f"must be a string, not {_kind(value)}")
    if not value:
        raise ConfigError(path, where + key, "must not be empty")
    problem = _unfit_for_environ(value)
    if problem:
        raise ConfigError(path, where + key, problem)
    return value


def _resources(path: Path, raw: dict[str, Any]) -> ResourceConfig:
    for key in ("current_host", "hosts"):
        if key not in raw:
            raise ConfigError(path, key, "is missing")
    hosts = _host_list(path, "hosts", raw["hosts"])
    current = raw["current_host"]
    if not isinstance(current, str) or not current:
        raise ConfigError(path, "current_host", f"must be a host name, not {_kind(current)}")
    if current not in hosts:
        raise ConfigError(path, "current_host", f"{current!r} is not one of hosts {list(hosts)}")
    groups_raw = raw.get("instance_groups", [])
    if not isinstance(groups_raw, list):
        raise ConfigError(path, "instance_groups", f"must be a list, not {_kind(groups_raw)}")
    groups: list[InstanceGroup] = []
    for i, group in enumerate(groups_raw):
        key = f"instance_groups[{i}]"
        if not isinstance(group, dict):
            raise ConfigError(path, key, f"must be an object, not {_kind(group)}")
        name = _opt_str(path, group, "instance_group_name", "", where=f"{key}.")
        if any(g.name == name for g in groups):
            raise ConfigError(path, f"{key}.instance_group_name", f"{name!r} is used twice")
        group_hosts = _host_list(path, f"{key}.hosts", group.get("hosts"))
        strangers = [h for h in group_hosts if h not in hosts]
        if strangers:
            raise ConfigError(path, f"{key}.hosts", f"{strangers} are not in hosts")
        itype = group.get("instance_type", DEFAULT_INSTANCE_TYPE)
        groups.append(InstanceGroup(name, str(itype), group_hosts, MappingProxyType(group)))
    topology = raw.get("topology", [])
    if not isinstance(topology, list):
        raise ConfigError(path, "topology", f"must be a list, not {_kind(topology)}")
    return ResourceConfig(
        current_host=current,
        hosts=hosts,
        current_group_name=_opt_str(path, raw, "current_group_name", DEFAULT_GROUP),
        current_instance_type=_opt_str(path, raw, "current_instance_type", DEFAULT_INSTANCE_TYPE),
        network_interface_name=_opt_str(path, raw, "network_interface_name", DEFAULT_INTERFACE),
        instance_groups=tuple(groups),
        topology=tuple(topology),
        raw=MappingProxyType(raw),
    )


def _input_data(path: Path, raw: dict[str, Any]) -> Mapping[str, Any]:
    for name, spec in raw.items():
        # The name becomes a path component and part of an environment variable name.
        bad = not name or "/" in name or "=" in name or name in (".", "..")
        if bad or not name.isprintable() or _unfit_for_environ(name):
            raise ConfigError(path, repr(name), "is not a valid channel name")
        if not isinstance(spec, dict):
            raise ConfigError(path, name, f"must be an object, not {_kind(spec)}")
    return MappingProxyType(raw)


def _distribution_groups(
    path: Path, hps: Hyperparameters, resources: ResourceConfig
) -> tuple[str, ...]:
    explicit = hps.sagemaker.get("sagemaker_distribution_instance_groups")
    if explicit is not None:
        if not isinstance(explicit, list) or not all(isinstance(g, str) for g in explicit):
            raise ConfigError(
                path, "sagemaker_distribution_instance_groups", "must be a list of group names"
            )
        return tuple(explicit)
    if any(hps.flag(flag) for flag in DISTRIBUTION_FLAGS):
        return (resources.current_group_name,)
    return ()


def _distribution_hosts(resources: ResourceConfig, groups: tuple[str, ...]) -> tuple[str, ...]:
    if not resources.instance_groups:
        return resources.hosts
    return tuple(h for g in resources.instance_groups if g.name in groups for h in g.hosts)


def _default_region(environ: Mapping[str, str]) -> str:
    # boto3's default region without importing boto3 (150 ms). boto3 reads AWS_DEFAULT_REGION
    # and ignores AWS_REGION (checked against the toolkit: AWS_REGION alone gives an empty
    # SAGEMAKER_REGION). Its ~/.aws/config fallback is not read (docs/compatibility.md).
    return environ.get("AWS_DEFAULT_REGION") or ""
