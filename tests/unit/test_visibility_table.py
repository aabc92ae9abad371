"""One table of GPU visibility cases, run through both GPU finders: `launcher.gpus.discover`
and `serving.gpus.visible` must pick the same devices, in the same order, for every case.

The two packages share no code (tests/unit/test_layering.py), so each has its own reading of
NVIDIA_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES (the rules: launcher/gpus.py's docstring).
This table, and a property test over generated values, keep the two readings the same: a rule
changed in one package and not the other fails here. NVML is faked on both sides with the same
devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher import gpus as launcher_gpus
from launcher.gpus import GpuInfo, NvmlUnavailable
from serving import gpus as serving_gpus

UUIDS = (
    "GPU-1a2b3c4d-0000-1111-2222-333344445555",
    "GPU-1a2b9999-0000-1111-2222-333344445555",
    "GPU-77777777-0000-1111-2222-333344445555",
    "GPU-88888888-0000-1111-2222-333344445555",
)
# What NVML shows: the whole host, a container the runtime made with devices 2 and 3 (NVML
# numbers them 0 and 1 inside), and a CPU host (no NVML).
HOSTS: dict[str, tuple[str, ...]] = {"host": UUIDS, "container": UUIDS[2:], "cpu": ()}

Pick = tuple[tuple[int, str], ...]


class _Probe:
    """The launcher's NVML seam; no devices means no NVML, as on a CPU host."""

    def __init__(self, uuids: Sequence[str]) -> None:
        self._uuids = uuids

    def devices(self) -> list[GpuInfo]:
        if not self._uuids:
            raise NvmlUnavailable("NVML Shared Library Not Found")
        return [
            GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559, uuid, f"00000000:{i + 0x18:02X}:00.0", (i,))
            for i, uuid in enumerate(self._uuids)
        ]


def launcher_pick(environ: dict[str, str], host: str) -> Pick:
    return tuple((g.index, g.uuid) for g in launcher_gpus.discover(environ, _Probe(HOSTS[host])))


def serving_pick(environ: dict[str, str], host: str) -> Pick:
    uuids = HOSTS[host]
    found = serving_gpus.visible(
        environ, lambda: [serving_gpus.Gpu(i, uuid) for i, uuid in enumerate(uuids)]
    )
    return tuple((g.index, g.uuid) for g in found)


def environ_of(nvidia: str | None, cuda: str | None) -> dict[str, str]:
    pairs = (("NVIDIA_VISIBLE_DEVICES", nvidia), ("CUDA_VISIBLE_DEVICES", cuda))
    return {name: value for name, value in pairs if value is not None}


