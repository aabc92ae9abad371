"""The control channel's wire format: length-prefixed, authenticated, versioned JSON frames.

A frame is a 4-byte big-endian length N, then N bytes: a 32-byte HMAC-SHA256 tag over the
payload under the job token, then the payload, a UTF-8 JSON object with at least `v` (protocol
version) and `type`. `FrameReader` is the only parser: it enforces the size limit before
buffering, checks the tag in constant time before decoding, and raises `FrameError` for anything
else, so a rogue or broken peer can only ever lose its own connection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

VERSION = 1
MAX_FRAME = 1 << 20  # a PLAN for thousands of hosts fits; anything larger is hostile
_HEADER = struct.Struct(">I")
_TAG = 32


class FrameError(Exception):
    """The peer sent something that is not a valid frame for this job; drop the connection."""


def job_key(token: str) -> bytes:
    return hashlib.sha256(b"ml-launcher control v1\0" + token.encode()).digest()


def encode(message: dict[str, Any], key: bytes) -> bytes:
    """One frame for `message` (which gains `v`)."""
    payload = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()
    if len(payload) + _TAG > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    tag = hmac.new(key, payload, hashlib.sha256).digest()
    return _HEADER.pack(len(payload) + _TAG) + tag + payload


class FrameReader:
    """Incremental parser: `feed(bytes)` returns the complete messages, in order."""

    def __init__(self, key: bytes, max_frame: int = MAX_FRAME) -> None:
        self._key = key
        self._max = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max or length < _TAG + 2:
                raise FrameError(f"frame length {length} outside 34..{self._max}")
            if len(self._buffer) < _HEADER.size + length:
                break
            body = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
            del self._buffer[: _HEADER.size + length]
            messages.append(self._decode(body))
        return messages

    def _decode(self, body: bytes) -> dict[str, Any]:
        tag, payload = body[:_TAG], body[_TAG:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise FrameError("bad authentication tag (wrong job token?)")
        try:
            message = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise FrameError("authenticated frame is not JSON") from None
        if not isinstance(message, dict):
            raise FrameError("frame is not a JSON object")
        version = message.get("v")
        if type(version) is not int or version != VERSION:  # true == 1 in Python: not a version
            raise FrameError(f"protocol version {version!r:.20}, expected {VERSION}")
        if not isinstance(message.get("type"), str):
            raise FrameError("frame has no type")
        return message
