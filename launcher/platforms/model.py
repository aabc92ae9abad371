"""The typed description of a platform (`Platform`) every detector returns. Pure."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from launcher.errors import ConfigError

__all__ = ["Kind", "Platform", "PlatformError", "Source", "TaskRank", "integer", "required"]


class Kind(enum.Enum):
    """`--hosts-from`: where the hosts come from."""

    AUTO = "auto"
    SAGEMAKER = "sagemaker"
    SLURM = "slurm"
    KUBEFLOW = "kubeflow"
    INDEXED_JOB = "indexed-job"
    JOBSET = "jobset"
    STATIC = "static"


class PlatformError(ConfigError):
    """A platform's variable is missing or wrong: names the platform and the variable (exit 2).

    `hint` says what to set or how to start the launcher instead."""

    def __init__(self, kind: Kind, variable: str, problem: str, *, hint: str = "") -> None:
        super().__init__(f"{kind.value} environment", variable, problem, hint=hint)
        self.kind = kind
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Source:
    """Where one value of a `Platform` came from: `field` = `value` from `origin`."""

    field: str
    value: str
    origin: str  # e.g. "SLURM_NODEID", "SLURM_STEP_NODELIST expanded", "default"


@dataclass(frozen=True, slots=True)
class TaskRank:
    """One-task-per-GPU mode: the platform started every rank itself; this is this one."""

    rank: int
    local_rank: int
    world_size: int
    master_port: int  # derived from the job, the same on every task (no channel to agree on it)


@dataclass(frozen=True, slots=True)
class Platform:
    """The hosts of one job as a platform describes them.

    `hosts` is the node order every host computes alike; `hosts[node_rank] == current_host`
    (each detector checks it and refuses otherwise). `slots` is this host's rank count when the
    platform fixes it (PyTorchJob's nproc per node, Slurm's tasks on the node), else None (the
    launcher's own rule: one per visible GPU). `visible_gpus` is the allocation's device list
    when the platform gives one. `task` is set only in one-task-per-GPU mode. `job_name` keys
    the derived job token, so that two jobs on one set of hosts never join each other.
    """

    kind: Kind
    hosts: tuple[str, ...]
    current_host: str
    node_rank: int
    job_name: str
    sources: tuple[Source, ...]
    slots: int | None = None
    visible_gpus: str | None = None
    task: TaskRank | None = None
    master_port: int = 0  # the rank-facing port the platform fixes (PyTorchJob); 0: free
    task_slots: tuple[int, ...] = ()  # one-task-per-GPU mode: the tasks on each host

    @property
    def multi(self) -> bool:
        return len(self.hosts) > 1

    def describe(self) -> list[str]:
        """Lines for `launcher run --dry-run`: the platform and every value's origin."""
        mode = "one task per GPU (rank shim)" if self.task else "one launcher per host"
        lines = [f"platform {self.kind.value}: {len(self.hosts)} host(s), {mode}"]
        lines.extend(f"  {s.field} = {s.value}  (from {s.origin})" for s in self.sources)
        return lines


def required(environ: Mapping[str, str], kind: Kind, name: str, hint: str = "") -> str:
    """The non-empty value of variable `name`, or `PlatformError` naming it."""
    value = environ.get(name, "")
    if not value.strip():
        raise PlatformError(kind, name, "is not set", hint=hint)
    return value.strip()


def integer(kind: Kind, name: str, value: str, low: int = 0) -> int:
    """`value` of variable `name` as a whole number >= `low`, or `PlatformError`."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < low:
        raise PlatformError(kind, name, f"must be a whole number >= {low}, not {value[:40]!r}")
    return int(text)
