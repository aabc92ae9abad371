"""The SageMaker configuration a platform is given as: the same `SM_*` set `train` gives.

`job_config` builds, in memory, the `JobConfig` of the equivalent SageMaker tree (one
homogeneous instance group holding every host, the current host, the entry point, no
hyperparameters), so that `sagemaker.smenv` computes the variables for `launcher run` exactly
as for `train`. The paths are under `SAGEMAKER_BASE_DIR` (default /opt/ml) whether or not it
exists: a script that writes its model to `SM_MODEL_DIR` writes where it always did. Data
mounted as `input/data/<channel>` (as SageMaker lays channels out) becomes the channel's
`SM_CHANNEL_<NAME>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.platforms.model import Platform
from launcher.sagemaker import config
from launcher.sagemaker.tree import Hyperparameters, InstanceGroup, JobConfig, Paths, ResourceConfig

__all__ = ["GROUP", "INSTANCE_TYPE", "job_config"]

GROUP = "homogeneousCluster"  # SageMaker's name for the one group of a homogeneous cluster
INSTANCE_TYPE = "local"  # what SageMaker's local mode reports: no instance type is known


def job_config(
    platform: Platform,
    entry_point: str,
    environ: Mapping[str, str],
    channels: tuple[str, ...] = (),
) -> JobConfig:
    """The `JobConfig` of a SageMaker tree equivalent to `platform`, with `channels` (the
    folders under `input/data`, as SageMaker lays them out) as File-mode input channels.
    Pure."""
    hosts = platform.hosts
    interface = environ.get("LAUNCHER_INTERFACE", "eth0")
    group_raw: dict[str, Any] = {
        "instance_group_name": GROUP,
        "instance_type": INSTANCE_TYPE,
        "hosts": list(hosts),
    }
    raw: dict[str, Any] = {
        "current_host": platform.current_host,
        "current_group_name": GROUP,
        "current_instance_type": INSTANCE_TYPE,
        "hosts": list(hosts),
        "instance_groups": [group_raw],
        "network_interface_name": interface,
    }
    group = InstanceGroup(GROUP, INSTANCE_TYPE, hosts, group_raw)
    resources = ResourceConfig(
        platform.current_host, hosts, GROUP, INSTANCE_TYPE, interface, (group,), (), raw
    )
    base = config.base_dir_from(environ)
    job = platform.job_name
    return JobConfig(
        paths=Paths(base),
        resources=resources,
        hyperparameters=Hyperparameters({}, {}),
        input_data_config={name: {"TrainingInputMode": "File"} for name in channels},
        entry_point=Path(entry_point).name,
        submit_dir=str(Path(entry_point).parent),
        framework_module=None,
        log_level=20,
        training_job_name=job,
        sagemaker_job_name=job,
        region=environ.get("AWS_REGION", ""),
        distribution_instance_groups=(GROUP,),
        distribution_hosts=hosts,
    )
