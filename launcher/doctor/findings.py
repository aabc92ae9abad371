"""What `launcher doctor` found: findings with a status and a fix, the report, its rendering.

Plain data and formatting only; `doctor` gathers the findings.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from launcher import __version__
from launcher.settings import Backend


class Status(enum.Enum):
    OK = "ok"
    INFO = "info"  # a fact, neither good nor bad
    WARN = "warn"  # usable, but probably not what the user wants
    MISSING = "missing"
    BROKEN = "broken"  # present but unusable


_AREAS = {"nvml": "gpu", "if": "network", "net": "network", "settings": "job"}
_MPI_AREA = ("mpirun", "mpi4py", "ssh", "sshd", "ssh-keygen")


@dataclass(frozen=True, slots=True)
class Finding:
    key: str  # stable id ("torch.gloo"); the backends' needs are written in these
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do when the status is not OK
    data: Mapping[str, Any] = field(default_factory=dict)
    required: bool = False  # the chosen backend cannot run without it

    @property
    def area(self) -> str:
        head = self.key.split(".")[0]
        return "mpi" if head in _MPI_AREA else _AREAS.get(head, head)

    @property
    def blocking(self) -> bool:
        return self.required and self.status in (Status.MISSING, Status.BROKEN)


@dataclass(frozen=True, slots=True)
class Report:
    backend: Backend
    findings: tuple[Finding, ...]

    @property
    def ready(self) -> bool:
        return not any(f.blocking for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.ready else 1


def render_table(report: Report) -> str:
    """One line per finding, grouped by area; each problem is followed by what to do."""
    width = max((len(f.name) for f in report.findings), default=0)
    lines = [f"ml-launcher {__version__} doctor, for the {report.backend.value} backend"]
    area = ""
    for f in report.findings:
        if f.area != area:
            area = f.area
            lines.append(f"\n{area}")
        status = f.status.value.upper() if f.blocking else f.status.value
        lines.append(f"  {status:<8} {f.name:<{width}}  {f.detail}")
        if f.fix and f.status in (Status.WARN, Status.MISSING, Status.BROKEN):
            lines.append(f"  {'':<8} {'':<{width}}  -> {f.fix}")
    blocking = ", ".join(f"{f.area} {f.name}" for f in report.findings if f.blocking)
    if blocking:
        return "\n".join(
            [*lines, f"\nnot ready for the {report.backend.value} backend: {blocking}"]
        )
    return "\n".join([*lines, f"\nready: the {report.backend.value} backend has what it needs"])


def render_json(report: Report) -> str:
    """The report as one JSON document: version, backend, ready, findings (with `area`)."""
    findings = [
        {**asdict(f), "area": f.area, "status": f.status.value, "data": dict(f.data)}
        for f in report.findings
    ]
    document = {"version": __version__, "backend": report.backend.value, "ready": report.ready}
    return json.dumps({**document, "findings": findings}, indent=2)
