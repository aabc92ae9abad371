"""`launcher local --hosts N`: a SageMaker-shaped cluster of N hosts on this machine.

Each simulated host gets its own `/opt/ml`-shaped tree under one job folder (what SageMaker
local mode does with containers) and its own `train` process; they meet over the control
channel on loopback exactly as real hosts do, so this exercises the production code path.
Script arguments must be `--key value` pairs: they become hyperparameters, as an estimator's
would, and reach the script as argv and SM_HP_* on every host.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import UsageError
from launcher.settings import Backend

_IGNORE = shutil.ignore_patterns("__pycache__", ".git", ".venv", "*.pyc", "launcher-jobs")


@dataclass(frozen=True, slots=True)
class LocalJob:
    folder: Path
    hosts: tuple[str, ...]

    def tree(self, host: str) -> Path:
        return self.folder / host

    @property
    def model_dir(self) -> Path:
        return self.tree(self.hosts[0]) / "model"

    @property
    def log_dir(self) -> Path:
        return self.folder / "logs"


def hyperparameters(args: list[str]) -> dict[str, str]:
    """`--key value` pairs as SageMaker hyperparameters (values as the SDK would send them)."""
    if len(args) % 2 or not all(a.startswith("-") and len(a) > 1 for a in args[::2]):
        raise UsageError(
            f"script arguments {args} are not --key value pairs",
            hint="local jobs pass arguments as hyperparameters, e.g. --epochs 3",
        )
    return {key.lstrip("-"): value for key, value in zip(args[::2], args[1::2], strict=True)}


def _ignoring(job_root: Path) -> Callable[[str, list[str]], set[str]]:
    """copytree's filter: the usual clutter, and the job folder when it lies inside the code
    folder (`--job-dir` under the script's folder would otherwise copy itself forever)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(_IGNORE(folder, names))
        if job_root.parent == Path(folder).resolve():
            skipped.add(job_root.name)
        return skipped

    return ignore


def create(
    root: Path,
    *,
    n_hosts: int,
    procs_per_host: int | str,
    script: Path,
    args: list[str],
    backend: Backend,
) -> LocalJob:
    """Write one tree per host; the script's folder is copied into each host's code/."""
    if n_hosts < 1:
        raise UsageError(
            f"--hosts {n_hosts}: at least one host is needed", hint="use --hosts 1 or more"
        )
    if not script.is_file():
        raise UsageError(f"{script} is not a file", hint="give the path of the training script")
    hps = hyperparameters(args)
    hosts = tuple(f"algo-{i}" for i in range(1, n_hosts + 1))
    folder = root / f"{time.strftime('job-%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    hps["sagemaker_program"] = json.dumps(script.name)
    hps["sagemaker_job_name"] = json.dumps(folder.name)
    hps["sagemaker_mpi_num_of_processes_per_host"] = json.dumps(procs_per_host)
    if backend is Backend.MPI:
        hps["sagemaker_mpi_enabled"] = "true"
    elif backend is not Backend.NONE:
        hps["sagemaker_torch_distributed_enabled"] = "true"
    group = {"instance_group_name": "homogeneousCluster", "instance_type": "local", "hosts": hosts}
    for host in hosts:
        tree = folder / host
        config = tree / "input" / "config"
        config.mkdir(parents=True)
        for sub in ("model", "output/data", "input/data"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree(script.parent, tree / "code", ignore=_ignoring(root.resolve()))
        resources = {
            "current_host": host,
            "hosts": list(hosts),
            "current_group_name": "homogeneousCluster",
            "current_instance_type": "local",
            "instance_groups": [group],
            "network_interface_name": "lo",
        }
        (config / "hyperparameters.json").write_text(json.dumps(hps, indent=1))
        (config / "resourceconfig.json").write_text(json.dumps(resources, indent=1))
        (config / "inputdataconfig.json").write_text("{}")
    return LocalJob(folder, hosts)


LOOPBACK = "127.0.0.1"


def host_env(job: LocalJob, host: str, control_port: int, token: str) -> dict[str, str]:
    """What each simulated host's `train` gets on top of this environment.

    The hosts reach the leader at 127.0.0.1, so the leader listens there only
    (`meet.listen_address`): no other machine can connect to a local job's control port.
    `LAUNCHER_JOB_TOKEN` is for the host launchers alone; the ranks must never inherit it
    (`plan.build` must leave it out of their environment)."""
    return {
        "SAGEMAKER_BASE_DIR": str(job.tree(host)),
        "LAUNCHER_CONTROL_PORT": str(control_port),
        "LAUNCHER_LEADER_ADDR": LOOPBACK,
        "LAUNCHER_JOB_TOKEN": token,
        "LAUNCHER_LOG_DIR": str(job.log_dir),
        "SM_STUDIO_LOCAL_MODE": "true",
    }


def write_host_envs(job: LocalJob, control_port: int, token: str) -> Path:
    """Every host's variables, for `launcher.local.zygote`; 0600 since they hold the job token."""
    path = job.folder / "hosts.json"
    envs = [host_env(job, host, control_port, token) for host in job.hosts]
    path.touch(mode=0o600)
    path.write_text(json.dumps(envs))
    return path


def zygote_argv(hosts_file: Path) -> list[str]:
    """One process that forks every host's `train` (see launcher/local/zygote.py)."""
    return [sys.executable, "-m", "launcher.local.zygote", str(hosts_file)]
