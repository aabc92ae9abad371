"""Every message of the control channel as a frozen type, and the one codec: `encode`, `decode`.

The messages (protocol version `wire.VERSION`, 2), with their JSON fields. `?` marks a field that
may be absent; `encode` leaves it out when it holds its default, so the bytes stay those of
every earlier version 2 launcher:

    hello     follower -> leader   host, slots                 first, within the HELLO timeout
    plan      leader -> followers  hosts [[host, slots]...], master_port, run_id,
                                   horovod_port?, mpi_pubkey?,
                                   preflight_port?, attempt?   once every host said hello
    heartbeat both ways            (none)                      silence = the peer is lost
    failed    follower -> leader   code, reason, host?, signal?  ranks failed, or stopped
    abort     leader -> followers  code, reason, host?, signal?  the job's first failure
    done      follower -> leader   (none)                      this host's ranks succeeded
    result    leader -> followers  code                        the exit barrier opens
    restart   leader -> followers  attempt                     the attempt failed: meet again
    sshd      follower -> leader   addr, port, hostkey         mpi: this host's sshd is ready
    hold      leader -> followers  reason                      a hang: take your ranks' stacks
                                                               now, stop nothing until ABORT
    held      follower -> leader   (none)                      this host's stacks are taken
    stacks?   leader -> followers  id                          `launcher stacks`: send yours
    stacks    follower -> leader   id, text                    this host's ranks' stacks now
    preflight_report  follower -> leader  rows                 preflight: this host's rows
    preflight_verdict leader -> followers code, rows           preflight: the whole job's rows
                                                               (code 0 passed, 78 failed)

Bounds, checked whenever a message is built (here or by `decode`): a host name is 1 to
`MAX_HOST_NAME` printable characters without whitespace (the rule `resourceconfig.json` follows,
plus the DNS length); `slots` 1..`MAX_SLOTS`; an exit code 1..255 (`result`: 0..255); ports
1..65535; `attempt` 0..`MAX_ATTEMPT`; `run_id` 1..`MAX_RUN_ID` of `[A-Za-z0-9._-]`, starting
alphanumeric; `mpi_pubkey` and `hostkey` one `ssh-ed25519` public key; `addr` an IP address; the
hosts of a plan distinct and at least one. Free text is clipped, never refused: `reason` to
`wire.MAX_TEXT` bytes and `signal` to `MAX_SIGNAL` bytes with `wire.clip`'s marker, after a lone
surrogate (JSON can carry one; no file or log can) is replaced. So only a plan's host list can
outgrow `wire.MAX_FRAME` (some 4,000 hosts of 253-character names, some 60,000 named like algo-N);
`wire.FrameWriter` refuses it.

Failure contract. Building a message with a bad value raises `ValueError` naming the field (a
bug of the sender, raised where it builds the message: nothing is sent). `decode` takes an
object as `wire.FrameReader` returns it (the envelope `v`, `ch`, `seq` is the wire's, already
checked, and ignored here) and raises `MessageError`, a `wire.FrameError`, for anything but
exactly one of these messages: not an object, an unknown `type`, a missing or unknown field, a
field of the wrong JSON type (`true` is not an integer, `1.0` is not one either) or out of
bounds. It raises nothing else, whatever it is given. The connection that delivered it then ends
as for any protocol error, so a peer's bad message loses only its own connection. What a message
means to the role that receives it (a HELLO from an expected host, a PLAN naming this host) is
the receiver's check.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, TypeAlias

from launcher.control import wire
from launcher.settings import MAX_PROCS_PER_HOST

MAX_HOST_NAME = 253  # a DNS name's longest form
MAX_SLOTS = MAX_PROCS_PER_HOST  # a host's ranks: what `settings` allows per host
MAX_CODE = 255  # exit codes are one byte
MAX_PORT = 65535
MAX_RUN_ID = 64
MAX_SIGNAL = 40  # bytes of a stop signal's name ("SIGTERM", "signal 99")
MAX_ADDR = 64  # an IPv6 address with a zone index fits
MAX_SSH_KEY = 1024  # an ed25519 public key is 80 characters
MAX_REQUEST_ID = 2**31 - 1
# A host's stacks as text: 8 ranks of deep stacks fit; JSON escaping (6x at most) stays
# below `wire.MAX_FRAME`.
MAX_STACKS_TEXT = 128 * 1024
MAX_ATTEMPT = 1000  # whole-job restarts: settings.MAX_RESTARTS restarts after attempt 0
HOROVOD_PORT_KEY = "horovod_port"  # the PLAN field with the leader's Horovod rendezvous port
MPI_PUBKEY_KEY = "mpi_pubkey"  # the PLAN field with the leader's per-job ssh client key
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SSH_KEY = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")
PREFLIGHT_PORT_KEY = "preflight_port"  # the PLAN field with the preflight's all_reduce port
MAX_PREFLIGHT_ROWS = 2048  # rows of one preflight message (a host of 8 GPUs sends about 60)


class MessageError(wire.FrameError):
    """An authenticated frame that is not a valid message. `kind` (for the leader's summary of
    refusals) is "malformed", "unknown type", or "invalid <type>" (e.g. "invalid hello")."""


# --- the checks; each returns the value to keep, or raises ValueError saying what it must be ---


def _integer(value: object, low: int, high: int) -> int:
    # `type(...) is int`: True is an int in Python, and a JSON `true` is no count.
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"must be an integer from {low} to {high}")
    return value


def host_name(value: object) -> str:
    """`value` if it is a host name the channel carries; else ValueError saying why not."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_HOST_NAME
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise ValueError(
            f"must be a host name: 1 to {MAX_HOST_NAME} printable characters, no whitespace"
        )
    return value


