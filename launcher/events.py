"""Every event a launcher reacts to, as frozen types, and the queue they travel on.

One queue per launcher (`Events`) carries them from the threads that see them to the one
loop that decides: rank waiter threads post `RankExited`, signal handlers `SignalReceived`,
the control channel `RemoteAbort` and `PeerMessage`, the hang monitor `HangDeclared`, the
MPI leader's login checks
`SshdChecked`, the MPI follower's result watcher `JobDecided`. `Event` is their union, so a
consumer's `isinstance` chain is checked by mypy. `RunState` and `Outcome` are what one
supervision run concludes. Pure data: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

import enum
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # the core imports no subpackage at run time (tests/unit/test_layering.py)
    from launcher.control.messages import Message
    from launcher.hangs.verdict import Hung


@dataclass(frozen=True, slots=True)
class RankExited:
    """A process we started ended (a rank, or a helper in a process set of its own)."""

    rank: int
    returncode: int  # negative: killed by that signal (subprocess's convention)
    at: float  # time.monotonic() when the exit was seen


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A signal reached the launcher while the ranks ran (see `supervise.forwarding_signals`)."""

    signum: int


@dataclass(frozen=True, slots=True)
class RemoteAbort:
    """Another host failed or was lost; `reason` is the job's root cause as that host saw it."""

    reason: str
    exit_code: int
    signal: str = ""  # the stop signal that ended the job on another host ("": none)


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A message that the channel itself does not handle (the MPI backend's `SshdReady`, a
    preflight's report or verdict), decoded and checked (`control.messages`), posted for
    whoever drives that phase (on the leader: from a follower; on a follower: from the
    leader)."""

    host: str  # the follower that sent it, by the host name of its HELLO
    message: Message


@dataclass(frozen=True, slots=True)
class SshdChecked:
    """The outcome of the MPI leader's login check of one follower's sshd."""

    host: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class JobDecided:
    """The job's result arrived over the control channel (an MPI follower waits for it)."""


@dataclass(frozen=True, slots=True)
class HangDeclared:
    """The hang monitor found this host's ranks without progress for longer than the window
    (`launcher.hangs.watch.Monitor`); `verdict` is its `Hung`. Posted once per run."""

    verdict: Hung


@dataclass(frozen=True, slots=True)
class HangReport:
    """What a hang left for the report: `culprit` opens output/failure (the same line on every
    host: the declaring host's), `details` follow it (this host's ranks, stacks, dumps)."""

    culprit: str
    details: str


Event: TypeAlias = (
    RankExited
    | SignalReceived
    | RemoteAbort
    | PeerMessage
    | SshdChecked
    | JobDecided
    | HangDeclared
)
Events: TypeAlias = "queue.SimpleQueue[Event]"


class RunState(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABORTED = "aborted"
    HUNG = "hung"  # this host declared the hang (a host told of one ends ABORTED)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one supervision run ended: every exit seen, and why the job stopped."""

    state: RunState
    exits: dict[int, RankExited]
    root_cause: int | None  # the rank whose failure ended the job, when it is local
    terminated: frozenset[int]  # ranks the launcher signalled before they exited
    stop_signal: int | None = None
    remote: RemoteAbort | None = None
    duration_s: float = 0.0
    hang: HangReport | None = None  # set when the job ended for a hang, here or elsewhere
