"""Read the SageMaker container tree (`$SAGEMAKER_BASE_DIR`, default /opt/ml) into frozen data.

`load(base_dir, environ)` is the only entry point. It reads the three JSON files under
`input/config/`, decodes hyperparameters the way sagemaker-training 5.1.4 does, validates every
key it relies on, and returns a `JobConfig`. It never touches `os.environ` (the environment is
an argument), never writes, and does nothing at import time.

Failure behaviour: any problem raises `ConfigError` naming the file and the key, with one line
of text that tells the user what is wrong (exit code 2 in the CLI). Nothing is half-loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from launcher.errors import ConfigError
from launcher.tree import (
    DEFAULT_BASE_DIR,
    DEFAULT_LOG_LEVEL,
    DISTRIBUTION_FLAGS,
    MAX_CONFIG_BYTES,
    RESERVED_HYPERPARAMETERS,
    Hyperparameters,
    InstanceGroup,
    JobConfig,
    Paths,
    ResourceConfig,
)
from launcher.treefiles import (
    decode_hyperparameter,
    hyperparameters,
    input_data,
    read_object,
    resources,
    str_hp,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "RESERVED_HYPERPARAMETERS",
    "Hyperparameters",
    "InstanceGroup",
    "JobConfig",
    "Paths",
    "ResourceConfig",
    "base_dir_from",
    "decode_hyperparameter",
    "distributed",
    "load",
]


def base_dir_from(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR)


def load(base_dir: Path, environ: Mapping[str, str]) -> JobConfig:
    """Read and validate the tree at `base_dir`. Raises `ConfigError` naming file and key."""
    paths = Paths(base_dir)
    hps_path = paths.input_config_dir / "hyperparameters.json"
    res_path = paths.input_config_dir / "resourceconfig.json"
    data_path = paths.input_config_dir / "inputdataconfig.json"
    raw_hps = read_object(hps_path)
    cluster = resources(res_path, read_object(res_path))
    channels = input_data(data_path, read_object(data_path))
    hps = hyperparameters(hps_path, raw_hps)

    entry_point = environ.get("SAGEMAKER_PROGRAM") or str_hp(hps_path, hps, "sagemaker_program")
    submit_dir = str_hp(hps_path, hps, "sagemaker_submit_directory") or str(paths.code_dir)
    log_level = hps.sagemaker.get("sagemaker_container_log_level", DEFAULT_LOG_LEVEL)
    if isinstance(log_level, bool) or not isinstance(log_level, int):
        raise ConfigError(
            hps_path,
            "sagemaker_container_log_level",
            "must be an integer level",
            hint="use a logging level number, e.g. 20 for INFO",
        )
    region = str_hp(hps_path, hps, "sagemaker_region") or _default_region(environ)
    groups = _distribution_groups(hps_path, hps, cluster)
    return JobConfig(
        paths=paths,
        resources=cluster,
        hyperparameters=hps,
        input_data_config=channels,
        entry_point=entry_point,
        submit_dir=submit_dir,
        framework_module=environ.get("SAGEMAKER_TRAINING_MODULE") or None,
        log_level=log_level,
        training_job_name=environ.get("TRAINING_JOB_NAME"),
        sagemaker_job_name=str_hp(hps_path, hps, "sagemaker_job_name"),
        region=region,
        distribution_instance_groups=groups,
        distribution_hosts=_distribution_hosts(cluster, groups),
    )


def _distribution_groups(
    path: Path, hps: Hyperparameters, resources: ResourceConfig
) -> tuple[str, ...]:
    explicit = hps.sagemaker.get("sagemaker_distribution_instance_groups")
    if explicit is not None:
        if not isinstance(explicit, list) or not all(isinstance(g, str) for g in explicit):
            raise ConfigError(
                path,
                "sagemaker_distribution_instance_groups",
                "must be a list of group names",
                hint='a JSON-encoded list of instance_group_name values, e.g. "[\\"group-a\\"]"',
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


def distributed(job: JobConfig) -> JobConfig:
    """`job` as if a distribution flag were set: the current group takes part in distribution.

    For a backend chosen explicitly (`--backend`, `LAUNCHER_BACKEND`) where no `sagemaker_*`
    distribution hyperparameter is set (DESIGN.md decision 5).
    """
    groups = (job.resources.current_group_name,)
    return dataclasses.replace(
        job,
        distribution_instance_groups=groups,
        distribution_hosts=_distribution_hosts(job.resources, groups),
    )
