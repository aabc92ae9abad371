"""Errors raised by `collectives`, and the one function that turns a backend error into ours.

A collective that fails raises `CollectiveError` (a `RuntimeError`, so code that already
catches torch's errors keeps working); one that timed out raises its subclass
`CollectiveTimeout`. Both name the operation, this rank and the world size, and, when the
backend can tell, the ranks that did not arrive. The backend's own exception is chained as
`__cause__`.

Which ranks did not arrive is parsed conservatively from what gloo says: torch's
`monitored_barrier` names them on rank 0 ("Ranks 1, 3 failed to pass monitoredBarrier"); in a
world of two a timeout can only mean the other rank did not arrive. Otherwise the error says
the backend did not tell, rather than guess.
"""

from __future__ import annotations

import re

# "[Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 2000 ms" (ProcessGroupGloo.cpp).
_MISSING_RE = re.compile(r"Ranks? ((?:\d+)(?:,\s*\d+)*) failed to pass monitoredBarrier")
_TIMEOUT_RE = re.compile(r"timed out|timeout|failed to pass monitoredBarrier", re.IGNORECASE)
_PEER_GONE_RE = re.compile(
    r"connection (?:reset|closed) by peer|broken pipe|connection refused", re.IGNORECASE
)


class CollectiveError(RuntimeError):
    """A collective (or `init`) failed on this rank.

    Attributes: `op` (e.g. "all_reduce"), `rank`, `world_size`, and `missing_ranks`: the ranks
    that did not arrive, or `None` when the backend could not tell.
    """

    def __init__(
        self,
        op: str,
        message: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        missing_ranks: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.op = op
        self.rank = rank
        self.world_size = world_size
        self.missing_ranks = missing_ranks


class CollectiveTimeout(CollectiveError):
    """A collective did not complete within the process group's timeout."""


def missing_ranks(message: str, rank: int, world_size: int) -> tuple[int, ...] | None:
    """The ranks that did not arrive, as far as `message` (a timeout) tells; else `None`."""
    found = _MISSING_RE.search(message)
    if found:
        return tuple(sorted({int(r) for r in found.group(1).split(",")}))
    if world_size == 2:
        # Only one other rank exists; if this rank waited in vain, that one did not arrive.
        return (1 - rank,)
    return None


def translate(
    op: str, exc: BaseException, *, rank: int, world_size: int, timeout_s: float | None
) -> CollectiveError:
    """Turn the backend's exception from `op` into a `CollectiveError` (pure; nothing raised).

    An exception that is already a `CollectiveError` is returned unchanged.
    """
    if isinstance(exc, CollectiveError):
        return exc
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    where = f"{op} on rank {rank} of {world_size}"
    if _TIMEOUT_RE.search(text):
        missing = missing_ranks(text, rank, world_size)
        after = f" after {timeout_s:g} s" if timeout_s is not None else ""
        who = (
            f"ranks that did not arrive: {', '.join(map(str, missing))}"
            if missing
            else "the backend did not say which ranks did not arrive"
        )
        return CollectiveTimeout(
            op,
            f"{where} timed out{after}; {who} (backend: {first})",
            rank=rank,
            world_size=world_size,
            missing_ranks=missing,
        )
    if _PEER_GONE_RE.search(text):
        return CollectiveError(
            op,
            f"{where} failed: a peer closed its connection, probably because it exited; "
            f"its own log has the cause (backend: {first})",
            rank=rank,
            world_size=world_size,
        )
    return CollectiveError(op, f"{where} failed: {first}", rank=rank, world_size=world_size)
