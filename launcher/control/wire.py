"""The control channel's wire format: length-prefixed, authenticated, bound, numbered JSON frames.

A frame is a 4-byte big-endian length N, then N bytes: a 32-byte HMAC-SHA256 tag over the
payload under the job key, then the payload, a UTF-8 JSON object with at least `v` (protocol
version), `type` and `seq` (the frame's number on its connection, in its direction).

Replay protection (protocol version 2). Each end of a connection opens it with a CHALLENGE frame
(`seq` 0) carrying a fresh random nonce of its own; the leader sends its challenge the moment it
accepts. Every later frame carries `ch`, the nonce the *receiver* issued, and `seq` 1, 2, 3...
All of it is under the tag. So a frame recorded on another connection (or in another job that
happens to share the token) carries a nonce the receiver never issued, and a frame replayed on
the same connection carries a number the receiver has already seen: both are refused, in either
direction, whatever the frame says (HELLO, DONE, FAILED, heartbeats...). Each end binds its
incoming direction to its own nonce, so neither has to trust the other's freshness.

`FrameReader` is the only parser: it enforces the size limit before buffering, checks the tag in
constant time before decoding, then the version, the binding and the number, and raises
`FrameError` (with a `kind` for the logs) for anything else, so a rogue or broken peer can only
ever lose its own connection. `FrameWriter` numbers and binds one direction's frames. What an
object may hold beyond the envelope (`ENVELOPE`: `v`, `ch`, `seq`) is `messages`' to check: its
`decode` raises a `FrameError` too.

Free text (a failure's root cause) goes over the channel through `clip`: at most `MAX_TEXT`
bytes of UTF-8, cut on a character boundary and ending with "... [truncated N bytes]", so even
after JSON escaping (at most 6 bytes per byte) any message stays far below `MAX_FRAME`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import struct
from typing import Any

VERSION = 2
MAX_FRAME = 1 << 20  # a PLAN for thousands of hosts fits; anything larger is hostile
MAX_TEXT = 16 * 1024  # bytes of UTF-8 in one free-text field (a root cause), marker included
CHALLENGE = "challenge"
_HEADER = struct.Struct(">I")
_TAG = 32
_NONCE_BYTES = 16
_NONCE = re.compile(r"[0-9a-f]{32}")
ENVELOPE = ("v", "ch", "seq")  # set by the writer; a message may not carry them itself


class FrameError(Exception):
    """The peer sent something that is not a valid frame for this connection; drop it.

    `kind` names the class of problem in a few words, for the leader's summary of refusals:
    "bad length", "bad token", "malformed", "version", "replayed" or "no challenge".
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def job_key(token: str) -> bytes:
    return hashlib.sha256(b"ml-launcher control v2\0" + token.encode()).digest()


def new_nonce() -> str:
    """A fresh random nonce for one connection's challenge (128 bits, hex)."""
    return secrets.token_hex(_NONCE_BYTES)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` if its UTF-8 form fits in `limit` bytes; else its head and a visible marker.

    The result is at most `limit` bytes of UTF-8 (marker included), cut on a character
    boundary and ending with "... [truncated N bytes]", N being the bytes left out.
    """
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    # The marker's longest form: N is at most len(data), so its digits bound the marker.
    budget = max(limit - len(f"... [truncated {len(data)} bytes]"), 0)
    head = data[:budget].decode("utf-8", "ignore")
    dropped = len(data) - len(head.encode("utf-8", "surrogatepass"))
    return f"{head}... [truncated {dropped} bytes]"


def _frame(payload: dict[str, Any], key: bytes) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    if len(data) + _TAG > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    tag = hmac.new(key, data, hashlib.sha256).digest()
    return _HEADER.pack(len(data) + _TAG) + tag + data


def challenge(nonce: str, key: bytes) -> bytes:
    """The first frame an end sends on a connection: its own nonce, number 0."""
    return _frame({"v": VERSION, "type": CHALLENGE, "seq": 0, "nonce": nonce}, key)


class FrameWriter:
    """One direction of one connection: frames bound to the receiver's nonce, numbered from 1.

    Not thread-safe: the caller serialises `encode` with the send of its result, so that
    frames leave in the order of their numbers.
    """

    def __init__(self, key: bytes, peer_nonce: str) -> None:
        self._key = key
        self._peer_nonce = peer_nonce
        self._seq = 0

    def encode(self, message: dict[str, Any]) -> bytes:
        """The next frame for `message`, which gains `v`, `ch` and `seq`.

        Raises ValueError when the message sets an envelope field itself or the frame would
        exceed `MAX_FRAME` (free text must go through `clip`); no number is used up then.
        """
        if reserved := [k for k in ENVELOPE if k in message]:
            raise ValueError(f"message sets the envelope field(s) {reserved}")
        seq = self._seq + 1
        frame = _frame({**message, "v": VERSION, "ch": self._peer_nonce, "seq": seq}, self._key)
        self._seq = seq
        return frame


class FrameReader:
    """Incremental parser of one direction of one connection: `feed(bytes)` returns the
    complete messages, in order, the peer's challenge first.

    `nonce` is the one this end sent in its own challenge: every frame after the peer's
    challenge must be bound to it and numbered one more than the previous one.
    """

    def __init__(self, key: bytes, nonce: str, max_frame: int = MAX_FRAME) -> None:
        self._key = key
        self._nonce = nonce
        self._max = max_frame
        self._buffer = bytearray()
        self._seq = -1  # the last number accepted; -1 until the peer's challenge
        self.peer_nonce: str | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max or length < _TAG + 2:
                raise FrameError(f"frame length {length} outside 34..{self._max}", "bad length")
            if len(self._buffer) < _HEADER.size + length:
                break
            body = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
            del self._buffer[: _HEADER.size + length]
            messages.append(self._accept(self._decode(body)))
        return messages

    def _decode(self, body: bytes) -> dict[str, Any]:
        tag, payload = body[:_TAG], body[_TAG:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise FrameError("bad authentication tag (wrong job token?)", "bad token")
        try:
            message = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise FrameError("authenticated frame is not JSON", "malformed") from None
        if not isinstance(message, dict):
            raise FrameError("frame is not a JSON object", "malformed")
        version = message.get("v")
        if type(version) is not int or version != VERSION:  # true == 1 in Python: not a version
            raise FrameError(f"protocol version {version!r:.20}, expected {VERSION}", "version")
        if not isinstance(message.get("type"), str):
            raise FrameError("frame has no type", "malformed")
        return message

    def _accept(self, message: dict[str, Any]) -> dict[str, Any]:
        """Check the binding and the number of an authenticated message."""
        seq = message.get("seq")
        if type(seq) is not int:
            raise FrameError(f"frame number {seq!r:.20} is not an integer", "malformed")
        if self.peer_nonce is None:
            nonce = message.get("nonce")
            if message["type"] != CHALLENGE or seq != 0:
                raise FrameError(
                    f"{message['type']!r:.40} frame before the peer's challenge", "no challenge"
                )
            if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
                raise FrameError("challenge without a valid nonce", "malformed")
            self.peer_nonce, self._seq = nonce, 0
            return message
        if message.get("ch") != self._nonce:
            raise FrameError(
                f"{message['type']!r:.40} frame bound to another connection (replayed?)",
                "replayed",
            )
        if seq != self._seq + 1:
            raise FrameError(
                f"{message['type']!r:.40} frame number {seq} after {self._seq} (replayed?)",
                "replayed",
            )
        self._seq = seq
        return message
