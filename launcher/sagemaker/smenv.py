"""The SM_* environment and argv a user process receives, exactly as sagemaker-training 5.1.4.

Pure functions of a `JobConfig` plus the host facts (GPU and CPU counts) that the caller has
already discovered. The encodings follow `sagemaker_training.mapping` (sagemaker-contract
§5-§6): names are `SM_` + upper-cased key with no sanitising (hyphens kept), strings pass
unchanged, `None` is empty, everything else is compact sorted ASCII JSON.

Every value reaching here comes from `config.load`, which bounds how deeply it nests
(`tree.MAX_NESTING`), so the JSON encoding and `str` of a value cannot exhaust the recursion
limit, and which checks with `exec_bytes` that the variables and arguments fit what `execve`
accepts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

from launcher.sagemaker.tree import JobConfig

# Linux refuses execve with E2BIG when one argument or environment string, its NUL included, is
# longer than MAX_ARG_STRLEN (32 pages: 131072 bytes), or when all of them together exceed
# ARG_MAX (a quarter of the stack limit: 2 MiB under the usual 8 MiB).
MAX_STRING_BYTES = 131072
# The share of ARG_MAX that the SM_* variables and the user's arguments may take together; the
# rest is for the environment `train` inherits and the variables the launcher adds per rank.
MAX_TOTAL_BYTES = 1024 * 1024


def exec_bytes(text: str, name: str = "") -> int:
    """What one argv string, or the environment string `name=text`, costs execve in bytes."""
    size = len(text) if text.isascii() else len(os.fsencode(text))  # the common case first
    if name:
        size += (len(name) if name.isascii() else len(os.fsencode(name))) + 1
    return size + 1


def encode_value(value: Any) -> str:
    """One environment value, encoded like `mapping.to_env_vars`."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _arg_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None:
        return ""
    return str(value)


def _arg_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return _arg_text(value)


def user_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """argv from user hyperparameters: sorted keys, `--key value`, `-k value` for one letter.

    Every key is followed by exactly one value element, even an empty one; booleans are
    `True`/`False` (Python's `str`), dicts `k=v,k=v` with sorted keys.
    """
    argv: list[str] = []
    for key in sorted(hyperparameters):
        name = _arg_text(key)
        argv.append(f"-{name}" if len(name) == 1 else f"--{name}")
        argv.append(_arg_value(hyperparameters[key]))
    return argv


def is_modelparallel_enabled(environ: Mapping[str, str]) -> bool | str | None:
    # The toolkit evaluates `mp and mp != "{}"`, so unset gives None and empty gives "".
    mp = environ.get("SM_HP_MP_PARAMETERS")
    return mp and mp != "{}"


def training_env(
    job: JobConfig, *, num_gpus: int, num_cpus: int, environ: Mapping[str, str]
) -> dict[str, Any]:
    """The 37 keys of SM_TRAINING_ENV (sagemaker-contract §5.3), with `None` kept as null."""
    res = job.resources
    paths = job.paths
    groups_dict = {g.name: dict(g.raw) for g in res.instance_groups}
    current_group = groups_dict.get(res.current_group_name)
    entry = job.entry_point or None
    return {
        "additional_framework_parameters": job.hyperparameters.framework_params,
        "channel_input_dirs": {c: str(paths.channel_dir(c)) for c in job.channels},
        "current_host": res.current_host,
        "current_instance_group": res.current_group_name,
        "current_instance_group_hosts": list(current_group["hosts"]) if current_group else [],
        "current_instance_type": res.current_instance_type,
        "distribution_hosts": list(job.distribution_hosts),
        "distribution_instance_groups": list(job.distribution_instance_groups),
        "framework_module": job.framework_module,
        "hosts": list(res.hosts),
        "hyperparameters": dict(job.hyperparameters.user),
        "input_config_dir": str(paths.input_config_dir),
        "input_data_config": dict(job.input_data_config),
        "input_dir": str(paths.input_dir),
        "instance_groups": [g.name for g in res.instance_groups],
        "instance_groups_dict": groups_dict,
        "is_hetero": len(res.instance_groups) > 1,
        "is_master": job.is_master,
        "is_modelparallel_enabled": is_modelparallel_enabled(environ),
        "is_smddpmprun_installed": shutil.which("smddpmprun") is not None,
        "is_smddprun_installed": shutil.which("smddprun") is not None,
        "job_name": job.training_job_name,
        "log_level": job.log_level,
        "master_hostname": job.master_host,
        "model_dir": str(paths.model_dir),
        "module_dir": job.submit_dir,
        "module_name": _module_name(entry),
        "network_interface_name": res.network_interface_name,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "num_neurons": _num_neurons(res.current_instance_type),
        "output_data_dir": str(paths.output_data_dir),
        "output_dir": str(paths.output_dir),
        "output_intermediate_dir": str(paths.output_intermediate_dir),
        "resource_config": dict(res.raw),
        "topology": list(res.topology),
        "user_entry_point": entry,
    }


