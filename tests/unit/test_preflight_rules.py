"""Preflight rules, pure: the inventory against a fake NVML (the suite's only fake at that
boundary: no GPU here), the fleet-wide verdicts, the pairwise search for the slow host, the
rows' wire form, the table, `preflight.json` and the failure summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from launcher import settings
from launcher.errors import ConfigError
from launcher.gpus import NvmlUnavailable
from launcher.preflight import inventory, probe, probe_gpu, rows, storage
from launcher.preflight.inventory import GpuHealth
from launcher.preflight.rows import ALL_HOSTS, FAIL, INFO, PASS, WARN, Row
from launcher.preflight.thresholds import PAIR_SEP, Policy, judge
from launcher.settings import Backend

H100 = "NVIDIA H100 80GB HBM3"
DRIVER = "550.54.15"


def gpu(index: int, **changes: object) -> GpuHealth:
    healthy = GpuHealth(
        index=index,
        uuid=f"GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd",
        name=H100,
        driver=DRIVER,
        cuda="12.4",
        ecc_uncorrected=0,
        retired_pending=False,
        remap_pending=False,
        remap_failed=False,
        throttle=0,
        foreign_mib=(),
    )
    return replace(healthy, **changes)  # type: ignore[arg-type]


class FakeNvml:
    """`inventory.HealthProbe` over fixed GPUs; `error` makes it a host without NVML."""

    def __init__(self, gpus: Sequence[GpuHealth], error: str = "") -> None:
        self.gpus = gpus
        self.error = error

    def read(self) -> Sequence[GpuHealth]:
        if self.error:
            raise NvmlUnavailable(self.error)
        return self.gpus


def fleet(hosts: dict[str, Sequence[GpuHealth]], policy: Policy | None = None) -> list[Row]:
    policy = policy or Policy()
    out: list[Row] = []
    for host, gpus in hosts.items():
        out += inventory.rows(host, inventory.read(FakeNvml(gpus)))
    return judge(out, policy)


def failed(judged: Sequence[Row]) -> list[tuple[str, str, str]]:
    return [(r.host, r.check, r.gpu.split(" ")[0]) for r in judged if r.verdict == FAIL]


EIGHT = [gpu(i) for i in range(8)]


def test_a_healthy_fleet_passes_every_inventory_check() -> None:
    judged = fleet({"algo-1": EIGHT, "algo-2": EIGHT, "algo-3": EIGHT})
    assert failed(judged) == []
    assert {r.verdict for r in judged} == {PASS}
    counts = [r for r in judged if r.check == "gpu.count"]
    assert [(r.host, r.value, r.threshold) for r in counts] == [
        ("algo-1", 8.0, "== 8"),
        ("algo-2", 8.0, "== 8"),
        ("algo-3", 8.0, "== 8"),
    ]


def test_a_host_with_one_gpu_missing_is_named() -> None:
    judged = fleet({"algo-1": EIGHT, "algo-2": EIGHT[:7], "algo-3": EIGHT})
    assert failed(judged) == [("algo-2", "gpu.count", "")]
    (row,) = [r for r in judged if r.failed]
    assert row.detail == "7 here, 8 on 2 of 3 hosts"
    assert row.line() == (
        "preflight FAIL algo-2: gpu.count 7 GPUs (needs == 8): 7 here, 8 on 2 of 3 hosts"
    )
    assert rows.bad_hosts(judged) == ["algo-2"]


def test_the_expected_gpu_count_is_held_against_every_host() -> None:
    judged = fleet({"algo-1": EIGHT[:7], "algo-2": EIGHT[:7]}, Policy(expect_gpus=8))
    assert failed(judged) == [("algo-1", "gpu.count", ""), ("algo-2", "gpu.count", "")]


def test_a_mismatched_driver_is_named_on_the_odd_host() -> None:
    odd = [gpu(i, driver="535.129.03", cuda="12.2") for i in range(8)]
    judged = fleet({"algo-1": EIGHT, "algo-2": EIGHT, "algo-3": odd})
    assert failed(judged) == [("algo-3", "gpu.driver", ""), ("algo-3", "gpu.cuda", "")]
    driver = next(r for r in judged if r.failed and r.check == "gpu.driver")
    assert driver.detail == f"535.129.03 here, {DRIVER} on 2 of 3 hosts"


def test_ecc_errors_and_pending_remaps_name_the_gpu_and_its_uuid() -> None:
    bad = [*EIGHT[:3], gpu(3, ecc_uncorrected=2), gpu(4, remap_pending=True), *EIGHT[5:]]
    judged = fleet({"algo-1": EIGHT, "algo-2": bad})
    assert failed(judged) == [
        ("algo-2", "gpu.ecc", "3"),
        ("algo-2", "gpu.memory_repair", "4"),
    ]
    ecc = next(r for r in judged if r.failed and r.check == "gpu.ecc")
    assert ecc.gpu == "3 GPU-00000003-aaaa-bbbb-cccc-dddddddddddd"
    assert "GPU 3 GPU-00000003" in ecc.line()
    repair = next(r for r in judged if r.check == "gpu.memory_repair" and r.failed)
    assert repair.value == "row remap pending"


def test_a_foreign_process_holding_memory_fails_its_gpu_and_a_small_one_does_not() -> None:
    held = [gpu(0, foreign_mib=((4242, 10240),)), gpu(1, foreign_mib=((7, 3),)), *EIGHT[2:]]
    judged = fleet({"algo-1": held})
    assert failed(judged) == [("algo-1", "gpu.foreign_memory", "0")]
    row = next(r for r in judged if r.failed)
    assert row.detail == "pid 4242 holds 10240 MiB"
    assert row.value == 10240.0


def test_throttle_reasons_that_mean_a_fault_fail_and_idle_ones_do_not() -> None:
    gpus = [gpu(0, throttle=inventory.HW_THERMAL | 0x1), gpu(1, throttle=0x1), *EIGHT[2:]]
    judged = fleet({"algo-1": gpus})
    assert failed(judged) == [("algo-1", "gpu.throttle", "0")]
    assert next(r for r in judged if r.failed).value == "hardware thermal slowdown"


def test_counters_nvml_cannot_read_are_left_out_not_guessed() -> None:
    blind = gpu(0, ecc_uncorrected=None, retired_pending=None, remap_pending=None,
                remap_failed=None, throttle=None)  # fmt: skip
    checks = {r.check for r in inventory.rows("algo-1", [blind])}
    assert checks == {"gpu.count", "gpu.model", "gpu.driver", "gpu.cuda", "gpu.foreign_memory"}


def test_a_host_without_nvml_has_no_inventory_rows() -> None:
    assert inventory.read(FakeNvml([], error="libnvidia-ml.so.1 missing")) == []
    assert inventory.rows("algo-1", []) == []


def measured(check: str, values: dict[str, float], unit: str, detail: str = H100) -> list[Row]:
    return [Row(check, h, v, unit, gpu=f"0 GPU-{h}", detail=detail) for h, v in values.items()]


def test_a_gpu_under_85_percent_of_the_fleet_median_fails_and_cpu_hosts_only_warn() -> None:
    tflops = {"algo-1": 780.0, "algo-2": 790.0, "algo-3": 640.0, "algo-4": 785.0}
    judged = judge(measured("gpu.matmul", tflops, "TFLOPS"), Policy())
    assert [(r.host, r.verdict) for r in judged] == [
        ("algo-1", PASS), ("algo-2", PASS), ("algo-3", FAIL), ("algo-4", PASS),
    ]  # fmt: skip
    assert judged[2].detail == (
        "82% of the fleet median 782 TFLOPS; 65% of the H100 datasheet dense BF16 peak 989 TFLOPS"
    )
    assert judged[0].detail == f"{H100}; 79% of the H100 datasheet dense BF16 peak 989 TFLOPS"
    cpu = judge(measured("cpu.matmul", {"a": 10.0, "b": 11.0, "c": 2.0}, "GFLOPS", ""), Policy())
    assert [r.verdict for r in cpu] == [PASS, PASS, WARN]


def test_the_uncalibrated_model_floor_warns_and_a_floor_the_user_sets_fails() -> None:
    slow = {"algo-1": 550.0, "algo-2": 560.0}
    by_default = judge(measured("gpu.matmul", slow, "TFLOPS"), Policy())
    assert [r.verdict for r in by_default] == [WARN, WARN]
    assert "uncalibrated default floor 600" in by_default[0].detail
    enforced = judge(measured("gpu.matmul", slow, "TFLOPS"), Policy(min_tflops=555))
    assert [r.verdict for r in enforced] == [FAIL, PASS]


def cross(whole: float, pairs: dict[tuple[str, str], float]) -> list[Row]:
    out = [Row("allreduce.cross", ALL_HOSTS, whole, "GB/s")]
    out += [Row("allreduce.pair", f"{a}{PAIR_SEP}{b}", v, "GB/s") for (a, b), v in pairs.items()]
    return out


def test_the_host_common_to_every_slow_pair_is_named() -> None:
    pairs = {("algo-1", "algo-2"): 0.9, ("algo-1", "algo-3"): 0.01, ("algo-2", "algo-3"): 0.01}
    judged = judge(cross(0.01, pairs), Policy(min_cross_gbps=0.1))
    assert rows.bad_hosts(judged) == ["algo-3"]
    assert [r.verdict for r in judged if r.host == ALL_HOSTS] == [FAIL]
    slow = next(r for r in judged if r.check == "allreduce.slow_host")
    assert slow.detail == "every pair with this host is below the floor (with algo-1, algo-2)"
    assert rows.summary(judged).splitlines()[0] == "preflight failed on 1 host(s): algo-3"


def test_without_a_floor_the_cross_host_bandwidth_is_a_fact() -> None:
    judged = judge(cross(0.5, {}), Policy())
    assert [(r.check, r.verdict) for r in judged] == [("allreduce.cross", INFO)]


def test_a_failed_cross_host_all_reduce_fails_the_job_without_blaming_a_healthy_host() -> None:
    error = Row("allreduce.cross", ALL_HOSTS, "error", verdict=FAIL, detail="timeout on algo-1")
    broken = Row("probe.import", "algo-3", "error", verdict=FAIL, detail="no torch")
    judged = judge([error, broken], Policy())
    assert [r.verdict for r in judged] == [FAIL, FAIL]
    assert rows.bad_hosts(judged) == ["algo-3"]
    alone = judge([error], Policy())
    assert rows.summary(alone).startswith("preflight failed for the job as a whole")


def test_above_the_floor_nothing_fails() -> None:
    pairs = {("algo-1", "algo-2"): 0.9}
    assert failed(judge(cross(0.8, pairs), Policy(min_cross_gbps=0.1))) == []


@pytest.mark.parametrize("n", range(1, 12))
def test_pair_rounds_cover_every_pair_once_in_disjoint_rounds(n: int) -> None:
    rounds = probe.pair_rounds(n)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == [(a, b) for a in range(n) for b in range(a + 1, n)]
    for r in rounds:
        nodes = [x for p in r for x in p]
        assert len(nodes) == len(set(nodes))
    assert len(rounds) <= n


def test_busbw_is_nccl_tests_definition() -> None:
    assert probe_gpu.busbw(1_000_000_000, 1.0, 8) == pytest.approx(1.75)
    assert probe_gpu.busbw(1_000_000_000, 0.5, 2) == pytest.approx(2.0)


def test_rows_round_trip_and_bad_rows_are_refused() -> None:
    row = Row("gpu.ecc", "algo-1", 2.0, "errors", "== 0", FAIL, "3 GPU-x", "ECC", 0.25)
    assert rows.from_wire(json.loads(json.dumps(rows.to_wire(row)))) == row
    assert rows.from_wire(["c", "h", "", 3, "", "", "INFO", "", 0]).value == 3.0
    for bad in ([], ["c"] * 9, ["c", "h", "", float("nan"), "", "", "INFO", "", 0]):
        with pytest.raises(ValueError, match="row"):
            rows.from_wire(bad)


def test_the_table_and_preflight_json(tmp_path: Path) -> None:
    judged = fleet({"algo-1": EIGHT[:1], "algo-2": [gpu(0, ecc_uncorrected=5)]})
    text = rows.table(judged)
    assert text.splitlines()[0].split() == [
        "CHECK", "HOST", "GPU", "VALUE", "UNIT", "THRESHOLD", "VERDICT",
    ]  # fmt: skip
    assert any(line.split()[:3] == ["gpu.ecc", "algo-2", "0"] for line in text.splitlines())
    path = rows.write_json(tmp_path / "out", judged, level="quick", seconds=1.5)
    document = json.loads(path.read_text())
    assert document["passed"] is False
    assert document["bad_hosts"] == ["algo-2"]
    assert set(document["rows"][0]) == {
        "check", "host", "gpu", "value", "unit", "threshold", "verdict", "detail", "seconds",
    }  # fmt: skip


def test_a_directory_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    found = storage.rows("algo-1", {"model": tmp_path / "m", "checkpoints": blocked}, 0.0)
    verdicts = [(r.check, r.gpu, r.verdict) for r in found]
    assert verdicts == [
        ("dir.writable", f"model {tmp_path / 'm'}", PASS),
        ("dir.free", f"model {tmp_path / 'm'}", PASS),
        ("dir.writable", f"checkpoints {blocked}", FAIL),
    ]
    assert f"cannot write in {blocked}" in found[2].detail
    too_full = storage.rows("algo-1", {"model": tmp_path}, 1e9)
    assert too_full[1].verdict == FAIL


@pytest.mark.parametrize(
    ("cli", "env", "hp", "level"),
    [
        (None, None, None, "off"),
        (None, None, True, "quick"),
        (None, None, "full", "full"),
        (None, "FULL", "quick", "full"),
        ("off", "quick", True, "off"),
        (None, "0", None, "off"),
    ],
)
def test_the_level_comes_from_flag_variable_hyperparameter_in_that_order(
    cli: str | None, env: str | None, hp: object, level: str
) -> None:
    sources = settings.Sources(
        {"preflight": cli},
        {"LAUNCHER_PREFLIGHT": env} if env else {},
        {"launcher_preflight": hp} if hp is not None else {},
    )
    assert settings.resolve(sources, default_backend=Backend.TORCH).preflight == level


def test_a_bad_floor_names_its_source() -> None:
    sources = settings.Sources({}, {"LAUNCHER_PREFLIGHT_MIN_GBPS": "-1"}, {})
    with pytest.raises(ConfigError, match="environment: LAUNCHER_PREFLIGHT_MIN_GBPS: '-1'"):
        settings.resolve(sources, default_backend=Backend.TORCH)
