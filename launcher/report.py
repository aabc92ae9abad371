"""Turn an `Outcome` into one truthful result: exit code, log summary, output/success|failure.

The root cause comes first in `output/failure` because SageMaker shows only its first 1024
characters: which rank on which host, its exit code or signal name, and the exception line
(from the rank's error file in torch's `@record` format, else from its stderr tail); for a hang,
the culprit line (`launcher.hangs.summary`) and then what every rank was doing. Identical
errors on several ranks are grouped. An `output/failure` the user script wrote is never
overwritten (the toolkit's rule), and a failed run never writes `output/success`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import EXIT_HANG, exit_code_for_rank, signal_exit_code, signal_name
from launcher.events import Outcome, RunState

_TRACEBACK = "Traceback (most recent call last):"
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
_TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class RankFailure:
    rank: int
    host: str
    returncode: int
    message: str  # the exception line, or "" when nothing explains the exit
    traceback: str
    stderr_tail: str
    terminated: bool  # stopped by the launcher: never a root cause

    @property
    def how(self) -> str:
        if self.returncode < 0:
            sig = -self.returncode
            return f"was killed by {signal_name(sig)} (exit {signal_exit_code(sig)})"
        return f"exited with code {self.returncode}"

    def headline(self) -> str:
        text = f"rank {self.rank} on {self.host} {self.how}"
        return f"{text}: {self.message}" if self.message else text


@dataclass(frozen=True, slots=True)
class RankTrace:
    """What the launcher kept of one rank for its report."""

    host: str
    error_file: str  # the rank's TORCHELASTIC_ERROR_FILE, "" when it had none
    stderr_tail: str  # the end of its stderr (`logs.Tail`), decoded leniently


def read_error_file(path: str) -> tuple[str, str] | None:
    """(message, traceback) from a torch `@record` error file, or None if absent or unreadable."""
    if not path:
        return None
    try:
        import json  # noqa: PLC0415 - only once a rank failed: start-up skips it

        data: Any = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        extra = message.get("extraInfo") or {}
        tb = extra.get("py_callstack", "") if isinstance(extra, dict) else ""
        return str(message.get("message", "")), str(tb)
    if isinstance(message, str):
        return message, ""
    return None


def exception_line(stderr: str) -> str:
    """The exception line of the last traceback in `stderr`, else its last unindented line.

    The exception line is the first unindented line after the last `Traceback` header (frames
    and source lines are indented), not the last line of the tail: a rank often prints more
    after its traceback (library warnings at shutdown, a final log line), and those must not
    be mistaken for the error. Lines are cut to 300 characters.
    """
    # torch.distributed prefixes each line of an uncaught exception with "[rankN]: ".
    lines = [_RANK_PREFIX.sub("", line, count=1) for line in stderr.splitlines()]
    start = max((i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)), default=-1)
    candidates = [
        line
        for line in lines[start + 1 :]
        if line.strip()
        and not line[0].isspace()
        and not line.startswith(("During handling", "The above exception"))
    ]
    if not candidates:
        return ""
    line = (candidates[0] if start >= 0 else candidates[-1]).strip()
    return line if len(line) <= 300 else line[:297] + "..."


def rank_error(error_file: str, stderr_tail: str) -> tuple[str, str]:
    """(message, traceback) of a failed rank: its error file when it wrote one, else the
    exception line of its stderr tail (with no traceback)."""
    recorded = read_error_file(error_file)
    return recorded if recorded else (exception_line(stderr_tail), "")


def failures(outcome: Outcome, ranks: Mapping[int, RankTrace]) -> list[RankFailure]:
    """One RankFailure per rank that exited non-zero, root cause first, then exit order.

    `ranks` holds the trace of every rank in `outcome.exits` (a missing one is a KeyError).
    """
    result = []
    ordered = sorted(outcome.exits.values(), key=lambda e: (e.rank != outcome.root_cause, e.at))
    for event in ordered:
        if event.returncode == 0:
            continue
        trace = ranks[event.rank]
        message, tb = rank_error(trace.error_file, trace.stderr_tail)
        result.append(
            RankFailure(
                rank=event.rank,
                host=trace.host,
                returncode=event.returncode,
                message=message,
                traceback=tb,
                stderr_tail=trace.stderr_tail,
                terminated=event.rank in outcome.terminated,
            )
        )
    return result


def headline(outcome: Outcome, found: list[RankFailure]) -> str:
    """The first line of output/failure and of the launcher's final log line."""
    if outcome.hang is not None:  # declared here, or elsewhere (then it is the abort's reason)
        return outcome.hang.culprit
    if outcome.state is RunState.ABORTED and outcome.remote is not None:
        return outcome.remote.reason
    if outcome.state is RunState.INTERRUPTED and outcome.stop_signal is not None:
        name = signal_name(outcome.stop_signal)
        return f"the job was stopped by {name}, which was forwarded to every rank"
    root = next((f for f in found if not f.terminated), None)
    if root is not None:
        return root.headline()
    return "the job failed"


def exit_code(outcome: Outcome) -> int:
    if outcome.state is RunState.SUCCEEDED:
        return 0
    if outcome.state is RunState.HUNG:
        return EXIT_HANG
    if outcome.state is RunState.INTERRUPTED and outcome.stop_signal is not None:
        return signal_exit_code(outcome.stop_signal)
    if outcome.state is RunState.ABORTED and outcome.remote is not None:
        return outcome.remote.exit_code
    if outcome.root_cause is not None:
        return exit_code_for_rank(outcome.exits[outcome.root_cause].returncode)
    return 1


def failure_text(first_line: str, found: list[RankFailure], *, details: str = "") -> str:
    """The whole failure report: root cause line, `details` (a hang's: every rank, the
    stacks), grouped errors, then the root's stderr."""
    parts = [first_line, ""]
    if details:
        parts += [details.rstrip(), ""]
    groups: dict[str, list[RankFailure]] = {}
    for failure in found:
        key = "terminated by the launcher" if failure.terminated else failure.message or failure.how
        groups.setdefault(key, []).append(failure)
    if len(found) > 1:
        parts.append("Failed ranks:")
        for key, members in groups.items():
            names = ", ".join(f"{f.rank} ({f.host})" for f in members)
            parts.append(f"  ranks {names}: {key}")
        parts.append("")
    root = next((f for f in found if not f.terminated), None)
    if root is not None:
        if root.traceback:
            parts += ["Traceback of the root cause:", root.traceback.rstrip(), ""]
        tail = root.stderr_tail.splitlines()[-_TAIL_LINES:]
        if tail:
            parts += [f"Last lines of rank {root.rank}'s stderr:", *tail, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_success(output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "success").touch()


def write_failure(output_dir: Path, text: str) -> bool:
    """Write output/failure unless it exists (the user's own reason wins). Atomic."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "failure"
    tmp = output_dir / f".failure.{os.getpid()}"
    tmp.write_text(text, encoding="utf-8", errors="replace")
    try:
        os.link(tmp, target)  # fails if the file exists: never overwrite the user's
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True
