"""The pure parts of `collectives.bench`: sizes, nccl-tests bus factors, table rows."""

from __future__ import annotations

import pytest

from collectives.bench import Result, bus_factor, elements, parse_args, parse_size, row, sizes


@pytest.mark.parametrize(
    ("text", "value"),
    [("1K", 1024), ("256M", 256 << 20), ("4KiB", 4096), ("1g", 1 << 30), ("512", 512)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "1T", "-4K", "1.5M", "K"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_default_sweep_is_1k_to_256m_in_doublings() -> None:
    args = parse_args([])
    assert args.sizes[0] == 1024 and args.sizes[-1] == 256 << 20 and len(args.sizes) == 19
    assert args.ops == ["all_reduce", "all_gather", "broadcast"]
    assert sizes(1000, 8000, 4) == [1000, 4000]
    with pytest.raises(ValueError):
        sizes(8, 4)


def test_bad_flags_are_usage_errors() -> None:
    for argv in (
        ["--ops", "reduce_scatter"],
        ["--iters", "0"],
        ["--min-bytes", "2M", "--max-bytes", "1M"],
    ):
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 2


@pytest.mark.parametrize(
    ("op", "n", "factor"),
    [
        ("all_reduce", 2, 1.0),
        ("all_reduce", 8, 1.75),
        ("all_gather", 4, 0.75),
        ("broadcast", 8, 1.0),
        ("all_reduce", 1, 0.0),
    ],
)
def test_bus_factors_are_nccl_tests(op: str, n: int, factor: float) -> None:
    assert bus_factor(op, n) == pytest.approx(factor)


def test_all_gather_sizes_are_the_gathered_output() -> None:
    assert elements("all_gather", 1024, 4, 2) == (256, 128)
    assert elements("all_gather", 1024, 4, 3) == (255, 85)  # rounded down to a multiple of n
    assert elements("all_reduce", 1024, 4, 3) == (256, 256)
    assert elements("broadcast", 2, 4, 2) == (1, 1)


def test_row_format() -> None:
    r = Result(
        "all_reduce", 1048576, 262144, "float32", 812.25, 1.29, 1.29, 2, "gloo", "collectives"
    )
    assert row(r) == "      1048576       262144   float32      812.2    1.290    1.290"
