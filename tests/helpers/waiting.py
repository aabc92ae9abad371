"""Waiting in tests: a poll with a deadline, never a fixed sleep.

`wait_for(predicate, timeout, what)` polls until `predicate()` is true and returns how long that
took; at the deadline it fails with one line naming `what`. `stop_if` ends the wait early when
waiting on cannot help (the process that should make `predicate` true has exited), and
`describe` adds what a reader needs to see to the failure (a launcher's stderr).
`poll_until` is the same loop for callers that decide themselves what a timeout means (a
benchmark's cap, an assertion that lists what is left).

Both poll every `POLL_S` by default: short enough that a test does not measure the poll, long
enough that two shared cores are not spent spinning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.01


class WaitTimeout(AssertionError):
    """A `wait_for` that did not see its condition; the message names what was awaited."""


def poll_until(
    predicate: Callable[[], object],
    timeout: float,
    *,
    stop_if: Callable[[], object] | None = None,
    poll_s: float = POLL_S,
) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False).

    `predicate` is tried once more at the deadline, so a condition that became true while the
    loop slept is never reported as a timeout. `stop_if`, checked before each try, makes the
    wait return False at once when it is true.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if stop_if is not None and stop_if():
            return False
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(poll_s)


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    stop_if: Callable[[], str | None] | None = None,
    describe: Callable[[], str] | None = None,
    poll_s: float = POLL_S,
) -> float:
    """Poll `predicate` until it is true; return the seconds it took.

    Raises `WaitTimeout` "timed out after T s waiting for WHAT" at the deadline, or
    "REASON before WHAT" as soon as `stop_if` returns a reason (a string; None means keep
    waiting). `describe()`, when given, is appended to either message.
    """
    start = time.monotonic()
    reason: list[str] = []

    def stopped() -> bool:
        if stop_if is not None and (why := stop_if()) is not None:
            reason.append(why)
            return True
        return False

    if poll_until(predicate, timeout, stop_if=stopped, poll_s=poll_s):
        return time.monotonic() - start
    message = (
        f"{reason[0]} before {what}"
        if reason
        else f"timed out after {timeout:g} s waiting for {what}"
    )
    if describe is not None:
        message += "\n" + describe()
    raise WaitTimeout(message)
