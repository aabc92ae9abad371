"""NPY payloads from clients, decoded in process: nothing the header says makes the decoder
allocate more than the payload implies, and every malformed payload is a BadRequest."""

from __future__ import annotations

import io
import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from numpy.lib import format as npformat

from serving import codecs, npy
from serving.errors import BadRequest

pytestmark = pytest.mark.timeout(30, method="thread")


def header(shape: object, descr: object = "<f4", fortran: bool = False) -> bytes:
    """A version 1.0 NPY preamble and header, as np.save writes them, saying anything."""
    buffer = io.BytesIO()
    npformat.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": fortran, "shape": shape}
    )
    return buffer.getvalue()


def saved(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def peak_bytes(decode: Callable[[], object]) -> int:
    """Peak memory (numpy's array buffers included) traced while `decode` runs."""
    tracemalloc.start()
    try:
        decode()
    except BadRequest:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("shape", "descr"),
    [((2**28,), "<f4"), ((2**27, 2), "<u2"), ((10**12,), "<f8"), ((2**62, 2**62), "|u1")],
)
def test_a_header_claiming_a_huge_array_allocates_nothing_and_is_refused(
    shape: tuple[int, ...], descr: str
) -> None:
    # 16 bytes of data behind a header that claims up to 2**124 bytes. np.load allocated the
    # claimed size first: 1 GiB for (2**28,) float32, MemoryError (a 500) for (10**12,).
    payload = header(shape, descr) + b"\0" * 16
    with pytest.raises(BadRequest, match=r"declares shape .* but 16 bytes of data follow"):
        codecs.decode(payload, codecs.NPY)
    assert peak_bytes(lambda: codecs.decode(payload, codecs.NPY)) < 1024 * 1024


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (header((-5,)), "negative or non-integer dimension"),
        (header((3, -1)) + b"\0" * 12, "negative or non-integer dimension"),
        (header((True,)) + b"\0" * 4, "negative or non-integer dimension"),
        (header((1,) * 40) + b"\0" * 4, "40 dimensions"),
        (saved(np.array([{"a": 1}], dtype=object), allow_pickle=True), "dtype '|O'"),
        (header((1,), "|O") + b"\0" * 8, "dtype '|O'"),
        (saved(np.array(["ab"])), "dtype '<U2'"),
        (saved(np.zeros(2, dtype=[("a", "<f4")])), "dtype '|V4'"),
        (saved(np.array(["2020-01-01"], dtype="M8[D]")), "dtype '<M8[D]'"),
        (header((1,), ("<f8", (10**9,))) + b"\0" * 8, "bad header"),
        (saved(np.arange(6.0))[:20], "ends inside the header"),
        (saved(np.arange(6.0))[:7], "ends inside the NPY preamble"),
        (saved(np.arange(6.0))[:-1], "(48 bytes) but 47 bytes"),
        (saved(np.arange(6.0)) + b"x", "(48 bytes) but 49 bytes"),
        (b"\x93NUMPY\x03\x00" + b"\0" * 12, "version 3.0 is not supported"),
        (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{}", "header is 2147483648 bytes"),
        (b"\x93NUMPY\x01\x00" + struct.pack("<H", 600) + b"(" * 600, "bad header"),
        (b"\x93NUMPY\x01\x00" + struct.pack("<H", 9) + b"[1, 2, 3]", "bad header"),
        (b"PK\x03\x04 an npz archive", "does not start with the NPY magic"),
        (b"", "does not start with the NPY magic"),
    ],
)
def test_malformed_npy_is_a_bad_request_naming_the_fault(payload: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match="malformed NPY") as caught:
        codecs.decode(payload, codecs.NPY)
    assert message in caught.value.message
    assert len(caught.value.message) < 400


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian: torch needs native order
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array([True, False]),
        np.array([1 + 2j], dtype="<c8"),
        np.array([1.5], dtype=np.float16),
        np.zeros((0, 3), dtype=np.float32),
        np.float64(2.5).reshape(()),
    ],
)
def test_well_formed_npy_decodes_to_a_native_writeable_copy(array: np.ndarray) -> None:
    decoded = codecs.decode(saved(array), codecs.NPY)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype.newbyteorder("=") and decoded.dtype.isnative
    assert decoded.flags.writeable and decoded.flags.aligned
    assert decoded.flags.f_contiguous == array.flags.f_contiguous


def test_version_2_headers_and_a_str_body_decode() -> None:
    buffer = io.BytesIO()
    npformat.write_array_header_2_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (2,)})
    payload = buffer.getvalue() + np.array([1.0, 2.0]).tobytes()
    np.testing.assert_array_equal(npy.decode(payload), [1.0, 2.0])
    # A user input_fn may hand the body on as text; NPY bytes survive latin-1.
    assert codecs.decode(payload.decode("latin-1"), codecs.NPY).tolist() == [1.0, 2.0]


def test_an_empty_array_of_a_huge_shape_needs_no_memory() -> None:
    payload = header((10**12, 0))
    assert peak_bytes(lambda: codecs.decode(payload, codecs.NPY)) < 1024 * 1024
    assert codecs.decode(payload, codecs.NPY).shape == (10**12, 0)
