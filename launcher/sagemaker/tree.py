"""The SageMaker container tree as frozen data: paths, cluster layout, hyperparameters, job.

Types and constants only; `config.load` builds them and `files` parses the files into them.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASE_DIR = "/opt/ml"
DEFAULT_GROUP = "homogeneousCluster"
DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_INTERFACE = "eth0"
DEFAULT_LOG_LEVEL = 20
# SageMaker's own limits keep these files to kilobytes; anything this large is a broken tree,
# and refusing it early beats decoding hundreds of megabytes of JSON.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# How deeply a value may nest lists and objects, counted from the value of a top-level key (or
# of a JSON-encoded hyperparameter string once decoded). SageMaker's own files nest four levels;
# the bound keeps every recursive step after loading (json.dumps into SM_TRAINING_ENV, which
# adds three levels, repr, our own checks) far below Python's recursion limit of 1000.
MAX_NESTING = 64

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
# The launcher's own hyperparameters (`launcher_hang_timeout`): settings for the launcher, like
# `sagemaker_*`, so never arguments or SM_HP_* of the user's script. The toolkit does not know
# them (it would pass them on); a script written for it does not expect them either.
LAUNCHER_PREFIX = "launcher_"
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
