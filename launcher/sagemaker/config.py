"""Read the SageMaker container tree (`$SAGEMAKER_BASE_DIR`, default /opt/ml) into frozen data.

`load(base_dir, environ)` is the only entry point. It reads the three JSON files under
`input/config/`, decodes hyperparameters the way sagemaker-training 5.1.4 does, validates every
key it relies on, and returns a `JobConfig`. It never touches `os.environ` (the environment is
an argument), never writes, and does nothing at import time.

Failure behaviour: any problem raises `ConfigError` naming the file and the key, with one line
of text that tells the user what is wrong (exit code 2 in the CLI). Nothing is half-loaded.
No other exception leaves `load` for any content of the three files or of the environment:
values nest at most `MAX_NESTING` levels, and the SM_* variables and user arguments that the
job will be given are measured here, so that a value too large for `execve` is refused now,
naming its key, instead of failing every rank's start with E2BIG.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError
from launcher.sagemaker import smenv
from launcher.sagemaker.files import (
    decode_hyperparameter,
    hyperparameters,
    input_data,
    key_text,
    read_object,
    resources,
    str_hp,
)
from launcher.sagemaker.tree import (
    DEFAULT_BASE_DIR,
    DEFAULT_LOG_LEVEL,
    DISTRIBUTION_FLAGS,
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    RESERVED_HYPERPARAMETERS,
    Hyperparameters,
    InstanceGroup,
    JobConfig,
    Paths,
    ResourceConfig,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_NESTING",
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
    job = JobConfig(
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
    _check_sizes(job, environ)
    return job


_TOO_LARGE_HINT = (
    "execve cannot pass it to the job: keep hyperparameters short and pass data through an"
    " input channel or a file in the code"
)


def _check_sizes(job: JobConfig, environ: Mapping[str, str]) -> None:
    """Refuse a job whose SM_* variables or user arguments `execve` would refuse (E2BIG).

    Measures what `smenv` will build (with zero GPUs and CPUs: the real counts add a few
    digits, covered by the slack). A hyperparameter too large for its own SM_HP_* variable or
    argument is named; otherwise the source that takes most of the variable (or of the total)
    that is too large is named: a file and, when one key takes most of it, that key, or an
    environment variable.
    """
    slack = 256
    string_limit = smenv.MAX_STRING_BYTES - slack
    hps_path = job.paths.input_config_dir / "hyperparameters.json"
    user = job.hyperparameters.user
    argv = smenv.user_args(user)
    for i, key in enumerate(sorted(user)):  # user_args gives `--key value` in sorted key order
        variable = f"SM_HP_{key.upper()}"
        sizes = {
            _short(variable): smenv.exec_bytes(smenv.encode_value(user[key]), variable),
            "its argument": max(smenv.exec_bytes(argv[2 * i]), smenv.exec_bytes(argv[2 * i + 1])),
        }
        what, size = max(sizes.items(), key=lambda item: item[1])
        if size > string_limit:
            raise ConfigError(
                hps_path,
                key_text(key),
                f"is too large: {what} would be {size} bytes, over the {string_limit} allowed",
                hint=_TOO_LARGE_HINT,
            )
    env = smenv.sm_environment(job, num_gpus=0, num_cpus=0, environ=environ)
    sizes = {name: smenv.exec_bytes(value, name) for name, value in env.items()}
    name = max(sizes, key=sizes.__getitem__)
    size, value = sizes[name], env[name]
    if size > string_limit:
        raise ConfigError(
            *_main_source(job, environ, [value]),
            f"is too large: {_short(name)}, which holds it, would be {size} bytes,"
            f" over the {string_limit} allowed",
            hint=_TOO_LARGE_HINT,
        )
    total = sum(sizes.values()) + sum(smenv.exec_bytes(a) for a in argv)
    if total > smenv.MAX_TOTAL_BYTES:
        raise ConfigError(
            *_main_source(job, environ, [*env.values(), *argv]),
            f"is too large: the SM_* variables and arguments would take {total} bytes,"
            f" over the {smenv.MAX_TOTAL_BYTES} allowed",
            hint=_TOO_LARGE_HINT,
        )


def _short(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:37]}..."


def _main_source(
    job: JobConfig, environ: Mapping[str, str], texts: list[str]
) -> tuple[str, str | None]:
    """The source that takes most of `texts` (only computed when they are too large): a file,
    with the key that takes most of that file's share when one does, or an environment
    variable. An estimate: a file's share is the encoded size of its entries."""
    config_dir = job.paths.input_config_dir
    files: dict[Path, list[Mapping[str, Any]]] = {
        config_dir / "hyperparameters.json": [
            job.hyperparameters.user,
            job.hyperparameters.sagemaker,
        ],
        config_dir / "resourceconfig.json": [job.resources.raw],
        config_dir / "inputdataconfig.json": [job.input_data_config],
    }
    shares: list[tuple[int, str, str | None]] = []
    for path, mappings in files.items():
        entries = [
            (len(key) + len(smenv.encode_value(value)), key)
            for mapping in mappings
            for key, value in mapping.items()
        ]
        total = sum(size for size, _ in entries)
        biggest, name = max(entries, default=(0, ""))
        shares.append((total, str(path), key_text(name) if 2 * biggest > total else None))
    for variable in ("SAGEMAKER_BASE_DIR", "SAGEMAKER_PROGRAM", "TRAINING_JOB_NAME"):
        text = environ.get(variable, "")
        if len(text) >= 16:  # short values are common substrings, and never the problem
            count = sum(t.count(text) for t in texts)
            shares.append((len(text) * count, "environment", variable))
    _, where, main_key = max(shares, key=lambda share: share[0])
    return where, main_key


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
