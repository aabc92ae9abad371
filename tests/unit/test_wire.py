"""The control channel's frame format: what `FrameReader` accepts, and that nothing else gets in.

The fuzz tests state the parser's whole contract: whatever bytes arrive, in whatever pieces,
`feed` only ever returns valid messages of this job and this connection (authenticated,
version 2, a JSON object with a string `type`, the peer's challenge first, then frames bound
to this end's nonce and numbered 1, 2, 3...) or raises `FrameError`; it never raises anything
else, never buffers more than one maximal frame, and never delivers a frame twice.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.control import wire

KEY = wire.job_key("job-token")
OTHER_KEY = wire.job_key("another-job")
MINE = "0" * 32  # the nonce of the reading end's challenge
PEER = "f" * 32  # the nonce of the writing end's challenge
OPENING = wire.challenge(PEER, KEY)  # what the writing end sends first


def raw_frame(payload: bytes, key: bytes = KEY, length: int | None = None) -> bytes:
    """A frame around arbitrary payload bytes (correctly tagged unless `key` is wrong)."""
    tag = hmac.new(key, payload, hashlib.sha256).digest()
    body = tag + payload
    return struct.pack(">I", len(body) if length is None else length) + body


def bound(payload: dict[str, Any], seq: int = 1, ch: str = MINE) -> bytes:
    """A correctly tagged frame of version 2 with this binding and number."""
    return raw_frame(json.dumps({"v": 2, "ch": ch, "seq": seq, **payload}).encode())


def reader(max_frame: int = wire.MAX_FRAME) -> wire.FrameReader:
    return wire.FrameReader(KEY, MINE, max_frame)


def opened(max_frame: int = wire.MAX_FRAME) -> wire.FrameReader:
    """A reader that has taken the peer's challenge."""
    r = reader(max_frame)
    assert r.feed(OPENING) == [{"v": 2, "type": "challenge", "seq": 0, "nonce": PEER}]
    return r


def stream(messages: list[dict[str, Any]], key: bytes = KEY) -> bytes:
    """The writing end's bytes: its challenge, then `messages` bound to MINE."""
    writer = wire.FrameWriter(key, MINE)
    return wire.challenge(PEER, key) + b"".join(writer.encode(m) for m in messages)