def _text(value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return wire.clip(value.encode("utf-8", "replace").decode("utf-8"), limit)


def _slots(value: object) -> int:
    return _integer(value, 1, MAX_SLOTS)


def _failure_code(value: object) -> int:
    return _integer(value, 1, MAX_CODE)


def _exit_code(value: object) -> int:
    return _integer(value, 0, MAX_CODE)


def _port(value: object) -> int:
    return _integer(value, 1, MAX_PORT)


def _optional_port(value: object) -> int | None:
    return None if value is None else _port(value)


def _reason(value: object) -> str:
    return _text(value, wire.MAX_TEXT)


def _signal(value: object) -> str:
    return _text(value, MAX_SIGNAL)


def _optional_host(value: object) -> str:
    return "" if value == "" else host_name(value)


def _run_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_RUN_ID or not _RUN_ID.fullmatch(value):
        raise ValueError(f"must be 1 to {MAX_RUN_ID} of A-Z a-z 0-9 . _ -, first alphanumeric")
    return value


def _ssh_key(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_SSH_KEY or not _SSH_KEY.fullmatch(value):
        raise ValueError('must be one "ssh-ed25519 <base64>" public key')
    return value


def _optional_ssh_key(value: object) -> str | None:
    return None if value is None else _ssh_key(value)


def _attempt(value: object) -> int:
    return _integer(value, 0, MAX_ATTEMPT)


def _ip(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDR:
        raise ValueError("must be an IP address")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address") from None
    return value


def _layout(value: object) -> tuple[tuple[str, int], ...]:
    """[[host, slots], ...] (lists from JSON, tuples from Python): distinct hosts, at least one."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of [host, slots] pairs")
    layout: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"item {i} must be a [host, slots] pair")
        try:
            name, slots = host_name(pair[0]), _slots(pair[1])
        except ValueError as e:
            raise ValueError(f"item {i}: {e}") from None
        if name in seen:
            raise ValueError(f"names host {name!r} twice")
        seen.add(name)
        layout.append((name, slots))
    return tuple(layout)


def _preflight_rows(value: object) -> tuple[Any, ...]:
    """A list of preflight rows (`launcher.preflight.rows.from_wire` checks each)."""
    from launcher.preflight import rows  # noqa: PLC0415 - only a preflight sends rows

    if not isinstance(value, (list, tuple)) or len(value) > MAX_PREFLIGHT_ROWS:
        raise ValueError(f"must be a list of at most {MAX_PREFLIGHT_ROWS} rows")
    out = []
    for i, raw in enumerate(value):
        try:
            out.append(raw if isinstance(raw, rows.Row) else rows.from_wire(raw))
        except ValueError as e:
            raise ValueError(f"row {i}: {e}") from None
    return tuple(out)


def _preflight_code(value: object) -> int:
    if value not in (0, PREFLIGHT_FAILED) or type(value) is not int:
        raise ValueError(f"must be 0 or {PREFLIGHT_FAILED}")
    return value


PREFLIGHT_FAILED = 78  # EX_CONFIG: errors.EXIT_PREFLIGHT


def _checked(check: Callable[[Any], object]) -> Any:
    """Field metadata: the check `__post_init__` runs on the field's value."""
    return {"check": check}


# --- the messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Checked:
    """Runs every field's check when a message is built (here or by `decode`): a message that
    exists is valid. A check may normalise the value (clip free text, lists to tuples)."""

    TYPE: ClassVar[str]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                checked = f.metadata["check"](value)
            except ValueError as e:
                raise ValueError(f"bad {f.name} {_shown(value)}: {e}") from None
            if checked is not value:
                object.__setattr__(self, f.name, checked)  # still frozen to every caller


@dataclass(frozen=True, slots=True)
class Hello(_Checked):
    """follower -> leader, first on every connection: this host and how many ranks it runs."""

    TYPE: ClassVar[str] = "hello"
    host: str = field(metadata=_checked(host_name))
    slots: int = field(metadata=_checked(_slots))


@dataclass(frozen=True, slots=True)
class Plan(_Checked):
    """leader -> every follower, once all are in: the world and the backend's extras."""

    TYPE: ClassVar[str] = "plan"
    hosts: tuple[tuple[str, int], ...] = field(metadata=_checked(_layout))  # node order
    master_port: int = field(metadata=_checked(_port))
    run_id: str = field(metadata=_checked(_run_id))
    # horovod: the port of the leader's rendezvous server (on the leader's address)
    horovod_port: int | None = field(default=None, metadata=_checked(_optional_port))
    # mpi: the leader's per-job ssh client key, each follower's only authorized key
    mpi_pubkey: str | None = field(default=None, metadata=_checked(_optional_ssh_key))
    # preflight: the port of the preflight's cross-host all_reduce (on the leader's address)
    preflight_port: int | None = field(default=None, metadata=_checked(_optional_port))
    # whole-job restarts: the attempt this plan starts (0: the first; the leader's count)
    attempt: int = field(default=0, metadata=_checked(_attempt))


@dataclass(frozen=True, slots=True)
class Heartbeat(_Checked):
    """Both ways, every quarter of the heartbeat timeout: this end is alive."""

    TYPE: ClassVar[str] = "heartbeat"


@dataclass(frozen=True, slots=True)
class Failed(_Checked):
    """follower -> leader: this host's ranks failed (or it was stopped: `host` and `signal`
    say where and by what). `reason` is the root cause, clipped to `wire.MAX_TEXT` bytes."""

    TYPE: ClassVar[str] = "failed"
    code: int = field(metadata=_checked(_failure_code))
    reason: str = field(metadata=_checked(_reason))
    host: str = field(default="", metadata=_checked(_optional_host))
    signal: str = field(default="", metadata=_checked(_signal))


@dataclass(frozen=True, slots=True)
class Abort(_Checked):
    """leader -> followers: the job's first failure, everywhere. `host` is where it happened
    (when a host failed or was stopped), `signal` the stop signal, if one was the cause."""

    TYPE: ClassVar[str] = "abort"
    code: int = field(metadata=_checked(_failure_code))
    reason: str = field(metadata=_checked(_reason))
    host: str = field(default="", metadata=_checked(_optional_host))
    signal: str = field(default="", metadata=_checked(_signal))


@dataclass(frozen=True, slots=True)
class Done(_Checked):
    """follower -> leader: this host's ranks all succeeded; it waits at the exit barrier."""

    TYPE: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Result(_Checked):
    """leader -> followers: the job's exit code; every host leaves the exit barrier."""

    TYPE: ClassVar[str] = "result"
    code: int = field(metadata=_checked(_exit_code))


@dataclass(frozen=True, slots=True)
class Restart(_Checked):
    """leader -> followers (whole-job restarts): the current attempt failed and the job restarts
    as `attempt`: every host stops its ranks, leaves this meeting and meets again for it."""

    TYPE: ClassVar[str] = "restart"
    attempt: int = field(metadata=_checked(_attempt))


@dataclass(frozen=True, slots=True)
class SshdReady(_Checked):
    """follower -> leader (mpi backend): this host's sshd answers at `addr`:`port` with the
    host key `hostkey`. It reaches the leader's backend as an `events.PeerMessage`."""

    TYPE: ClassVar[str] = "sshd"
    addr: str = field(metadata=_checked(_ip))
    port: int = field(metadata=_checked(_port))
    hostkey: str = field(metadata=_checked(_ssh_key))


@dataclass(frozen=True, slots=True)
class Hold(_Checked):
    """leader -> followers: a hang was declared (`reason`: the culprit line). Take this host's
    ranks' stacks now and answer HELD; stop no rank until the ABORT that follows, so that no
    host's teardown moves another host's ranks out of the collective they hang in."""

    TYPE: ClassVar[str] = "hold"
    reason: str = field(metadata=_checked(_reason))


@dataclass(frozen=True, slots=True)
class Held(_Checked):
    """follower -> leader: this host's ranks' stacks are taken (answer to HOLD, or after this
    host declared the hang itself); it waits for the ABORT."""

    TYPE: ClassVar[str] = "held"


def _request_id(value: object) -> int:
    return _integer(value, 1, MAX_REQUEST_ID)


def _stacks_text(value: object) -> str:
    return _text(value, MAX_STACKS_TEXT)


@dataclass(frozen=True, slots=True)
class StacksWanted(_Checked):
    """leader -> followers (`launcher stacks` on the leader's host): send this host's ranks'
    current stacks, taken without stopping them, as `Stacks` with the same `id`."""

    TYPE: ClassVar[str] = "stacks?"
    id: int = field(metadata=_checked(_request_id))


@dataclass(frozen=True, slots=True)
class Stacks(_Checked):
    """follower -> leader: this host's ranks' stacks for request `id`, as `launcher stacks`
    prints them (clipped to `MAX_STACKS_TEXT` bytes)."""

    TYPE: ClassVar[str] = "stacks"
    id: int = field(metadata=_checked(_request_id))
    text: str = field(metadata=_checked(_stacks_text))


@dataclass(frozen=True, slots=True)
class PreflightReport(_Checked):
    """follower -> leader: this host's preflight rows (`launcher.preflight.rows.Row`). It
    reaches the leader's preflight as an `events.PeerMessage`."""

    TYPE: ClassVar[str] = "preflight_report"
    rows: tuple[Any, ...] = field(metadata=_checked(_preflight_rows))


@dataclass(frozen=True, slots=True)
class PreflightVerdict(_Checked):
    """leader -> followers: every host's rows judged; `code` 0 (passed) or 78 (failed: every
    host exits 78 before any user code)."""

    TYPE: ClassVar[str] = "preflight_verdict"
    code: int = field(metadata=_checked(_preflight_code))
    rows: tuple[Any, ...] = field(metadata=_checked(_preflight_rows))


Message: TypeAlias = (
    Hello | Plan | Heartbeat | Failed | Abort | Done | Result | Restart | SshdReady
    | Hold | Held | StacksWanted | Stacks
    | PreflightReport | PreflightVerdict
)  # fmt: skip

_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Plan,
        Heartbeat,
        Failed,
        Abort,
        Done,
        Result,
        Restart,
        SshdReady,
        Hold,
        Held,
        StacksWanted,
        Stacks,
        PreflightReport,
        PreflightVerdict,
    )
}
# Per type: (every field, the required ones).
_FIELDS = {
    name: (
        frozenset(f.name for f in dataclasses.fields(cls)),
        frozenset(f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING),
    )
    for name, cls in _TYPES.items()
}


def _json(value: object) -> object:
    if type(value).__name__ == "Row":  # a preflight row: its wire form (a list)
        from launcher.preflight.rows import to_wire  # noqa: PLC0415 - only a preflight's

        return to_wire(value)  # type: ignore[arg-type]
    return [_json(v) for v in value] if isinstance(value, tuple) else value


def encode(message: Message) -> dict[str, Any]:
    """The JSON object for `message`, its `type` first; optional fields at their default are
    left out. `wire.FrameWriter.encode` adds the envelope."""
    out: dict[str, Any] = {"type": message.TYPE}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = _json(value)
    return out


def _shown(value: object) -> str:
    """`value` for an error message, short whatever it is (a container is not walked)."""
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a large integer"  # and str() refuses ints of over 4300 digits
    if value is None or isinstance(value, (str, int, float)):
        return f"{value!r:.60}"
    return f"a {type(value).__name__}"


def _names(keys: set[Any]) -> str:
    return ", ".join(sorted(_shown(k) for k in keys))[:200]


def decode(raw: object) -> Message:
    """The message `raw` (a JSON object as `wire.FrameReader` returns it) holds.

    Raises `MessageError` (a `wire.FrameError`) naming what is wrong, and nothing else, for
    anything that is not exactly one valid message; the envelope fields are ignored.
    """
    if not isinstance(raw, dict):
        raise MessageError("a message must be a JSON object", "malformed")
    kind = raw.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {_shown(kind)}", "unknown type")
    assert isinstance(kind, str)
    given = {k: v for k, v in raw.items() if k != "type" and k not in wire.ENVELOPE}
    known, required = _FIELDS[kind]
    if extra := given.keys() - known:
        raise MessageError(
            f"{kind!r} message with unknown field(s) {_names(extra)}", f"invalid {kind}"
        )
    if missing := required - given.keys():
        raise MessageError(f"{kind!r} message without {_names(set(missing))}", f"invalid {kind}")
    try:
        return cls(**given)
    except ValueError as e:
        raise MessageError(f"{kind!r} message: {e}", f"invalid {kind}") from None


def exhaustive(message: NoReturn) -> NoReturn:
    """The last `case _:` of a `match` over `Message`: mypy proves it is never reached (a new
    message type fails type checking at every `match` that does not handle it)."""
    raise AssertionError(f"unhandled control message {message!r:.80}")
