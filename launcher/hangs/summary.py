"""What a hang report says: the culprit line, then the details. Pure: text from the verdict,
the suspects and the stacks.

The culprit line opens `output/failure` (SageMaker shows its first 1024 characters), so it
carries everything needed to act on one line:

    hang: no progress for 312 s (window 300 s, automatic); suspect rank 5 on host algo-2 at
    train.py:88 in load_batch (least progress: 1234, others up to 1235; stack outside any
    collective); 7 ranks wait in all_reduce

(one line in the report). The details follow: one line per rank (progress, what its stack
shows), where the stack files are, and the flight-recorder dumps found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.hangs.stacks import Frame, RankStack
from launcher.hangs.verdict import NS, Hung, Suspect

_MAX_PATH = 60


def short_path(path: str) -> str:
    """A frame's file, short enough for one line: from the package on when inside
    site-packages or dist-packages, else the path itself when short, else its last two parts."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    if len(path) <= _MAX_PATH:
        return path
    parts = path.rsplit("/", 2)
    return ".../" + "/".join(parts[-2:])


def frame_text(frame: Frame) -> str:
    """`file:line in function`."""
    return f"{short_path(frame.file)}:{frame.line} in {frame.function}"


def activity(stack: RankStack | None) -> str:
    """What a rank was doing, in a few words: "waits in all_reduce", "runs outside any
    collective", "has no stack"."""
    if stack is None or not stack.ok:
        return "has no stack"
    if stack.in_collective:
        return f"waits in {stack.op or 'a collective'}"
    return "runs outside any collective"


def _plural(n: int, verb: str) -> str:
    """ "1 rank waits in x" / "3 ranks wait in x" for verb "waits in x"."""
    if n == 1:
        return f"1 rank {verb}"
    first, _, rest = verb.partition(" ")
    plural = {"waits": "wait", "runs": "run", "has": "have", "is": "are"}.get(first, first)
    return f"{n} ranks {plural} {rest}".rstrip()


def where(stack: RankStack | None, *, why: bool = True) -> str:
    """Where a rank's stack stands: its caller's frame, and the collective it waits in; for a
    rank without a stack, "(no stack: <why>)" (`why=False`: "with no stack")."""
    if stack is None or not stack.ok:
        if not why:
            return "with no stack"
        return f"(no stack: {stack.error if stack is not None else 'not taken'})"
    caller = stack.caller
    at = f"at {frame_text(caller)}" if caller is not None else ""
    if stack.in_collective:
        return f"{at}, waiting in {stack.op or 'a collective'}"
    return at


def culprit_line(
    hung: Hung,
    found: Sequence[Suspect],
    stacks: Mapping[int, RankStack],
    hosts: Mapping[int, str],
) -> str:
    """The one line that names the culprit (see the module docstring)."""
    if hung.overrun:
        head = f"hang: a section outlived its limit ({hung.section_limit_s:g} s)"
    else:
        mode = ", automatic" if hung.automatic else ""
        head = f"hang: no progress for {hung.quiet_s:.0f} s (window {hung.window_s:g} s{mode})"
    parts = [head]
    blamed = {s.rank for s in found}
    if found:
        first = found[0]
        host = hosts.get(first.rank)
        on = f" on host {host}" if host else ""
        text = f"suspect rank {first.rank}{on} {where(stacks.get(first.rank), why=False)}"
        parts.append(f"{text} ({'; '.join(first.reasons)})")
        if len(found) > 1:
            others = ", ".join(_rank_on(s.rank, hosts) for s in found[1:])
            parts.append(f"also suspect: {others}")
    else:
        parts.append("no single suspect")
    doing = Counter(activity(stacks.get(r.rank)) for r in hung.ranks if r.rank not in blamed)
    if doing:
        parts.append(", ".join(_plural(n, what) for what, n in doing.most_common()))
    return "; ".join(parts)


def _rank_on(rank: int, hosts: Mapping[int, str]) -> str:
    host = hosts.get(rank)
    return f"rank {rank} ({host})" if host else f"rank {rank}"


def details(
    hung: Hung,
    found: Sequence[Suspect],
    stacks: Mapping[int, RankStack],
    hosts: Mapping[int, str],
    *,
    stacks_dir: Path | None = None,
    dumps: Sequence[Path] = (),
) -> str:
    """The lines under the culprit line: the window, one line per rank, the evidence's paths."""
    mode = "automatic" if hung.automatic else "fixed"
    lines = [f"hang window: {hung.window_s:g} s ({mode}); no progress for {hung.quiet_s:.1f} s"]
    for suspect in found:
        lines.append(f"suspect {_rank_on(suspect.rank, hosts)}: {'; '.join(suspect.reasons)}")
    for sample in hung.ranks:
        stack = stacks.get(sample.rank)
        host = hosts.get(sample.rank)
        head = f"rank {sample.rank}" + (f" ({host})" if host else "")
        if sample.last_ns:
            age = f"last {(hung.at_ns - sample.last_ns) / NS:.1f} s before the verdict"
        else:
            age = "never reported" if not sample.attached else "none since it attached"
        section = f", in section {sample.section!r}" if sample.in_section else ""
        method = f" [{stack.method}]" if stack is not None and stack.ok else ""
        lines.append(f"{head}: progress {sample.count} ({age}){section}; {where(stack)}{method}")
    if stacks_dir is not None:
        lines.append(f"stacks: {stacks_dir}")
    if dumps:
        lines.append("flight recorder dumps: " + ", ".join(str(p) for p in dumps))
    return "\n".join(lines)
