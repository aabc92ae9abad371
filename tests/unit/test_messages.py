"""The control channel's messages: every type round-trips, and `decode` refuses the rest.

`decode`'s contract, stated by the fuzz test: whatever object it is given, it returns one valid
message or raises `MessageError` (a `wire.FrameError`, so the connection that delivered it ends
and nothing else does); and whatever it returns, `encode` gives back an object that decodes to
the same message. The table tests name each bad field and what the error says about it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.control import messages, wire
from launcher.control.messages import (
    Abort,
    Done,
    Failed,
    Heartbeat,
    Held,
    Hello,
    Hold,
    Message,
    MessageError,
    Plan,
    PreflightReport,
    PreflightVerdict,
    Restart,
    Result,
    SshdReady,
    Stacks,
    StacksWanted,
    decode,
    encode,
)
from launcher.preflight.rows import Row

KEY = wire.job_key("job-token")
MINE = "0" * 32
PEER = "f" * 32
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBPbDzvk0T8F7jAr6I2v3i1fm3rhdThbWWEFF1sqTkgZ"

# Every type, with and without its optional fields, and the exact JSON each one is on the wire:
# the objects a version 2 launcher before issue 13 sent and read.
EXAMPLES: list[tuple[Message, dict[str, Any]]] = [
    (Hello("algo-2", 8), {"type": "hello", "host": "algo-2", "slots": 8}),
    (
        Plan((("algo-1", 8), ("algo-2", 4)), 29500, "3f2a9c0d1b7e"),
        {
            "type": "plan",
            "hosts": [["algo-1", 8], ["algo-2", 4]],
            "master_port": 29500,
            "run_id": "3f2a9c0d1b7e",
        },
    ),
    (
        Plan((("algo-1", 1),), 29500, "r1", horovod_port=41000),
        {
            "type": "plan",
            "hosts": [["algo-1", 1]],
            "master_port": 29500,
            "run_id": "r1",
            "horovod_port": 41000,
        },
    ),
    (
        Plan((("algo-1", 1),), 29500, "r1", mpi_pubkey=HOSTKEY),
        {
            "type": "plan",
            "hosts": [["algo-1", 1]],
            "master_port": 29500,
            "run_id": "r1",
            "mpi_pubkey": HOSTKEY,
        },
    ),
    (Heartbeat(), {"type": "heartbeat"}),
    (Failed(7, "rank 5 failed"), {"type": "failed", "code": 7, "reason": "rank 5 failed"}),
    (
        Failed(143, "stopped", "algo-2", "SIGTERM"),
        {"type": "failed", "code": 143, "reason": "stopped", "host": "algo-2", "signal": "SIGTERM"},
    ),
    (
        Abort(3, "hosts never arrived"),
        {"type": "abort", "code": 3, "reason": "hosts never arrived"},
    ),
    (
        Abort(130, "stopped", "algo-1", "SIGINT"),
        {"type": "abort", "code": 130, "reason": "stopped", "host": "algo-1", "signal": "SIGINT"},
    ),
    (Done(), {"type": "done"}),
    (Result(0), {"type": "result", "code": 0}),
    (Restart(3), {"type": "restart", "attempt": 3}),
    (
        Plan((("algo-1", 1),), 29500, "r1", attempt=2),
        {
            "type": "plan",
            "hosts": [["algo-1", 1]],
            "master_port": 29500,
            "run_id": "r1",
            "attempt": 2,
        },
    ),
    (
        SshdReady("10.0.0.2", 2222, HOSTKEY),
        {"type": "sshd", "addr": "10.0.0.2", "port": 2222, "hostkey": HOSTKEY},
    ),
    (
        SshdReady("fd00::2", 22, HOSTKEY),
        {"type": "sshd", "addr": "fd00::2", "port": 22, "hostkey": HOSTKEY},
    ),
    (Hold("hang: no progress for 30 s"), {"type": "hold", "reason": "hang: no progress for 30 s"}),
    (Held(), {"type": "held"}),
    (StacksWanted(7), {"type": "stacks?", "id": 7}),
    (Stacks(7, "# rank 1 on algo-2"), {"type": "stacks", "id": 7, "text": "# rank 1 on algo-2"}),
    (
        Plan((("algo-1", 1),), 29500, "r1", preflight_port=41001),
        {
            "type": "plan",
            "hosts": [["algo-1", 1]],
            "master_port": 29500,
            "run_id": "r1",
            "preflight_port": 41001,
        },
    ),
    (
        PreflightReport((Row("cpu.matmul", "algo-2", 12.5, "GFLOPS"),)),
        {
            "type": "preflight_report",
            "rows": [["cpu.matmul", "algo-2", "", 12.5, "GFLOPS", "", "INFO", "", 0.0]],
        },
    ),
    (
        PreflightVerdict(78, (Row("dir.writable", "algo-3", "no", verdict="FAIL"),)),
        {
            "type": "preflight_verdict",
            "code": 78,
            "rows": [["dir.writable", "algo-3", "", "no", "", "", "FAIL", "", 0.0]],
        },
    ),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m, _ in EXAMPLES} == set(messages._TYPES.values())
    assert {t.TYPE for t in messages._TYPES.values()} == {
        *("hello", "plan", "heartbeat", "failed", "abort", "done", "result", "sshd", "hold"),
        *("held", "stacks?", "stacks", "preflight_report", "preflight_verdict", "restart"),
    }


@pytest.mark.parametrize(("message", "raw"), EXAMPLES, ids=lambda x: getattr(x, "TYPE", ""))
def test_each_message_is_the_same_json_as_before_and_round_trips(
    message: Message, raw: dict[str, Any]
) -> None:
    assert encode(message) == raw
    assert next(iter(encode(message))) == "type"
    assert decode(raw) == message
    assert decode(json.loads(json.dumps(encode(message)))) == message


@pytest.mark.parametrize(("message", "raw"), EXAMPLES, ids=lambda x: getattr(x, "TYPE", ""))
def test_each_message_round_trips_through_real_frames(
    message: Message, raw: dict[str, Any]
) -> None:
    """Through `FrameWriter` and `FrameReader`: the envelope the wire adds is ignored."""
    reader = wire.FrameReader(KEY, MINE)
    frames = wire.challenge(PEER, KEY) + wire.FrameWriter(KEY, MINE).encode(encode(message))
    challenge, delivered = reader.feed(frames)
    assert delivered == {**raw, "v": wire.VERSION, "ch": MINE, "seq": 1}
    assert decode(delivered) == message
    with pytest.raises(MessageError, match="unknown message type 'challenge'"):
        decode(challenge)  # the wire's own opening is no message


def test_every_field_of_every_type_is_checked() -> None:
    for cls in messages._TYPES.values():
        for f in dataclasses.fields(cls):
            assert callable(f.metadata.get("check")), f"{cls.__name__}.{f.name}"


def test_messages_are_frozen() -> None:
    hello = Hello("algo-2", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.slots = 2  # type: ignore[misc]


# --- free text is clipped, never refused --------------------------------------------------------


def test_a_10_mb_reason_is_clipped_when_the_message_is_built_and_when_decoded() -> None:
    huge = "ValueError: " + "x" * 10_000_000
    assert Failed(1, huge).reason == wire.clip(huge)
    assert Abort(1, huge).reason == wire.clip(huge)
    assert decode({"type": "failed", "code": 1, "reason": huge}).reason == wire.clip(huge)  # type: ignore[union-attr]
    frame = wire.FrameWriter(KEY, MINE).encode(encode(Abort(1, huge)))
    assert len(frame) - 4 <= wire.MAX_FRAME


def test_a_hosts_stacks_are_clipped_to_their_bound_and_fit_a_frame() -> None:
    huge = "  File x.py, line 1\n" * 100_000
    stacks = Stacks(1, huge)
    assert len(stacks.text.encode()) <= messages.MAX_STACKS_TEXT
    frame = wire.FrameWriter(KEY, MINE).encode(encode(Stacks(1, "\x01" * 10**6)))
    assert len(frame) - 4 <= wire.MAX_FRAME  # the worst JSON escaping still fits


def test_a_signal_name_is_clipped_to_its_bound() -> None:
    failed = Failed(143, "stopped", signal="SIG" + "X" * 100)
    assert len(failed.signal.encode()) <= messages.MAX_SIGNAL
    assert failed.signal.endswith(" bytes]")
    assert Abort(129, "stopped", signal="signal 99").signal == "signal 99"


def test_a_lone_surrogate_in_free_text_is_replaced() -> None:
    """JSON can carry "\\ud800"; no log line or failure file could hold it."""
    message = decode(json.loads('{"type": "abort", "code": 1, "reason": "bad \\ud800 byte"}'))
    assert message == Abort(1, "bad ? byte")
    assert isinstance(message, Abort)
    message.reason.encode("utf-8")  # does not raise


# --- what decode refuses ------------------------------------------------------------------------


def valid(kind: str) -> dict[str, Any]:
    """A valid wire object of `kind` with every optional field set."""
    objects: dict[str, dict[str, Any]] = {
        "hello": {"type": "hello", "host": "algo-2", "slots": 2},
        "plan": {
            "type": "plan",
            "hosts": [["algo-1", 1], ["algo-2", 2]],
            "master_port": 29500,
            "run_id": "r1",
            "horovod_port": 41000,
            "mpi_pubkey": HOSTKEY,
            "preflight_port": 41001,
            "attempt": 1,
        },
        "heartbeat": {"type": "heartbeat"},
        "failed": {"type": "failed", "code": 7, "reason": "x", "host": "algo-2", "signal": "S"},
        "abort": {"type": "abort", "code": 7, "reason": "x", "host": "algo-2", "signal": "S"},
        "done": {"type": "done"},
        "result": {"type": "result", "code": 0},
        "restart": {"type": "restart", "attempt": 1},
        "sshd": {"type": "sshd", "addr": "10.0.0.2", "port": 22, "hostkey": HOSTKEY},
        "hold": {"type": "hold", "reason": "hang: no progress"},
        "held": {"type": "held"},
        "stacks?": {"type": "stacks?", "id": 7},
        "stacks": {"type": "stacks", "id": 7, "text": "# rank 1"},
        "preflight_report": {"type": "preflight_report", "rows": [ROW]},
        "preflight_verdict": {"type": "preflight_verdict", "code": 78, "rows": [ROW]},
    }
    return dict(objects[kind])


ROW = ["gpu.ecc", "algo-2", "0 GPU-1", 3.0, "errors", "== 0", "FAIL", "ECC", 0.5]


# (type, field, bad value, what the error says); the field is set to the value in `valid`.
BAD_FIELDS: list[tuple[str, str, object, str]] = [
    ("preflight_report", "rows", "x", "must be a list of at most 2048 rows"),
    ("preflight_report", "rows", [[1]], "row 0: a row must be a list of 9 fields"),
    ("preflight_report", "rows", [[*ROW[:6], "BAD", *ROW[7:]]], "row 0: row verdict must be"),
    ("preflight_report", "rows", [[*ROW[:3], True, *ROW[4:]]], "value must be a number or text"),
    ("preflight_verdict", "code", 1, "bad code 1: must be 0 or 78"),
    ("preflight_verdict", "code", True, "must be 0 or 78"),
    ("hello", "host", "", "must be a host name"),
    ("hello", "host", "algo 2", "must be a host name"),
    ("hello", "host", "algo-2\n", "must be a host name"),
    ("hello", "host", "algo-\x002", "must be a host name"),
    ("hello", "host", "a" * 254, "must be a host name: 1 to 253"),
    ("hello", "host", 2, "bad host 2"),
    ("hello", "host", None, "bad host None"),
    ("hello", "slots", 0, "bad slots 0: must be an integer from 1 to 1024"),
    ("hello", "slots", 1025, "bad slots 1025"),
    ("hello", "slots", -1, "bad slots -1"),
    ("hello", "slots", True, "bad slots True"),
    ("hello", "slots", 1.0, "bad slots 1.0"),
    ("hello", "slots", "2", "bad slots '2'"),
    ("hello", "slots", 10**5000, "bad slots a large integer"),
    ("plan", "hosts", [], "bad hosts a list: must be a non-empty list"),
    ("plan", "hosts", "algo-1", "must be a non-empty list of [host, slots] pairs"),
    ("plan", "hosts", [["algo-1", 1], ["algo-1", 2]], "names host 'algo-1' twice"),
    ("plan", "hosts", [["algo-1"]], "item 0 must be a [host, slots] pair"),
    ("plan", "hosts", [["algo-1", 1, 2]], "item 0 must be a [host, slots] pair"),
    ("plan", "hosts", [{"algo-1": 1}], "item 0 must be a [host, slots] pair"),
    ("plan", "hosts", [["algo-1", 1], ["algo 2", 1]], "item 1: must be a host name"),
    ("plan", "hosts", [["algo-1", 0]], "item 0: must be an integer from 1"),
    ("plan", "master_port", 0, "bad master_port 0: must be an integer from 1 to 65535"),
    ("plan", "master_port", 65536, "bad master_port 65536"),
    ("plan", "master_port", "29500", "bad master_port '29500'"),
    ("plan", "run_id", "", "bad run_id ''"),
    ("plan", "run_id", "-r1", "bad run_id '-r1'"),
    ("plan", "run_id", "r 1", "bad run_id 'r 1'"),
    ("plan", "run_id", "r" * 65, "must be 1 to 64"),
    ("plan", "run_id", 1, "bad run_id 1"),
    ("plan", "horovod_port", 0, "bad horovod_port 0"),
    ("plan", "horovod_port", "41000", "bad horovod_port '41000'"),
    ("plan", "mpi_pubkey", "ssh-rsa AAAA", 'must be one "ssh-ed25519 <base64>" public key'),
    ("plan", "mpi_pubkey", HOSTKEY + "\n", "bad mpi_pubkey"),
    ("plan", "mpi_pubkey", HOSTKEY + "\nHost *", "bad mpi_pubkey"),
    ("plan", "mpi_pubkey", "ssh-ed25519 " + "A" * 2000, "bad mpi_pubkey"),
    ("plan", "mpi_pubkey", 7, "bad mpi_pubkey 7"),
    ("failed", "code", 0, "bad code 0: must be an integer from 1 to 255"),
    ("failed", "code", 256, "bad code 256"),
    ("failed", "code", "7", "bad code '7'"),
    ("failed", "code", False, "bad code False"),
    ("failed", "reason", None, "bad reason None: must be a string"),
    ("failed", "reason", ["x"], "bad reason a list: must be a string"),
    ("failed", "host", "two words", "bad host 'two words'"),
    ("failed", "signal", 15, "bad signal 15: must be a string"),
    ("abort", "code", 0, "bad code 0"),
    ("abort", "code", -1, "bad code -1"),
    ("abort", "reason", 1, "bad reason 1"),
    ("abort", "host", None, "bad host None"),
    ("abort", "signal", None, "bad signal None"),
    ("result", "code", -1, "bad code -1: must be an integer from 0 to 255"),
    ("result", "code", 256, "bad code 256"),
    ("result", "code", None, "bad code None"),
    ("sshd", "addr", "not-an-ip", "bad addr 'not-an-ip': must be an IP address"),
    ("sshd", "addr", "algo-2", "must be an IP address"),
    ("sshd", "addr", "1" * 100, "must be an IP address"),
    ("sshd", "addr", 167772162, "must be an IP address"),
    ("sshd", "port", 0, "bad port 0"),
    ("sshd", "port", "22", "bad port '22'"),
    ("sshd", "hostkey", "ssh-ed25519 AAAA\nHost *", "bad hostkey"),
    ("sshd", "hostkey", "", "bad hostkey ''"),
    ("hold", "reason", None, "bad reason None: must be a string"),
    ("stacks?", "id", 0, "bad id 0: must be an integer from 1 to 2147483647"),
    ("stacks?", "id", "7", "bad id '7'"),
    ("stacks", "id", 2**31, "bad id 2147483648"),
    ("stacks", "text", 7, "bad text 7: must be a string"),
]


@pytest.mark.parametrize(
    ("kind", "name", "value", "says"),
    BAD_FIELDS,
    ids=[f"{k}.{n}={messages._shown(v):.20}" for k, n, v, _ in BAD_FIELDS],
)
def test_decode_refuses_each_bad_field_naming_it(
    kind: str, name: str, value: object, says: str
) -> None:
    assert decode(valid(kind))  # the rest of the object is fine
    with pytest.raises(MessageError, match=None) as error:
        decode({**valid(kind), name: value})
    assert says in str(error.value)
    assert str(error.value).startswith(f"'{kind}' message: bad {name} ")
    assert error.value.kind == f"invalid {kind}"
    assert isinstance(error.value, wire.FrameError)
    assert len(str(error.value)) < 400  # a huge value is never echoed whole


@pytest.mark.parametrize(("kind", "name", "value", "says"), BAD_FIELDS[::3])
def test_building_a_message_with_a_bad_value_raises_value_error(
    kind: str, name: str, value: object, says: str
) -> None:
    cls = messages._TYPES[kind]
    fields = {k: v for k, v in valid(kind).items() if k != "type"}
    with pytest.raises(ValueError, match=f"^bad {name} "):
        cls(**{**fields, name: value})


@pytest.mark.parametrize(
    ("raw", "says", "kind"),
    [
        ([{"type": "hello"}], "must be a JSON object", "malformed"),
        ("hello", "must be a JSON object", "malformed"),
        (None, "must be a JSON object", "malformed"),
        ({}, "unknown message type None", "unknown type"),
        ({"type": 7}, "unknown message type 7", "unknown type"),
        ({"type": ["hello"]}, "unknown message type a list", "unknown type"),
        (
            {"type": "HELLO", "host": "algo-2", "slots": 1},
            "unknown message type 'HELLO'",
            "unknown type",
        ),
        ({"type": "sshd_ready"}, "unknown message type 'sshd_ready'", "unknown type"),
        ({"type": "hello", "host": "algo-2"}, "'hello' message without 'slots'", "invalid hello"),
        ({"type": "plan", "hosts": [["a", 1]]}, "without 'master_port', 'run_id'", "invalid plan"),
        ({"type": "failed", "code": 1}, "'failed' message without 'reason'", "invalid failed"),
        ({"type": "result"}, "'result' message without 'code'", "invalid result"),
        ({"type": "heartbeat", "x": 1}, "unknown field(s) 'x'", "invalid heartbeat"),
        ({"type": "done", "code": 0}, "unknown field(s) 'code'", "invalid done"),
        (
            {"type": "result", "code": 0, "reason": "ok"},
            "unknown field(s) 'reason'",
            "invalid result",
        ),
        ({**valid("hello"), "nonce": "a" * 32}, "unknown field(s) 'nonce'", "invalid hello"),
        ({**valid("sshd"), "host": "algo-2"}, "unknown field(s) 'host'", "invalid sshd"),
        ({"type": "hello", "host": "a", "slots": 1, 7: 1}, "unknown field(s) 7", "invalid hello"),
    ],
)
def test_decode_refuses_what_is_not_exactly_one_message(raw: object, says: str, kind: str) -> None:
    with pytest.raises(MessageError) as error:
        decode(raw)
    assert says in str(error.value)
    assert error.value.kind == kind


def test_the_envelope_is_the_wires_and_is_ignored() -> None:
    assert decode({"type": "done", "v": 2, "ch": MINE, "seq": 9}) == Done()
    assert set(wire.ENVELOPE) == {"v", "ch", "seq"}


def test_optional_fields_may_be_given_at_their_default() -> None:
    assert decode({"type": "failed", "code": 1, "reason": "", "host": "", "signal": ""}) == Failed(
        1, ""
    )
    plan = {"type": "plan", "hosts": [["a", 1]], "master_port": 1, "run_id": "r"}
    assert decode({**plan, "horovod_port": None, "mpi_pubkey": None}) == Plan((("a", 1),), 1, "r")


# --- fuzz ---------------------------------------------------------------------------------------

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["algo-1", "10.0.0.2", HOSTKEY, "r1", "SIGTERM", "", "ssh-ed25519 A"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
FIELD_NAMES = {f.name for cls in messages._TYPES.values() for f in dataclasses.fields(cls)}
field_names = st.sampled_from(sorted(FIELD_NAMES | {"type", "v", "ch", "seq", "nonce"})) | st.text(
    max_size=8
)
# Near-valid values of every field, so the fuzz reaches past the first check.
near_valid = st.one_of(
    st.integers(min_value=-2, max_value=70000),
    st.sampled_from(["algo-1", "algo-2", "algo 2", "", "10.0.0.2", "::1", HOSTKEY, "r1", "x"]),
    st.lists(
        st.tuples(st.sampled_from(["algo-1", "algo-2", "", 1]), st.integers(-1, 1100)).map(list),
        max_size=3,
    ),
)


def mutated(kind: str, changes: list[tuple[str, bool, object]]) -> dict[str, Any]:
    """`valid(kind)` with fields dropped (True) or set to a value (False)."""
    raw = valid(kind)
    for name, drop, value in changes:
        if drop:
            raw.pop(name, None)
        else:
            raw[name] = value
    return raw


objects = st.one_of(
    st.builds(
        mutated,
        st.sampled_from(sorted(messages._TYPES)),
        st.lists(st.tuples(field_names, st.booleans(), near_valid | json_values), max_size=3),
    ),
    st.builds(
        lambda kind, extra: {"type": kind, **extra},
        st.sampled_from(sorted(messages._TYPES)) | st.text(max_size=10) | json_values,
        st.dictionaries(field_names, near_valid | json_values, max_size=6),
    ),
)


@FUZZ
@given(raw=objects | json_values)
def test_fuzz_decode_returns_a_valid_message_or_raises_message_error(raw: object) -> None:
    try:
        message = decode(raw)
    except MessageError as e:
        assert e.kind in ("malformed", "unknown type") or e.kind.startswith("invalid ")
        assert len(str(e)) < 600
        return
    # Whatever decoded is a message that goes over a frame and comes back the same.
    out = encode(message)
    assert decode(json.loads(json.dumps(out))) == message
    assert decode(out) == message


@FUZZ
@given(
    kind=st.sampled_from(sorted(messages._TYPES)),
    name=field_names,
    value=near_valid | json_values,
    drop=st.booleans(),
)
def test_fuzz_one_changed_field_of_a_valid_message_is_kept_exactly_or_refused(
    kind: str, name: str, value: object, drop: bool
) -> None:
    raw = valid(kind)
    if drop:
        raw.pop(name, None)
    else:
        raw[name] = value
    try:
        message = decode(raw)
    except MessageError:
        return
    wire_form = {k: v for k, v in raw.items() if k not in wire.ENVELOPE}
    out = encode(message)
    # Accepted: what it holds is what was sent (free text aside, which may be clipped or
    # have a surrogate replaced), and optional fields at their default may be left out.
    for key, sent in wire_form.items():
        if key in out:
            if key not in ("reason", "signal"):
                assert out[key] == sent
        else:
            assert sent in ("", None) or (key == "attempt" and sent == 0)


@pytest.mark.parametrize("attempt", [-1, 1001, True, 1.0, "1"])
def test_an_attempt_out_of_bounds_is_refused(attempt: object) -> None:
    with pytest.raises(messages.MessageError, match="attempt"):
        decode({"type": "restart", "attempt": attempt})
    plan = {"type": "plan", "hosts": [["a", 1]], "master_port": 1, "run_id": "r"}
    with pytest.raises(messages.MessageError, match="attempt"):
        decode({**plan, "attempt": attempt})