def sent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the reading end gets for `stream(messages)`, the challenge first."""
    opening: dict[str, Any] = {"v": 2, "type": "challenge", "seq": 0, "nonce": PEER}
    return [opening] + [{**m, "v": 2, "ch": MINE, "seq": i} for i, m in enumerate(messages, 1)]


def feed_all(reader: wire.FrameReader, chunks: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        out += reader.feed(chunk)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def assert_valid(message: dict[str, Any]) -> None:
    assert isinstance(message, dict)
    assert message["v"] == wire.VERSION and type(message["v"]) is int
    assert isinstance(message["type"], str)
    assert type(message["seq"]) is int


FUZZ_TEXT = settings(max_examples=200, deadline=None)


# --- examples ---------------------------------------------------------------------------------


def test_round_trip_adds_the_envelope_and_keeps_every_field() -> None:
    message: dict[str, Any] = {"type": "hello", "host": "algo-2", "slots": 8, "note": "ünïcode ✓"}
    frame = wire.FrameWriter(KEY, MINE).encode(message)
    assert opened().feed(frame) == [{**message, "v": wire.VERSION, "ch": MINE, "seq": 1}]
    assert wire.VERSION == 2


def test_frames_split_at_every_byte_and_batched_arrive_whole_and_in_order() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "heartbeat"},
        {"type": "plan", "hosts": [["algo-1", 2]]},
        {"type": "x"},
    ]
    data = stream(messages)
    expected = sent(messages)
    for cut in range(len(data) + 1):
        assert feed_all(reader(), [data[:cut], data[cut:]]) == expected
    assert feed_all(reader(), [bytes([b]) for b in data]) == expected
    assert reader().feed(data) == expected


def test_a_frame_under_another_jobs_token_is_refused() -> None:
    with pytest.raises(wire.FrameError, match="authentication") as error:
        reader().feed(wire.challenge(PEER, OTHER_KEY))
    assert error.value.kind == "bad token"
    frame = wire.FrameWriter(OTHER_KEY, MINE).encode({"type": "hello", "host": "algo-2"})
    with pytest.raises(wire.FrameError, match="authentication"):
        opened().feed(frame)


def test_job_keys_differ_per_token_and_are_stable() -> None:
    assert wire.job_key("a") == wire.job_key("a") != wire.job_key("b")
    assert len(wire.job_key("")) == 32


def test_nonces_are_fresh_128_bit_hex() -> None:
    nonces = {wire.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)


@pytest.mark.parametrize("position", [4, 20, 36, 40])  # in the tag, and in the payload
def test_one_flipped_bit_anywhere_after_the_header_is_refused(position: int) -> None:
    frame = bytearray(wire.FrameWriter(KEY, MINE).encode({"type": "failed", "code": 1}))
    frame[position] ^= 0x01
    with pytest.raises(wire.FrameError, match="authentication"):
        opened().feed(bytes(frame))


def test_an_oversized_length_is_refused_from_the_header_alone() -> None:
    with pytest.raises(wire.FrameError, match="outside") as error:
        reader(max_frame=1000).feed(struct.pack(">I", 1001))  # no body needs to arrive
    assert error.value.kind == "bad length"
    with pytest.raises(wire.FrameError, match="4294967295"):
        reader().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("length", [0, 1, 33])
def test_a_frame_too_short_for_tag_and_object_is_refused(length: int) -> None:
    with pytest.raises(wire.FrameError, match="outside"):
        reader().feed(struct.pack(">I", length) + b"\0" * length)


def test_a_frame_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() -> None:
    message = {"type": "plan", "pad": ""}
    overhead = len(wire.FrameWriter(KEY, MINE).encode(message)) - 4
    message["pad"] = "x" * (wire.MAX_FRAME - overhead)
    frame = wire.FrameWriter(KEY, MINE).encode(message)
    assert len(frame) == 4 + wire.MAX_FRAME
    assert opened().feed(frame)[0]["pad"] == message["pad"]
    message["pad"] += "x"
    with pytest.raises(ValueError, match="exceeds"):
        wire.FrameWriter(KEY, MINE).encode(message)


def test_a_frame_too_large_to_encode_uses_up_no_number() -> None:
    writer = wire.FrameWriter(KEY, MINE)
    with pytest.raises(ValueError, match="exceeds"):
        writer.encode({"type": "failed", "reason": "x" * wire.MAX_FRAME})
    assert opened().feed(writer.encode({"type": "heartbeat"}))[0]["seq"] == 1


@pytest.mark.parametrize("field", ["v", "ch", "seq"])
def test_a_message_cannot_set_its_own_envelope(field: str) -> None:
    with pytest.raises(ValueError, match="envelope"):
        wire.FrameWriter(KEY, MINE).encode({"type": "hello", field: 1})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b'{"v": 1, "type": "challenge", "seq": 0}', "version 1"),  # the old protocol
        (b'{"v": 3, "type": "hello"}', "version 3"),
        (b'{"v": true, "type": "hello"}', "version True"),  # true == 1 in Python
        (b'{"v": 2.0, "type": "hello"}', "version 2.0"),
        (b'{"v": "2", "type": "hello"}', "version '2'"),
        (b'{"type": "hello"}', "version None"),
        (b'{"v": 2}', "no type"),
        (b'{"v": 2, "type": 7}', "no type"),
        (b'[1, "hello"]', "not a JSON object"),
        (b'"hello"', "not a JSON object"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"v": 2, "type": "hello"', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # recursion depth
        (b'{"v": 2, "type": "x", "n": ' + b"9" * 5000 + b"}", "not JSON"),  # int digit limit
        (b'{"v": 2, "type": "challenge"}', "number None"),
        (b'{"v": 2, "type": "challenge", "seq": false}', "number False"),
        (b'{"v": 2, "type": "challenge", "seq": 0}', "without a valid nonce"),
        (b'{"v": 2, "type": "challenge", "seq": 0, "nonce": "ab"}', "without a valid nonce"),
        (b'{"v": 2, "type": "challenge", "seq": 0, "nonce": 7}', "without a valid nonce"),
        (b'{"v": 2, "type": "challenge", "seq": 1, "nonce": "' + b"a" * 32 + b'"}', "before"),
        (b'{"v": 2, "type": "hello", "seq": 0, "nonce": "' + b"a" * 32 + b'"}', "before"),
    ],
)
def test_authenticated_but_malformed_payloads_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(wire.FrameError, match=match):
        reader().feed(raw_frame(payload))


def test_messages_before_a_bad_frame_are_delivered_by_the_call_that_completes_them() -> None:
    r = opened()
    assert r.feed(wire.FrameWriter(KEY, MINE).encode({"type": "heartbeat"}))[0]["seq"] == 1
    with pytest.raises(wire.FrameError):
        r.feed(raw_frame(b'{"v": 2, "type": "x"}', OTHER_KEY))


# --- replays ----------------------------------------------------------------------------------


def test_nothing_but_the_challenge_may_open_a_connection() -> None:
    """A frame recorded after some other connection's challenge cannot start this one."""
    with pytest.raises(wire.FrameError, match="'hello' frame before the peer's challenge") as e:
        reader().feed(bound({"type": "hello", "host": "algo-2", "slots": 1}))
    assert e.value.kind == "no challenge"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "hello", "host": "algo-2", "slots": 1},
        {"type": "done"},
        {"type": "failed", "code": 1, "reason": "x"},
        {"type": "heartbeat"},
        {"type": "abort", "code": 143, "reason": "stopped"},
        {"type": "plan", "hosts": [["algo-1", 1]]},
        {"type": "result", "code": 0},
    ],
)
def test_a_frame_recorded_on_another_connection_is_refused(message: dict[str, Any]) -> None:
    """The same job (same key), another connection: its frames carry another nonce."""
    recorded = wire.challenge(PEER, KEY) + wire.FrameWriter(KEY, "1" * 32).encode(message)
    with pytest.raises(wire.FrameError, match="bound to another connection") as error:
        reader().feed(recorded)
    assert error.value.kind == "replayed"


