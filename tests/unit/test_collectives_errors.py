"""`collectives.errors.translate`: gloo's messages (captured from torch 2.13) to our errors."""

from __future__ import annotations

import pytest

from collectives.errors import CollectiveError, CollectiveTimeout, missing_ranks, translate

GLOO_RECV_TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
    "Timed out waiting 2000ms for recv operation to complete"
)
MONITORED_RANK0 = "[Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 2000 ms"
MONITORED_OTHER = (
    "Rank 2 successfully reached monitoredBarrier, but received errors while waiting for "
    "send/recv from rank 0. Please check rank 0 logs for faulty rank.\n Original exception: \n"
    + GLOO_RECV_TIMEOUT
)
PEER_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:23944: Connection reset by peer. This is typically caused by a remote worker "
    "hanging or bugs in the application."
)


def test_monitored_barrier_names_the_missing_ranks() -> None:
    err = translate("barrier", RuntimeError(MONITORED_RANK0), rank=0, world_size=4, timeout_s=2)
    assert isinstance(err, CollectiveTimeout)
    assert err.missing_ranks == (1, 3)
    assert (err.op, err.rank, err.world_size) == ("barrier", 0, 4)
    assert str(err).startswith("barrier on rank 0 of 4 timed out after 2 s; ranks that did not")
    assert "ranks that did not arrive: 1, 3" in str(err)


def test_a_world_of_two_can_only_miss_the_other_rank() -> None:
    err = translate(
        "all_reduce", RuntimeError(GLOO_RECV_TIMEOUT), rank=1, world_size=2, timeout_s=None
    )
    assert isinstance(err, CollectiveTimeout)
    assert err.missing_ranks == (0,)
    assert "Timed out waiting 2000ms" in str(err)


def test_larger_worlds_do_not_guess() -> None:
    err = translate("barrier", RuntimeError(MONITORED_OTHER), rank=2, world_size=3, timeout_s=5)
    assert isinstance(err, CollectiveTimeout)
    assert err.missing_ranks is None
    assert "did not say which ranks" in str(err)
    # Only the first line of a long backend message is quoted.
    assert "Original exception" not in str(err)


def test_a_closed_connection_is_an_error_but_not_a_timeout() -> None:
    err = translate("broadcast", RuntimeError(PEER_RESET), rank=0, world_size=4, timeout_s=60)
    assert type(err) is CollectiveError
    assert "a peer closed its connection" in str(err)
    assert err.missing_ranks is None


def test_anything_else_keeps_its_message() -> None:
    err = translate(
        "all_gather",
        RuntimeError("tensors must be on the same device"),
        rank=3,
        world_size=8,
        timeout_s=1,
    )
    assert type(err) is CollectiveError
    assert str(err) == "all_gather on rank 3 of 8 failed: tensors must be on the same device"
    assert translate("x", err, rank=0, world_size=1, timeout_s=None) is err
    assert isinstance(err, RuntimeError)  # code that catches torch's errors still catches ours


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Rank 5 failed to pass monitoredBarrier in 10 ms", (5,)),
        ("Ranks 4,2, 2 failed to pass monitoredBarrier", (2, 4)),
        ("Timed out", None),
    ],
)
def test_missing_ranks_parsing(message: str, expected: tuple[int, ...] | None) -> None:
    assert missing_ranks(message, rank=0, world_size=6) == expected
