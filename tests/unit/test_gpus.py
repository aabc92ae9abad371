"""GPU discovery behind the GpuProbe protocol: visibility variables as CUDA reads them.

NVML cannot run without a GPU, so the probe is faked here (the only fake of the suite's NVML
boundary); the real no-NVML path runs on this machine in `test_no_nvml_library_is_a_cpu_host`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from launcher import gpus
from launcher.gpus import GpuInfo, NvmlUnavailable

UUIDS = (
    "GPU-1a2b3c4d-0000-1111-2222-333344445555",
    "GPU-1a2b9999-0000-1111-2222-333344445555",
    "GPU-77777777-0000-1111-2222-333344445555",
    "GPU-88888888-0000-1111-2222-333344445555",
)
DEVICES = tuple(
    GpuInfo(i, "NVIDIA H100 80GB HBM3", 81559, uuid, f"00000000:{i + 0x18:02X}:00.0", (i,))
    for i, uuid in enumerate(UUIDS)
)


class FakeProbe:
    def __init__(self, devices: Sequence[GpuInfo] = DEVICES, *, error: str = "") -> None:
        self._devices = devices
        self._error = error
        self.calls = 0

    def devices(self) -> Sequence[GpuInfo]:
        self.calls += 1
        if self._error:
            raise NvmlUnavailable(self._error)
        return self._devices


def indices(environ: dict[str, str]) -> list[int]:
    return [g.index for g in gpus.discover(environ, FakeProbe())]


def test_every_gpu_without_visibility_variables() -> None:
    assert gpus.discover({}, FakeProbe()) == DEVICES


@pytest.mark.parametrize(
    ("cuda", "expected"),
    [
        ("", []),  # set but empty: no GPU at all
        ("0,1,2,3", [0, 1, 2, 3]),
        ("2,0", [2, 0]),  # CUDA's order is the variable's order
        (" 3 , 1 ", [3, 1]),
        ("1,7,2", [1]),  # an index past the last device ends the list
        ("1,x,2", [1]),  # so does an entry that is not a number
        ("1,,2", [1]),
        ("1,-1,2", [1]),  # and a negative one
        ("-1,0", []),
        ("+2", [2]),
        ("1gpu,2ampere", [1, 2]),  # read like strtoul: the leading integer
        ("1,2,1", []),  # a repeated device empties the list
        ("1,7,1", []),  # even after an index past the end
        ("77777777", []),  # all digits: an index, not a UUID prefix
        (UUIDS[2], [2]),
        (f"{UUIDS[3]},{UUIDS[0]}", [3, 0]),
        ("GPU-7777", [2]),  # a unique prefix
        ("GPU-1a2b", []),  # ambiguous: devices 0 and 1 both match
        ("GPU-1a2b9,GPU-1a2b3", [1, 0]),
        ("GPU-7777,GPU-ffff,GPU-8888", [2]),  # an unknown UUID ends the list
        ("GPU-7777,0", [2]),  # a UUID list takes UUIDs only
        ("GPU-7777,GPU-77777777", []),  # the same device twice
        ("0,GPU-7777", [0]),  # an index list takes indices only
        ("MIG-1234", []),  # MIG instances are not resolved
    ],
)
def test_cuda_visible_devices(cuda: str, expected: list[int]) -> None:
    assert indices({"CUDA_VISIBLE_DEVICES": cuda}) == expected


@pytest.mark.parametrize(
    ("nvidia", "expected"),
    [
        ("all", [0, 1, 2, 3]),
        ("", [0, 1, 2, 3]),
        ("none", []),
        ("void", []),
        (f"{UUIDS[3]},{UUIDS[1]}", [1, 3]),  # by identity, in NVML's order
        (UUIDS[2], [2]),
        # Host indices were applied by the runtime when it made the container: NVML already
        # sees only those devices, renumbered from 0; applying them again would lose GPUs.
        ("2,3", [0, 1, 2, 3]),
    ],
)
def test_nvidia_visible_devices(nvidia: str, expected: list[int]) -> None:
    assert indices({"NVIDIA_VISIBLE_DEVICES": nvidia}) == expected


def test_an_index_list_in_a_container_keeps_its_gpus() -> None:
    # `docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=2,3`: NVML shows two devices.
    in_container = FakeProbe(DEVICES[2:])
    found = gpus.discover({"NVIDIA_VISIBLE_DEVICES": "2,3"}, in_container)
    assert found == DEVICES[2:]


def test_cuda_indices_count_within_what_the_container_runtime_left() -> None:
    # The runtime exposed devices 1 and 3 (by UUID); CUDA numbers them 0 and 1.
    environ = {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[1]},{UUIDS[3]}", "CUDA_VISIBLE_DEVICES": "1"}
    assert indices(environ) == [3]
    assert indices({"NVIDIA_VISIBLE_DEVICES": "none", "CUDA_VISIBLE_DEVICES": "0"}) == []


def test_no_nvml_is_a_cpu_host_said_once(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe(error="NVML Shared Library Not Found")
    with caplog.at_level(logging.INFO, logger="launcher"):
        assert gpus.discover({"CUDA_VISIBLE_DEVICES": "0"}, probe) == ()
    assert probe.calls == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["no NVML (NVML Shared Library Not Found): treating this host as a CPU host"]


def test_no_nvml_library_is_a_cpu_host() -> None:
    """The real probe on this machine (no libnvidia-ml): a CPU host, not an exception."""
    try:
        devices = gpus.PynvmlProbe().devices()
    except NvmlUnavailable as e:
        assert gpus.NVML_LIBRARY in str(e) or "NVML" in str(e)
        assert gpus.discover({}) == ()
    else:  # a GPU machine: the real tier (tests/gpu) checks these against nvidia-smi
        assert gpus.discover({}) == tuple(devices)
