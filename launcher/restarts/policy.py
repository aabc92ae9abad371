"""The retry rule of whole-job restarts, as a pure function of what the attempts ended with.

What is retried (docs/usage.md "Restarts"): a rank's failure, a signal that killed a rank, a
lost host (the next attempt waits for it up to the peer deadline), a hang verdict (124). Not
retried: a rank's exit code 2 (usage), 126 (not executable) or 127 (not found), which fail
the same way every time; a stop signal sent to a launcher from outside (SIGTERM/SIGINT/SIGHUP:
a stop or a spot interruption, which the platform decides about); the launcher's own errors
(bad configuration, exit 2; peers that never arrive, exit 3) are raised before or instead of
an attempt's result and never reach this rule. A job whose attempt fails the same way as the
previous one (same exit code and root cause) without any progress in between (no progress
reported by its ranks and no checkpoint advance) stops early instead of spending the budget.

Nothing here reads a clock, a file or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_RETRIED_CODES = frozenset({2, 126, 127})


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How one attempt ended, as the leader saw it.

    `code` is the attempt's exit code (0: success), `cause` its root-cause line. `stopped` is
    True when a stop signal from outside ended it (on any host). `progressed` is True when a
    rank reported progress during the attempt or the latest checkpoint's step moved; None
    when that cannot be told (neither counted), which never counts as progress.
    """

    attempt: int
    code: int
    cause: str
    stopped: bool = False
    progressed: bool | None = None

    @property
    def signature(self) -> tuple[int, str]:
        """What "failed the same way" compares: the exit code and the root-cause line."""
        return self.code, self.cause


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to start another attempt, and the line that says why (not)."""

    retry: bool
    why: str


def decide(ends: tuple[AttemptEnd, ...], max_restarts: int) -> Verdict:
    """The verdict after the last of `ends` (every attempt so far, in order) failed.

    Raises ValueError when `ends` is empty or its last attempt succeeded (a bug: there is
    nothing to decide).
    """
    if not ends or ends[-1].code == 0:
        raise ValueError("decide needs a failed last attempt")
    last = ends[-1]
    used = last.attempt
    if last.stopped:
        return Verdict(False, "the job was stopped from outside: not restarted")
    if last.code in NOT_RETRIED_CODES:
        return Verdict(False, f"exit code {last.code} fails the same way every time: not restarted")
    if used >= max_restarts:
        return Verdict(False, f"no restarts left ({used} of {max_restarts} used)")
    if len(ends) > 1 and ends[-2].signature == last.signature and not last.progressed:
        return Verdict(
            False,
            f"attempt {last.attempt} failed the same way as attempt {ends[-2].attempt} without"
            " any progress or checkpoint in between: not restarted",
        )
    return Verdict(
        True, f"restarting the job as attempt {used + 1} (restart {used + 1} of {max_restarts})"
    )


def history_text(ends: tuple[AttemptEnd, ...]) -> str:
    """Every attempt's end, one line each, for output/failure after the final root cause."""
    lines = [f"attempts: {len(ends)}"]
    for end in ends:
        lines.append(f"  attempt {end.attempt}: exit {end.code}: {end.cause}")
    return "\n".join(lines) + "\n"
