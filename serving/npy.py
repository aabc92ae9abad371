"""Reading an NPY payload (`application/x-npy`) without trusting its header.

`np.load` sizes its result from the header before it reads the data: a 100-byte request whose
header claims shape (2**28,) makes it allocate 1 GiB, and (10**12,) raises MemoryError. Here the
header is parsed on its own, bounded and checked, and the declared shape times the item size
must equal the bytes that follow it exactly, all BEFORE anything is allocated; the array is then
one copy of those bytes. What is accepted: format versions 1.0 and 2.0 (3.0 only exists for
non-Latin-1 field names of structured dtypes, which are refused anyway), numeric and bool
dtypes in either byte order (the result is native-endian, as torch requires), C or Fortran
order, at most `MAX_DIMS` dimensions. Object dtypes (pickles), structured, string, datetime and
void dtypes are refused. Every refusal is a `BadRequest` whose message says what is wrong.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
from numpy.lib import format as npformat

from serving.errors import BadRequest

_MAGIC = b"\x93NUMPY"
# magic, then major and minor version bytes, then the header length (u16 for 1.0, u32 for 2.0).
_PREAMBLE = len(_MAGIC) + 2
_LENGTH_FORMAT = {(1, 0): "<H", (2, 0): "<I"}
# numpy's own bound (max_header_size) for headers it parses without allow_pickle; a larger
# header is refused before it is read.
MAX_HEADER_BYTES = 10_000
# numpy itself allows 64; no model input needs more, and torch handles fewer than that.
MAX_DIMS = 32
# bool, signed and unsigned integers, floats, complex: what torch.from_numpy can take.
_NUMERIC_KINDS = frozenset("biufc")
# How much of numpy's complaint (which quotes the header) goes into the 400's message.
_DETAIL = 200


def _fail(reason: str) -> BadRequest:
    return BadRequest(f"malformed NPY: {reason}")


def _header(raw: bytes) -> tuple[int, tuple[int, ...], bool, np.dtype[np.generic]]:
    """(data offset, shape, fortran order, dtype) of the NPY payload `raw`, checked."""
    if not raw.startswith(_MAGIC):
        raise _fail("the body does not start with the NPY magic string")
    if len(raw) < _PREAMBLE:
        raise _fail("the body ends inside the NPY preamble")
    version = (raw[len(_MAGIC)], raw[len(_MAGIC) + 1])
    length_format = _LENGTH_FORMAT.get(version)
    if length_format is None:
        raise _fail(f"format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    start = _PREAMBLE + struct.calcsize(length_format)
    if len(raw) < start:
        raise _fail("the body ends inside the header length")
    (length,) = struct.unpack_from(length_format, raw, _PREAMBLE)
    if length > MAX_HEADER_BYTES:
        raise _fail(f"the header is {length} bytes long (at most {MAX_HEADER_BYTES})")
    if len(raw) < start + length:
        raise _fail(f"the body ends inside the header ({len(raw)} of {start + length} bytes)")
    reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    try:
        # numpy's reader: ast.literal_eval of the bounded header text, key and type checks.
        shape, fortran, dtype = reader(
            io.BytesIO(raw[_PREAMBLE : start + length]), max_header_size=MAX_HEADER_BYTES
        )
    except Exception as exc:
        # The header is the client's text; whatever numpy's parser raises on it (ValueError,
        # SyntaxError, TypeError, RecursionError, UnicodeDecodeError) means it is malformed.
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(f"bad header: {first_line[:_DETAIL]}") from None
    return start + length, shape, fortran, dtype


def decode(raw: bytes) -> np.ndarray:
    """The array in the NPY payload `raw`: a fresh, writeable, native-endian copy.

    Raises BadRequest for anything but one well-formed numeric array whose data is exactly the
    bytes after the header. Allocates at most one array of `len(raw)` bytes.
    """
    offset, shape, fortran, dtype = _header(raw)
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.subdtype is not None:
        raise _fail(
            f"dtype {dtype.str!r} is not supported: only bool, integer, float and complex "
            "arrays (object arrays would need pickle, which is never loaded)"
        )
    if len(shape) > MAX_DIMS:
        raise _fail(f"shape has {len(shape)} dimensions (at most {MAX_DIMS})")
    if any(isinstance(dim, bool) or dim < 0 for dim in shape):
        raise _fail(f"shape {shape} has a negative or non-integer dimension")
    # Python integers: the product cannot overflow, so a huge claim is seen as huge.
    count = math.prod(shape)
    declared = count * dtype.itemsize
    present = len(raw) - offset
    if declared != present:
        raise _fail(
            f"the header declares shape {shape} of {dtype.str} ({declared} bytes) but "
            f"{present} bytes of data follow it"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    array = flat.reshape(shape, order="F" if fortran else "C")
    # The one copy: writeable, aligned, native byte order; order="K" keeps Fortran layout.
    return array.astype(dtype.newbyteorder("="), order="K", copy=True)
