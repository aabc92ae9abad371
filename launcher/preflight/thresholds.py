"""Thresholds and the fleet-wide rules of a preflight. Pure.

Two kinds of floor (docs/preflight.md):

* **Relative** floors compare each GPU (or host) with the median of the whole job: a GPU's
  matmul TFLOPS or memory bandwidth under `RELATIVE_GPU` (0.85) of the fleet median FAILs,
  as does a host whose driver, CUDA version, GPU model or GPU count differs from the others.
  They need no calibration, so they are enforced. On CPU hosts the same comparisons only WARN:
  CPU throughput moves with whatever else the machine runs.
* **Absolute** floors per GPU model (`MODELS`, from reference/preflight.md: MAMF, AzNHC,
  nccl-tests peaks) have not been calibrated on real hardware by this project, so falling
  under one is a WARN. A floor the user sets (`--preflight-min-gbps`, `--preflight-min-tflops`)
  is enforced: under it is a FAIL.

Cross-host bandwidth: the whole job's all_reduce busbw against the floor; when it is below,
the probe has timed every pair of hosts, and a host whose every pair is below the floor is
the slow one (with two hosts both are named: one link cannot tell which end is slow).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.preflight.rows import FAIL, INFO, PASS, WARN, Row

RELATIVE_GPU = 0.85  # a GPU under this share of the fleet median fails (reference §4(c))
RELATIVE_CPU = 0.5  # a CPU host under this share of the median is warned about
PAIR_SEP = "<->"


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Default floors for one GPU model (matched as a substring of NVML's name)."""

    model: str
    datasheet_tflops: float  # dense BF16, the peak the matmul is compared against in the docs
    datasheet_mem_gbps: float
    min_tflops: float  # sustained BF16 matmul; 0: none
    min_intra_busbw_gbps: float  # all_reduce busbw over every GPU of the host; 0: none
    min_h2d_gbps: float = 0.0


# None of these is calibrated on real hardware by this project: each is a WARN floor.
MODELS: tuple[ModelLimits, ...] = (
    # H200 before H100: "H100" is no substring of "H200", but keep the longer names first.
    ModelLimits("H200", 989.0, 4800.0, 600.0, 400.0, 48.0),
    ModelLimits("H100", 989.0, 3350.0, 600.0, 400.0, 48.0),
)


def limits_for(gpu_name: str) -> ModelLimits | None:
    """The defaults for a GPU whose NVML name is `gpu_name`; None for a model not in the table."""
    return next((m for m in MODELS if m.model in gpu_name), None)


@dataclass(frozen=True, slots=True)
class Policy:
    """What the user set: the level and the enforced floors (None: the defaults above)."""

    level: str = "quick"
    min_cross_gbps: float | None = None  # cross-host all_reduce busbw, GB/s
    min_tflops: float | None = None  # per-GPU matmul (per-host GFLOPS/1000 on CPU hosts)
    min_free_gb: float = 1.0  # free space in every directory checked
    expect_gpus: int | None = None  # GPUs every host must have

    @property
    def pairwise_always(self) -> bool:
        """`full` times every pair of hosts even when the whole is above the floor."""
        return self.level == "full"


def _by_check(rows: Sequence[Row], check: str) -> list[Row]:
    return [r for r in rows if r.check == check]


def judge(rows: Sequence[Row], policy: Policy) -> list[Row]:
    """Every host's rows with the fleet-wide verdicts applied, in the order given (with the
    per-host rows of the pairwise search added at the end)."""
    out = list(rows)
    index = {id(r): i for i, r in enumerate(out)}

    def put(row: Row, new: Row) -> None:
        out[index[id(row)]] = new

    for check in ("gpu.model", "gpu.driver", "gpu.cuda", "gpu.count"):
        for row, new in _same_everywhere(_by_check(rows, check), policy):
            put(row, new)
    for check, gpu in (
        ("gpu.matmul", True),
        ("gpu.membw", True),
        ("gpu.h2d", True),
        ("cpu.matmul", False),
        ("cpu.membw", False),
        ("allreduce.host", True),
    ):
        for row, new in _against_median(_by_check(rows, check), policy, gpu=gpu):
            put(row, new)
    whole = _by_check(rows, "allreduce.cross")
    for row in whole:
        put(row, _cross_floor(row, policy))
    out.extend(_slow_hosts(_by_check(rows, "allreduce.pair"), whole, policy))
    return out


def _same_everywhere(rows: Sequence[Row], policy: Policy) -> list[tuple[Row, Row]]:
    """An inventory fact must be the same on every host: the majority's value passes, any
    other fails naming it. `gpu.count` is also held against `policy.expect_gpus`."""
    if not rows:
        return []
    votes = Counter(str(r.value) for r in rows)
    majority, _ = votes.most_common(1)[0]
    expected = majority
    if rows[0].check == "gpu.count" and policy.expect_gpus is not None:
        expected = str(float(policy.expect_gpus))
    judged = []
    for row in rows:
        if str(row.value) == expected:
            judged.append((row, row.judged(PASS, f"== {_show(expected)}")))
        else:
            hosts = sum(1 for r in rows if str(r.value) == expected)
            why = f"{_show(str(row.value))} here, {_show(expected)} on {hosts} of {len(rows)} hosts"
            judged.append((row, row.judged(FAIL, f"== {_show(expected)}", why)))
    return judged


