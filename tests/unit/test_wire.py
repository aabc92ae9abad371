"""The control channel's frame format: what `FrameReader` accepts, and that nothing else gets in.

The fuzz tests state the parser's whole contract: whatever bytes arrive, in whatever pieces,
`feed` only ever returns valid messages of this job (authenticated, version 1, a JSON object
with a string `type`) or raises `FrameError`; it never raises anything else and never buffers
more than one maximal frame.
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

from launcher import wire

KEY = wire.job_key("job-token")
OTHER_KEY = wire.job_key("another-job")


def raw_frame(payload: bytes, key: bytes = KEY, length: int | None = None) -> bytes:
    """A frame around arbitrary payload bytes (correctly tagged unless `key` is wrong)."""
    tag = hmac.new(key, payload, hashlib.sha256).digest()
    body = tag + payload
    return struct.pack(">I", len(body) if length is None else length) + body


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


# --- examples ---------------------------------------------------------------------------------


def test_round_trip_adds_the_version_and_keeps_every_field() -> None:
    message: dict[str, Any] = {"type": "hello", "host": "algo-2", "slots": 8, "note": "ünïcode ✓"}
    frame = wire.encode(message, KEY)
    assert wire.FrameReader(KEY).feed(frame) == [{"v": wire.VERSION, **message}]


def test_frames_split_at_every_byte_and_batched_arrive_whole_and_in_order() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "heartbeat"},
        {"type": "plan", "hosts": [["algo-1", 2]]},
        {"type": "x"},
    ]
    stream = b"".join(wire.encode(m, KEY) for m in messages)
    expected = [{"v": 1, **m} for m in messages]
    for cut in range(len(stream) + 1):
        assert feed_all(wire.FrameReader(KEY), [stream[:cut], stream[cut:]]) == expected
    assert feed_all(wire.FrameReader(KEY), [bytes([b]) for b in stream]) == expected
    assert wire.FrameReader(KEY).feed(stream) == expected


def test_a_frame_under_another_jobs_token_is_refused() -> None:
    frame = wire.encode({"type": "hello", "host": "algo-2", "slots": 1}, OTHER_KEY)
    with pytest.raises(wire.FrameError, match="authentication"):
        wire.FrameReader(KEY).feed(frame)


def test_job_keys_differ_per_token_and_are_stable() -> None:
    assert wire.job_key("a") == wire.job_key("a") != wire.job_key("b")
    assert len(wire.job_key("")) == 32


@pytest.mark.parametrize("position", [4, 20, 36, 40])  # in the tag, and in the payload
def test_one_flipped_bit_anywhere_after_the_header_is_refused(position: int) -> None:
    frame = bytearray(wire.encode({"type": "failed", "code": 1, "reason": "x"}, KEY))
    frame[position] ^= 0x01
    with pytest.raises(wire.FrameError, match="authentication"):
        wire.FrameReader(KEY).feed(bytes(frame))


def test_an_oversized_length_is_refused_from_the_header_alone() -> None:
    reader = wire.FrameReader(KEY, max_frame=1000)
    with pytest.raises(wire.FrameError, match="outside"):
        reader.feed(struct.pack(">I", 1001))  # nothing of the body needs to arrive
    with pytest.raises(wire.FrameError, match="4294967295"):
        wire.FrameReader(KEY).feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("length", [0, 1, 33])
def test_a_frame_too_short_for_tag_and_object_is_refused(length: int) -> None:
    with pytest.raises(wire.FrameError, match="outside"):
        wire.FrameReader(KEY).feed(struct.pack(">I", length) + b"\0" * length)


def test_a_frame_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() -> None:
    message = {"type": "plan", "pad": ""}
    overhead = len(wire.encode(message, KEY)) - 4
    message["pad"] = "x" * (wire.MAX_FRAME - overhead)
    frame = wire.encode(message, KEY)
    assert len(frame) == 4 + wire.MAX_FRAME
    assert wire.FrameReader(KEY).feed(frame)[0]["pad"] == message["pad"]
    message["pad"] += "x"
    with pytest.raises(ValueError, match="exceeds"):
        wire.encode(message, KEY)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b'{"v": 2, "type": "hello"}', "version 2"),
        (b'{"v": true, "type": "hello"}', "version True"),  # true == 1 in Python
        (b'{"v": 1.0, "type": "hello"}', "version 1.0"),
        (b'{"v": "1", "type": "hello"}', "version '1'"),
        (b'{"type": "hello"}', "version None"),
        (b'{"v": 1}', "no type"),
        (b'{"v": 1, "type": 7}', "no type"),
        (b'[1, "hello"]', "not a JSON object"),
        (b'"hello"', "not a JSON object"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"v": 1, "type": "hello"', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # recursion depth
        (b'{"v": 1, "type": "x", "n": ' + b"9" * 5000 + b"}", "not JSON"),  # int digit limit
    ],
)
def test_authenticated_but_malformed_payloads_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(wire.FrameError, match=match):
        wire.FrameReader(KEY).feed(raw_frame(payload))


def test_messages_before_a_bad_frame_are_delivered_by_the_call_that_completes_them() -> None:
    good = wire.encode({"type": "heartbeat"}, KEY)
    reader = wire.FrameReader(KEY)
    assert reader.feed(good) == [{"v": 1, "type": "heartbeat"}]
    with pytest.raises(wire.FrameError):
        reader.feed(raw_frame(b'{"v": 1, "type": "x"}', OTHER_KEY))


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
)
def test_fuzz_arbitrary_bytes_yield_only_valid_messages_or_frame_error(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    out, _ = run_reader(wire.FrameReader(KEY, max_frame), split(data, cuts))
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
    stream = b"".join(raw_frame(p, key, n) for p, n in zip(payloads, lengths, strict=False))
    out, _ = run_reader(wire.FrameReader(KEY, max_frame=4096), split(stream, cuts))
    if key is OTHER_KEY:
        assert out == []


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
    sent = [{"v": 1, **m} for m in batch]
    stream = bytearray(b"".join(wire.encode(m, KEY) for m in batch))
    if flip is not None:
        stream[flip[0] % len(stream)] ^= flip[1]
    out, failed = run_reader(wire.FrameReader(KEY), split(bytes(stream) + tail, cuts))
    # Corruption or a garbage tail can end the stream early (a FrameError drops the messages
    # completed by the same `feed` call: the connection is closed anyway), but never alter,
    # reorder or invent a message.
    assert out == sent[: len(out)]
    if flip is None and not failed:
        assert out == sent
    if flip is not None:
        assert len(out) < len(sent)  # the corrupted frame itself never gets through


@FUZZ
@given(length=st.integers(min_value=wire.MAX_FRAME + 1, max_value=2**32 - 1), junk=st.binary())
def test_fuzz_any_oversized_header_is_refused_before_its_body(length: int, junk: bytes) -> None:
    with pytest.raises(wire.FrameError, match="outside"):
        wire.FrameReader(KEY).feed(struct.pack(">I", length) + junk[:100])


def test_encoded_frames_are_compact_json() -> None:
    frame = wire.encode({"type": "heartbeat"}, KEY)
    assert json.loads(frame[36:]) == {"v": 1, "type": "heartbeat"}
    assert b" " not in frame[36:]
