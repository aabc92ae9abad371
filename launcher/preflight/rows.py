"""The rows of a preflight: one per check, host and GPU, with the value, its threshold and a
verdict; their JSON form (the control channel and `preflight.json`), the table on stderr and
the one-line failures. Pure, except `write_json`.

A row's `gpu` is "" for a host-wide check, else "<index> <uuid>"; `value` is a number or, for
an inventory fact (a driver version), a string; `threshold` is text as shown ("> 85 % of median
312", "== 550.54.15"). `verdict` is PASS, WARN (a floor not calibrated on real hardware, or a
noisy CPU measurement), FAIL, or INFO (a fact with no rule).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"
VERDICTS = (PASS, WARN, FAIL, INFO)
FILE_NAME = "preflight.json"
ALL_HOSTS = "*"  # the host of a job-wide row (the whole cross-host all_reduce)
MAX_FIELD = 512  # characters of one text field of a row on the wire
_FIELDS = ("check", "host", "gpu", "value", "unit", "threshold", "verdict", "detail", "seconds")


@dataclass(frozen=True, slots=True)
class Row:
    """One check's result on one host (and GPU). `detail` says what was measured or found."""

    check: str
    host: str
    value: float | str
    unit: str = ""
    threshold: str = ""
    verdict: str = INFO
    gpu: str = ""
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def judged(self, verdict: str, threshold: str, detail: str = "") -> Row:
        """This row with a verdict (and the detail, when one is given)."""
        return replace(self, verdict=verdict, threshold=threshold, detail=detail or self.detail)

    def line(self) -> str:
        """The failure line: host, GPU or directory, what failed."""
        where = f" {self.gpu}" if self.check.startswith("dir.") else ""  # "<role> <path>"
        if self.gpu and not where:
            where = f" GPU {self.gpu}"
        what = f"{self.check} {_value(self.value)}{' ' + self.unit if self.unit else ''}"
        rule = f" (needs {self.threshold})" if self.threshold else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"preflight {self.verdict} {self.host}{where}: {what}{rule}{detail}"


def to_wire(row: Row) -> list[Any]:
    """The row as a JSON list, in `_FIELDS` order."""
    return [getattr(row, name) for name in _FIELDS]


def from_wire(raw: object) -> Row:
    """A row from `to_wire`'s list. Raises ValueError saying what is wrong (never anything
    else): wrong length, a field of the wrong type, text over `MAX_FIELD`, a bad verdict."""
    if not isinstance(raw, (list, tuple)) or len(raw) != len(_FIELDS):
        raise ValueError(f"a row must be a list of {len(_FIELDS)} fields")
    values = dict(zip(_FIELDS, raw, strict=True))
    for name in ("check", "host", "gpu", "unit", "threshold", "verdict", "detail"):
        if not isinstance(values[name], str) or len(values[name]) > MAX_FIELD:
            raise ValueError(f"row field {name} must be text of at most {MAX_FIELD} characters")
    value, seconds = values["value"], values["seconds"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("row field value must be a number or text")
    if isinstance(value, str) and len(value) > MAX_FIELD:
        raise ValueError(f"row field value must be at most {MAX_FIELD} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("row field value must be finite")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("row field seconds must be a number of seconds")
    if values["verdict"] not in VERDICTS:
        raise ValueError(f"row verdict must be one of {', '.join(VERDICTS)}")
    number = float(value) if isinstance(value, int) else value
    return Row(**{**values, "value": number, "seconds": float(seconds)})


def _value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def table(rows: Sequence[Row]) -> str:
    """The one-screen table (check, host, GPU, value, unit, threshold, verdict), widths fitted."""
    head = ("CHECK", "HOST", "GPU", "VALUE", "UNIT", "THRESHOLD", "VERDICT")
    body = [
        (r.check, r.host, r.gpu.split(" ")[0], _value(r.value), r.unit, r.threshold, r.verdict)
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    return "\n".join(lines)


def failures(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.failed]


def bad_hosts(rows: Iterable[Row]) -> list[str]:
    """The hosts with a failed row, in the order they first fail (a job-wide row names none)."""
    return list(dict.fromkeys(r.host for r in rows if r.failed and r.host != ALL_HOSTS))


def summary(rows: Sequence[Row]) -> str:
    """What `output/failure` starts with: the bad hosts, then one line per failure."""
    hosts = bad_hosts(rows)
    lines = [r.line() for r in failures(rows)]
    head = f"preflight failed on {len(hosts)} host(s): {', '.join(hosts)}"
    if not hosts:
        head = "preflight failed for the job as a whole (no single host to blame)"
    return "\n".join([head, *lines]) + "\n"


def write_json(output_dir: Path, rows: Sequence[Row], *, level: str, seconds: float) -> Path:
    """`<output_dir>/preflight.json`: {level, seconds, passed, bad_hosts, rows: [...]}, each row
    with every field of `Row`. Atomic (a temporary file renamed). Raises OSError."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / FILE_NAME
    document = {
        "level": level,
        "seconds": round(seconds, 3),
        "passed": not failures(rows),
        "bad_hosts": bad_hosts(rows),
        "rows": [asdict(r) for r in rows],
    }
    tmp = output_dir / f".{FILE_NAME}.{os.getpid()}"
    tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