def _show(text: str) -> str:
    return text[:-2] if text.endswith(".0") else text


def _against_median(rows: Sequence[Row], policy: Policy, *, gpu: bool) -> list[tuple[Row, Row]]:
    numbers = [r for r in rows if isinstance(r.value, float) and r.verdict != FAIL]
    if not numbers:
        return []
    median = statistics.median(float(r.value) for r in numbers)
    share = RELATIVE_GPU if gpu else RELATIVE_CPU
    judged = []
    for row in numbers:
        value = float(row.value)
        floor = share * median
        rule = f"> {share:.0%} of median {median:.3g}"
        verdict, why = PASS, ""
        if value < floor:
            verdict = FAIL if gpu else WARN
            why = f"{value / median:.0%} of the fleet median {median:.3g} {row.unit}"
        absolute = _absolute(row, policy)
        if absolute is not None and verdict == PASS:
            limit, enforced = absolute
            rule += f" and > {limit:g}"
            if value < limit:
                verdict = FAIL if enforced else WARN
                why = f"under the {'set' if enforced else 'uncalibrated default'} floor {limit:g}"
        detail = "; ".join(x for x in (why or row.detail, _datasheet(row)) if x)
        judged.append((row, row.judged(verdict, rule, detail)))
    return judged


def _datasheet(row: Row) -> str:
    """How a GPU's matmul or memory figure compares with its datasheet peak, naming the peak
    (dense BF16, never the sparse one); "" for a model not in `MODELS`."""
    model = limits_for(row.detail)
    if model is None or not isinstance(row.value, float):
        return ""
    if row.check == "gpu.matmul":
        peak, what = model.datasheet_tflops, "dense BF16 peak"
    elif row.check == "gpu.membw":
        peak, what = model.datasheet_mem_gbps, "memory bandwidth"
    else:
        return ""
    return f"{row.value / peak:.0%} of the {model.model} datasheet {what} {peak:g} {row.unit}"


def _absolute(row: Row, policy: Policy) -> tuple[float, bool] | None:
    """(floor, enforced) for a row with an absolute floor; None without one."""
    if row.check == "gpu.matmul":
        if policy.min_tflops is not None:
            return policy.min_tflops, True
        model = limits_for(row.detail)
        return (model.min_tflops, False) if model and model.min_tflops else None
    if row.check == "cpu.matmul" and policy.min_tflops is not None:
        return policy.min_tflops * 1000, True  # the row is in GFLOPS
    if row.check == "gpu.h2d":
        model = limits_for(row.detail)
        return (model.min_h2d_gbps, False) if model and model.min_h2d_gbps else None
    if row.check == "allreduce.host":
        model = limits_for(row.detail)
        return (model.min_intra_busbw_gbps, False) if model and model.min_intra_busbw_gbps else None
    return None


def cross_floor(policy: Policy) -> tuple[float, bool] | None:
    """(floor in GB/s, enforced) for the cross-host all_reduce; None when there is none (CPU
    hosts and GPU models without a default, unless the user set one). Default GPU floors
    are unknown for a job's NICs, so only the user's floor exists: the probe gets it."""
    if policy.min_cross_gbps is not None:
        return policy.min_cross_gbps, True
    return None


def _cross_floor(row: Row, policy: Policy) -> Row:
    if row.failed:  # the all_reduce itself failed (a host never joined): it stays failed
        return row
    floor = cross_floor(policy)
    if floor is None or not isinstance(row.value, float):
        return row.judged(INFO if floor is None else row.verdict, "")
    limit, enforced = floor
    if row.value >= limit:
        return row.judged(PASS, f">= {limit:g}")
    return row.judged(FAIL if enforced else WARN, f">= {limit:g}", row.detail)


def _slow_hosts(pairs: Sequence[Row], whole: Sequence[Row], policy: Policy) -> list[Row]:
    """Per-host rows from the pairwise tests: a host whose every pair is under the floor."""
    floor = cross_floor(policy)
    if not pairs or floor is None:
        return []
    limit, enforced = floor
    slow: dict[str, list[str]] = {}
    seen: dict[str, list[Row]] = {}
    for row in pairs:
        a, _, b = row.host.partition(PAIR_SEP)
        for host in (a, b):
            seen.setdefault(host, []).append(row)
    out = []
    for host, rows in seen.items():
        if all(isinstance(r.value, float) and r.value < limit for r in rows):
            slow[host] = [r.host for r in rows]
            worst = max(float(r.value) for r in rows)
            others = ", ".join(sorted(h for r in rows for h in r.host.split(PAIR_SEP) if h != host))
            out.append(
                Row(
                    "allreduce.slow_host",
                    host,
                    worst,
                    "GB/s",
                    f">= {limit:g}",
                    FAIL if enforced else WARN,
                    detail=f"every pair with this host is below the floor (with {others})",
                )
            )
    del whole
    return out