@pytest.mark.parametrize("kind", ["hello", "done", "failed", "heartbeat"])
def test_a_frame_replayed_on_the_same_connection_is_refused(kind: str) -> None:
    writer = wire.FrameWriter(KEY, MINE)
    frame = writer.encode({"type": kind})
    r = opened()
    assert [m["type"] for m in r.feed(frame)] == [kind]
    with pytest.raises(wire.FrameError, match=f"'{kind}' frame number 1 after 1") as error:
        r.feed(frame)
    assert error.value.kind == "replayed"


def test_frames_out_of_order_or_skipped_are_refused() -> None:
    writer = wire.FrameWriter(KEY, MINE)
    first, second, third = (writer.encode({"type": "heartbeat"}) for _ in range(3))
    with pytest.raises(wire.FrameError, match="number 2 after 0"):
        opened().feed(second)
    r = opened()
    r.feed(first + second)
    with pytest.raises(wire.FrameError, match="number 2 after 2"):
        r.feed(second + third)


def test_a_replayed_challenge_is_refused_once_the_connection_is_open() -> None:
    r = opened()
    with pytest.raises(wire.FrameError, match="'challenge' frame bound to another"):
        r.feed(OPENING)


def test_a_frame_reflected_back_to_its_sender_is_refused() -> None:
    """What this end sent is bound to the peer's nonce, not to its own."""
    mine_out = wire.FrameWriter(KEY, PEER).encode({"type": "failed", "code": 1})
    with pytest.raises(wire.FrameError, match="bound to another connection"):
        opened().feed(mine_out)


# --- free text ----------------------------------------------------------------------------------


def test_short_text_is_not_clipped() -> None:
    assert wire.clip("boom") == "boom"
    text = "é" * (wire.MAX_TEXT // 2)  # exactly the limit in UTF-8
    assert wire.clip(text) == text


def test_a_10_mb_root_cause_is_clipped_with_a_marker_and_fits_a_frame() -> None:
    text = "ValueError: " + "x" * 10_000_000
    clipped = wire.clip(text)
    assert len(clipped.encode()) <= wire.MAX_TEXT
    assert clipped.startswith("ValueError: xxx")
    kept = len(clipped.encode()) - len(f"... [truncated {len(text) - 16300} bytes]")
    assert clipped.endswith(f"... [truncated {len(text) - kept} bytes]")
    frame = wire.FrameWriter(KEY, MINE).encode({"type": "failed", "reason": clipped})
    assert opened().feed(frame)[0]["reason"] == clipped


def test_clipping_cuts_on_a_character_boundary_and_counts_bytes() -> None:
    text = "€" * 12  # 3 bytes each: 36 bytes
    clipped = wire.clip(text, limit=31)  # 24 for the marker; 7 bytes of room: 2 whole euros
    assert clipped == "€€... [truncated 30 bytes]"
    assert len(clipped.encode()) <= 31


@FUZZ_TEXT
@given(text=st.text(max_size=300), limit=st.integers(min_value=0, max_value=400))
def test_fuzz_clip_never_exceeds_its_limit_and_keeps_a_prefix(text: str, limit: int) -> None:
    clipped = wire.clip(text, limit)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        assert clipped == text
        return
    head, sep, marker = clipped.rpartition("... [truncated ")
    assert sep and text.startswith(head)
    dropped = size - len(head.encode("utf-8", "surrogatepass"))
    assert marker == f"{dropped} bytes]"
    # The marker alone may exceed a tiny limit; any useful limit is respected.
    if limit >= len(f"... [truncated {size} bytes]"):
        assert len(clipped.encode("utf-8", "surrogatepass")) <= limit


@FUZZ_TEXT
@given(unit=st.sampled_from(["\x00", "\x1f", '"', "\\", "é", "€", "😀", "\u2028"]))
def test_fuzz_any_clipped_text_fits_one_frame_even_after_json_escaping(unit: str) -> None:
    text = unit * (wire.MAX_TEXT * 2)  # the worst escapes: \u0000, surrogate pairs
    frame = wire.FrameWriter(KEY, MINE).encode({"type": "abort", "reason": wire.clip(text)})
    assert len(frame) - 4 <= wire.MAX_FRAME
    assert opened().feed(frame)[0]["reason"] == wire.clip(text)


# --- fuzz -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=4,
)
messages = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=12)},
    optional={"host": st.text(max_size=20), "slots": st.integers(), "data": json_values},
)


