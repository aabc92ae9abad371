"""Payload codecs: Content-Type and Accept parsing, and JSON / CSV / NPY / JSON Lines to and
from numpy arrays.

These back the default `input_fn` and `output_fn`. Decoding raises `BadRequest` for a payload
that does not parse as its type claims and `UnsupportedContentType` for a type with no codec;
`negotiate` returns None when nothing in an Accept header can be produced (406 upstream).
JSON goes through orjson: on a 32x64 float payload the standard library's parser alone takes
~0.6 ms, ten times orjson's, and that would dominate a request.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import orjson

from serving import npy
from serving.errors import BadRequest, UnsupportedContentType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
JSONLINES = "application/jsonlines"
SUPPORTED = (JSON, CSV, NPY, JSONLINES)
# Media types whose bodies the toolkit hands to user hooks as str rather than bytes.
UTF8_TYPES = frozenset((JSON, CSV))
_ANY = "*/*"


def media_type(header: str) -> str:
    """The bare, lower-cased media type of a Content-Type or Accept entry (no parameters)."""
    return header.split(";", 1)[0].strip().lower()


def _accept_entries(accept: str) -> list[str]:
    """Accept entries, highest q first (stable for equal q); q=0 entries are dropped."""
    ranked: list[tuple[float, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        kind, *params = (part.strip() for part in entry.split(";"))
        if not kind:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, kind.lower()))
    return [kind for _, _, kind in sorted(ranked)]


def negotiate(accept: str, supported: Sequence[str], default: str) -> str | None:
    """The media type to answer in, given the request's Accept header.

    An empty Accept or `*/*` yields `default`; `type/*` matches the first supported type of
    that family. Returns None when no entry can be produced.
    """
    if accept in supported:
        # The common case, and what the server passes on after negotiating once.
        return accept
    if not accept.strip():
        return default
    for kind in _accept_entries(accept):
        if kind == _ANY:
            return default
        if kind in supported:
            return kind
        if kind.endswith("/*"):
            family = kind[:-1]
            if default.startswith(family):
                return default
            for candidate in supported:
                if candidate.startswith(family):
                    return candidate
    return None


def _text(body: bytes | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: {exc}") from None


def _numeric(value: object, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{what} is not a rectangular array of numbers: {exc}") from None
    return array


def decode(body: bytes | str, kind: str) -> np.ndarray:
    """Decode a request body of media type `kind` into a numpy array.

    JSON, CSV and JSON Lines become float32 arrays (as the toolkit's FloatTensor does); NPY
    keeps its numeric dtype, is read without pickle and is checked against its header before
    anything is allocated (`serving.npy`). Raises BadRequest for a malformed body: every
    decoder's memory is bounded by the body (JSON nesting by orjson's 1024 levels and numpy's
    64 dimensions).
    """
    if kind == JSON:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        return _numeric(value, "JSON payload")
    if kind == JSONLINES:
        rows = []
        for number, line in enumerate(_text(body).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise BadRequest(f"malformed JSON on line {number}: {exc}") from None
        return _numeric(rows, "JSON Lines payload")
    if kind == CSV:
        try:
            return np.loadtxt(io.StringIO(_text(body)), delimiter=",", dtype=np.float32, ndmin=2)
        except ValueError as exc:
            raise BadRequest(f"malformed CSV: {exc}") from None
    if kind == NPY:
        # Never np.load: it allocates what the header claims before reading (see serving.npy).
        return npy.decode(body.encode("latin-1") if isinstance(body, str) else body)
    raise UnsupportedContentType(
        f"content type {kind!r} is not supported; use one of {', '.join(SUPPORTED)}"
    )


def _json_row(row: object) -> bytes:
    value = np.asarray(row)
    if value.ndim:
        return encode(value, JSON)
    try:
        return orjson.dumps(value[()], option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return orjson.dumps(value.item())


def encode(array: np.ndarray, kind: str) -> bytes:
    """Encode `array` as media type `kind` (one of SUPPORTED); raises ValueError otherwise.

    CSV writes one line per row of a 2-D array and one value per line for a 1-D one (the
    toolkit's `np.savetxt` layout), each number in its shortest round-trip form; JSON Lines
    writes one JSON value per row.
    """
    if kind == JSON:
        try:
            return orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            # dtypes orjson cannot take natively (float16, object) go through Python lists.
            return orjson.dumps(array.tolist())
    if kind == NPY:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    rows = array.reshape(1) if array.ndim == 0 else array
    if kind == JSONLINES:
        return b"".join(_json_row(row) + b"\n" for row in rows)
    if kind == CSV:
        # str() of a numpy scalar is its shortest round-trip form (0.1, not 0.100000001).
        lines = (
            ",".join(str(cell) for cell in row.flat) if isinstance(row, np.ndarray) else str(row)
            for row in rows
        )
        return ("\n".join(lines) + "\n").encode()
    raise ValueError(f"no encoder for {kind!r}")