# (host, NVIDIA_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES, the NVML indices picked, in CUDA order)
CASES: list[tuple[str, str | None, str | None, list[int]]] = [
    ("host", None, None, [0, 1, 2, 3]),
    ("cpu", None, None, []),
    ("cpu", None, "0", []),
    # CUDA_VISIBLE_DEVICES, indices
    ("host", None, "", []),  # set but empty: no GPU
    ("host", None, "  ", []),
    ("host", None, "0,1,2,3", [0, 1, 2, 3]),
    ("host", None, "2,0", [2, 0]),  # the variable's order is CUDA's
    ("host", None, " 3 , 1 ", [3, 1]),
    ("host", None, "1,7,2", [1]),  # past the last device: the list ends
    ("host", None, "7", []),
    ("host", None, "1,x,2", [1]),  # not a number: the list ends
    ("host", None, "1,,2", [1]),
    ("host", None, "1,", [1]),
    ("host", None, "1,-1,2", [1]),  # negative: the list ends
    ("host", None, "-1", []),
    ("host", None, "-1,0", []),
    ("host", None, "+2", [2]),  # strtoul: one sign
    ("host", None, "+-2", []),
    ("host", None, "-0", [0]),
    ("host", None, "1gpu,2ampere", [1, 2]),  # strtoul: the leading integer
    ("host", None, "01,002", [1, 2]),
    ("host", None, "1,2,1", []),  # a repeated device empties the list
    ("host", None, "1,7,1", []),  # even after an entry past the end
    ("host", None, "77777777", []),  # all digits: an index, not a UUID prefix
    ("host", None, "0,GPU-7777", [0]),  # an index list takes indices only
    # CUDA_VISIBLE_DEVICES, UUIDs
    ("host", None, UUIDS[2], [2]),
    ("host", None, f"{UUIDS[3]},{UUIDS[0]}", [3, 0]),
    ("host", None, "GPU-7777", [2]),  # a unique prefix
    ("host", None, " GPU-7777 , GPU-8 ", [2, 3]),
    ("host", None, "GPU-1a2b", []),  # ambiguous: devices 0 and 1 both match
    ("host", None, "GPU-", []),  # every device matches
    ("host", None, "GPU-1a2b9,GPU-1a2b3", [1, 0]),
    ("host", None, "GPU-7777,GPU-ffff,GPU-8888", [2]),  # an unknown UUID ends the list
    ("host", None, "GPU-7777,GPU-1a2b,GPU-8888", [2]),  # so does an ambiguous one
    ("host", None, "GPU-7777,0", [2]),  # a UUID list takes UUIDs only
    ("host", None, "GPU-7777,,GPU-8888", [2]),
    ("host", None, "GPU-7777,GPU-77777777", []),  # the same device twice
    ("host", None, "GPU-7777,GPU-8888,GPU-7777", []),  # the same prefix twice
    ("host", None, "gpu-7777", []),  # case matters
    ("host", None, "MIG-1234", []),  # MIG instances are not resolved
    ("host", None, "MIG-GPU-77777777/1/0", []),
    # NVIDIA_VISIBLE_DEVICES (the container runtime's), alone
    ("host", "all", None, [0, 1, 2, 3]),
    ("host", "", None, [0, 1, 2, 3]),
    ("host", "none", None, []),
    ("host", "void", None, []),
    ("host", " none ", None, []),
    ("host", f"{UUIDS[3]},{UUIDS[1]}", None, [1, 3]),  # by identity, in NVML's order
    ("host", f"{UUIDS[3]},,", None, [3]),
    ("host", "GPU-7777", None, []),  # the runtime takes whole UUIDs, not prefixes
    ("host", f"{UUIDS[3]},2", None, [0, 1, 2, 3]),  # not all UUIDs: not applied here
    ("host", "2,3", None, [0, 1, 2, 3]),  # host indices: applied when the container was made
    ("container", "2,3", None, [0, 1]),
    # both: CUDA counts within what the runtime left
    ("host", f"{UUIDS[1]},{UUIDS[3]}", "1", [3]),
    ("host", f"{UUIDS[1]},{UUIDS[3]}", "1,0", [3, 1]),
    ("host", f"{UUIDS[1]},{UUIDS[3]}", "2", []),
    ("host", f"{UUIDS[1]},{UUIDS[3]}", "GPU-7777", []),  # hidden by the runtime
    ("host", f"{UUIDS[1]},{UUIDS[3]}", "GPU-1a2b", [1]),  # unique among what is left
    ("host", "none", "0", []),
    ("container", "2,3", "1", [1]),
    ("container", "all", "GPU-8888,GPU-7777", [1, 0]),
    ("container", "all", "2", []),
]


@pytest.mark.parametrize(
    ("host", "nvidia", "cuda", "expected"),
    CASES,
    ids=[f"{h}|NVIDIA={n!r}|CUDA={c!r}" for h, n, c, _ in CASES],
)
def test_launcher_and_serving_pick_the_same_gpus(
    host: str, nvidia: str | None, cuda: str | None, expected: list[int]
) -> None:
    environ = environ_of(nvidia, cuda)
    launcher = launcher_pick(environ, host)
    assert serving_pick(environ, host) == launcher
    assert [index for index, _ in launcher] == expected


# Pieces of both variables' syntax, so that generated values hit every rule above.
_PIECES = [
    *UUIDS,
    "GPU-",
    "GPU-1a2b",
    "GPU-1a2b9",
    "GPU-7777",
    "GPU-8",
    "GPU-ffff",
    "MIG-",
    "0",
    "1",
    "2",
    "3",
    "4",
    "01",
    "-1",
    "+1",
    "-0",
    "+-1",
    "1gpu",
    "x",
    "",
    " ",
    "all",
    "none",
    "void",
]
_spec = st.one_of(
    st.none(),
    st.lists(st.sampled_from(_PIECES), max_size=5).map(",".join),
    st.text(alphabet="0123456789+-, GPUMI-abf7", max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(host=st.sampled_from(sorted(HOSTS)), nvidia=_spec, cuda=_spec)
def test_any_value_gives_the_same_gpus_in_both(
    host: str, nvidia: str | None, cuda: str | None
) -> None:
    environ = environ_of(nvidia, cuda)
    assert serving_pick(environ, host) == launcher_pick(environ, host)


# strtoul reads ASCII digits only: not '²' (which int() refuses) nor other scripts' digits.
@pytest.mark.parametrize(("cuda", "expected"), [("²", []), ("\u0661", []), ("1²", [1])])
def test_non_ascii_digits_are_not_digits(cuda: str, expected: list[int]) -> None:
    environ = {"CUDA_VISIBLE_DEVICES": cuda}
    serving = serving_pick(environ, "host")
    assert [index for index, _ in serving] == expected
    assert launcher_pick(environ, "host") == serving