def run_reader(reader: wire.FrameReader, chunks: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """Feed chunk by chunk; (messages returned, whether a FrameError ended the connection).

    Any exception other than FrameError fails the test, as does a buffer beyond one frame.
    """
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        try:
            got = reader.feed(chunk)
        except wire.FrameError:
            return out, True
        for message in got:
            assert_valid(message)
        out += got
        assert len(reader._buffer) < 4 + reader._max  # the memory bound
    return out, False


@FUZZ
@given(
    data=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    max_frame=st.sampled_from([34, 100, 4096, wire.MAX_FRAME]),
    challenged=st.booleans(),
)
def test_fuzz_arbitrary_bytes_yield_only_valid_messages_or_frame_error(
    data: bytes, cuts: list[int], max_frame: int, challenged: bool
) -> None:
    r = opened(max_frame) if challenged and max_frame >= len(OPENING) else reader(max_frame)
    out, _ = run_reader(r, split(data, cuts))
    # Random bytes cannot carry a valid tag under the job key.
    assert out == []


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    lengths=st.lists(st.one_of(st.none(), st.integers(0, 2**32 - 1)), min_size=4, max_size=4),
    key=st.sampled_from([KEY, OTHER_KEY]),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_fuzz_tagged_arbitrary_payloads_and_lying_lengths(
    payloads: list[bytes], lengths: list[int | None], key: bytes, cuts: list[int]
) -> None:
    data = b"".join(raw_frame(p, key, n) for p, n in zip(payloads, lengths, strict=False))
    out, _ = run_reader(reader(max_frame=4096), split(data, cuts))
    if key is OTHER_KEY:
        assert out == []
    # Arbitrary payloads are never bound to this connection: at most a challenge gets in.
    assert all(m["type"] == wire.CHALLENGE for m in out) and len(out) <= 1


@settings(FUZZ, max_examples=150)
@given(
    batch=st.lists(messages, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
    flip=st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.integers(1, 255))),
    tail=st.binary(max_size=64),
)
def test_fuzz_valid_streams_survive_any_split_and_corruption_only_truncates(
    batch: list[dict[str, Any]],
    cuts: list[int],
    flip: tuple[int, int] | None,
    tail: bytes,
) -> None:
    expected = sent(batch)
    data = bytearray(stream(batch))
    if flip is not None:
        data[flip[0] % len(data)] ^= flip[1]
    out, failed = run_reader(reader(), split(bytes(data) + tail, cuts))
    # Corruption or a garbage tail can end the stream early (a FrameError drops the messages
    # completed by the same `feed` call: the connection is closed anyway), but never alter,
    # reorder or invent a message.
    assert out == expected[: len(out)]
    if flip is None and not failed:
        assert out == expected
    if flip is not None:
        assert len(out) < len(expected)  # the corrupted frame itself never gets through


@settings(FUZZ, max_examples=150)
@given(
    batch=st.lists(messages, min_size=2, max_size=6),
    picks=st.lists(st.integers(min_value=0), min_size=1, max_size=8),
)
def test_fuzz_a_recorded_stream_reshuffled_or_repeated_never_gets_a_frame_twice_or_out_of_order(
    batch: list[dict[str, Any]], picks: list[int]
) -> None:
    """An attacker who recorded every frame of a connection (the challenge included) and
    sends any selection of them, in any order, with repeats: whatever gets through is a
    prefix of what was sent, each frame at most once."""
    writer = wire.FrameWriter(KEY, MINE)
    frames = [wire.challenge(PEER, KEY)] + [writer.encode(m) for m in batch]
    replay = b"".join(frames[i % len(frames)] for i in picks)
    out, _ = run_reader(reader(), [replay])
    assert out == sent(batch)[: len(out)]


@FUZZ
@given(length=st.integers(min_value=wire.MAX_FRAME + 1, max_value=2**32 - 1), junk=st.binary())
def test_fuzz_any_oversized_header_is_refused_before_its_body(length: int, junk: bytes) -> None:
    with pytest.raises(wire.FrameError, match="outside"):
        reader().feed(struct.pack(">I", length) + junk[:100])


def test_encoded_frames_are_compact_json() -> None:
    frame = wire.FrameWriter(KEY, MINE).encode({"type": "heartbeat"})
    assert json.loads(frame[36:]) == {"type": "heartbeat", "v": 2, "ch": MINE, "seq": 1}
    assert b" " not in frame[36:]