def _module_name(entry: str | None) -> str:
    # The toolkit builds it from str(sagemaker_program): "None" when no entry point is set.
    if entry is None:
        return "None"
    return entry[: -len(".py")] if entry.endswith(".py") else entry


def _num_neurons(instance_type: str) -> int:
    # The toolkit also sums `neuron-ls -j`; no Neuron device is supported by this launcher.
    return 64 if "trn2.48xlarge" in instance_type else 0


def sm_environment(
    job: JobConfig, *, num_gpus: int, num_cpus: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """Every SM_* variable plus CURRENT_HOST, SAGEMAKER_JOB_NAME and SAGEMAKER_REGION."""
    env_dict = training_env(job, num_gpus=num_gpus, num_cpus=num_cpus, environ=environ)
    user = job.hyperparameters.user
    exported: dict[str, Any] = {
        "hosts": env_dict["hosts"],
        "network_interface_name": env_dict["network_interface_name"],
        "hps": dict(user),
        "user_entry_point": job.entry_point,
        "framework_params": env_dict["additional_framework_parameters"],
        "resource_config": env_dict["resource_config"],
        "input_data_config": env_dict["input_data_config"],
        "output_data_dir": env_dict["output_data_dir"],
        "channels": list(job.channels),
        "current_host": env_dict["current_host"],
        "current_instance_type": env_dict["current_instance_type"],
        "current_instance_group": env_dict["current_instance_group"],
        "current_instance_group_hosts": env_dict["current_instance_group_hosts"],
        "instance_groups": env_dict["instance_groups"],
        "instance_groups_dict": env_dict["instance_groups_dict"],
        "distribution_instance_groups": env_dict["distribution_instance_groups"],
        "is_hetero": env_dict["is_hetero"],
        "module_name": str(env_dict["module_name"]),
        "log_level": env_dict["log_level"],
        "framework_module": env_dict["framework_module"],
        "input_dir": env_dict["input_dir"],
        "input_config_dir": env_dict["input_config_dir"],
        "output_dir": env_dict["output_dir"],
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "num_neurons": env_dict["num_neurons"],
        "model_dir": env_dict["model_dir"],
        "module_dir": env_dict["module_dir"],
        "training_env": env_dict,
        "user_args": user_args(user),
        "output_intermediate_dir": env_dict["output_intermediate_dir"],
    }
    if res_topology := env_dict["topology"]:
        exported["topology"] = res_topology
    for channel, path in env_dict["channel_input_dirs"].items():
        exported[f"channel_{channel}"] = path
    for key, value in user.items():
        exported[f"hp_{key}"] = value
    env = {"SM_" + str(name).upper(): encode_value(value) for name, value in exported.items()}
    env["CURRENT_HOST"] = job.resources.current_host
    env["SAGEMAKER_JOB_NAME"] = job.sagemaker_job_name
    env["SAGEMAKER_REGION"] = job.region
    return env
