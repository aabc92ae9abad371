"""Whole-job restarts, the pure parts: the retry rule, the checkpoint folder and names, and the
bounded wait for GPU memory (NVML faked: no GPU here)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from launcher import contract, settings
from launcher.errors import ConfigError
from launcher.restarts import checkpoints, gpumem
from launcher.restarts.policy import AttemptEnd, decide, history_text


def end(
    attempt: int,
    code: int = 1,
    cause: str = "rank 1 exited with code 1",
    *,
    stopped: bool = False,
    progressed: bool | None = None,
) -> AttemptEnd:
    return AttemptEnd(attempt, code, cause, stopped, progressed)


@pytest.mark.parametrize(
    ("code", "retry"),
    [
        (1, True),
        (137, True),
        (139, True),
        (124, True),
        (3, True),
        (2, False),
        (126, False),
        (127, False),
    ],
)
def test_what_is_retried_by_exit_code(code: int, retry: bool) -> None:
    verdict = decide((end(0, code),), max_restarts=3)
    assert verdict.retry is retry
    if not retry:
        assert f"exit code {code}" in verdict.why


def test_a_stop_from_outside_is_never_retried() -> None:
    verdict = decide((end(0, 143, stopped=True),), max_restarts=3)
    assert not verdict.retry
    assert "stopped from outside" in verdict.why


def test_the_budget_counts_restarts_after_the_first_attempt() -> None:
    ends = tuple(end(i, progressed=True) for i in range(3))
    assert decide(ends[:1], 2).retry
    assert decide(ends[:2], 2).retry
    last = decide(ends, 2)
    assert not last.retry
    assert last.why == "no restarts left (2 of 2 used)"
    assert not decide(ends[:1], 0).retry


def test_the_same_failure_without_progress_stops_early() -> None:
    verdict = decide((end(0, progressed=True), end(1, progressed=False)), max_restarts=10)
    assert not verdict.retry
    assert "attempt 1 failed the same way as attempt 0" in verdict.why
    # Unknown progress (nothing counted it) is no evidence of progress either.
    assert not decide((end(0), end(1, progressed=None)), 10).retry


def test_progress_or_a_different_failure_keeps_restarting() -> None:
    assert decide((end(0), end(1, progressed=True)), 10).retry
    assert decide((end(0), end(1, cause="rank 0 exited with code 1")), 10).retry
    assert decide((end(0, 1), end(1, 137)), 10).retry
    # The first attempt has nothing to be compared with.
    assert decide((end(0, progressed=False),), 10).retry


def test_decide_needs_a_failed_attempt() -> None:
    with pytest.raises(ValueError, match="failed"):
        decide((), 1)
    with pytest.raises(ValueError, match="failed"):
        decide((end(0, 0),), 1)


def test_the_history_lists_every_attempt_in_order() -> None:
    text = history_text((end(0, 1, "a"), end(1, 124, "b")))
    assert text == "attempts: 2\n  attempt 0: exit 1: a\n  attempt 1: exit 124: b\n"


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_names_round_trip_and_sort_as_numbers(tmp_path: Path) -> None:
    assert contract.checkpoint_name(42) == "step-000000000042.ckpt"
    assert contract.checkpoint_step(contract.checkpoint_name(42)) == 42
    for other in ("step-42.ckpt", "step-00000000004x.ckpt", ".step-000000000042.ckpt.tmp", "x"):
        assert contract.checkpoint_step(other) is None
    with pytest.raises(ValueError, match="step"):
        contract.checkpoint_name(-1)
    assert contract.latest_checkpoint_step(tmp_path / "missing") is None
    assert contract.latest_checkpoint_step(tmp_path) is None
    for step in (9, 10, 2):
        (tmp_path / contract.checkpoint_name(step)).write_text("")
    (tmp_path / "step-999.ckpt").write_text("")
    assert contract.latest_checkpoint_step(tmp_path) == 10


def config(base: Path, body: object) -> None:
    folder = base / "input" / "config"
    folder.mkdir(parents=True)
    (folder / "checkpointconfig.json").write_text(json.dumps(body))


def test_the_checkpoint_folder_is_sagemakers_unless_one_is_given(tmp_path: Path) -> None:
    assert checkpoints.folder(None, tmp_path) == tmp_path / "checkpoints"
    config(tmp_path, {"LocalPath": "/data/ckpt/", "S3Uri": "s3://b/p"})
    assert checkpoints.folder(None, tmp_path) == Path("/data/ckpt")
    assert checkpoints.folder(Path("/mine"), tmp_path) == Path("/mine")


def test_a_checkpoint_config_without_local_path_means_the_default(tmp_path: Path) -> None:
    config(tmp_path, {"S3Uri": "s3://b/p"})
    assert checkpoints.folder(None, tmp_path) == tmp_path / "checkpoints"


@pytest.mark.parametrize("bad", [{"LocalPath": "relative"}, {"LocalPath": 3}, [1]])
def test_a_bad_checkpoint_config_names_the_file_and_key(tmp_path: Path, bad: object) -> None:
    config(tmp_path, bad)
    with pytest.raises(ConfigError, match=r"checkpointconfig\.json") as caught:
        checkpoints.folder(None, tmp_path)
    assert caught.value.exit_code == 2


# --- GPU memory between attempts (NVML faked) -------------------------------------------------


class Probe:
    """Used MiB per GPU, one reading per call (the last one repeats)."""

    def __init__(self, *readings: Mapping[int, int] | None) -> None:
        self.readings = list(readings)
        self.calls = 0

    def used_mib(self) -> Mapping[int, int] | None:
        self.calls += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_cpu_host_never_waits() -> None:
    baseline = gpumem.Baseline.take(Probe(None))
    probe = Probe(None)
    assert baseline.wait_released(probe)
    assert probe.calls == 0


def test_the_wait_ends_once_every_gpu_is_back_near_its_baseline() -> None:
    baseline = gpumem.Baseline.take(Probe({0: 100, 1: 100}))
    clock = Clock()
    probe = Probe({0: 9000, 1: 100}, {0: 4000, 1: 100}, {0: 100 + gpumem.SLACK_MIB, 1: 150})
    assert baseline.wait_released(probe, clock=clock, sleep=clock.sleep)
    assert probe.calls == 3


def test_the_wait_is_bounded_and_says_which_gpu_holds_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    baseline = gpumem.Baseline.take(Probe({0: 0, 1: 0}))
    clock = Clock()
    probe = Probe({0: 0, 1: 2000})
    assert not baseline.wait_released(probe, wait_s=5.0, clock=clock, sleep=clock.sleep)
    assert 5.0 <= clock.now <= 5.0 + gpumem.POLL_S * 2
    assert "GPU 1 1488 MiB over" in caplog.text


# --- the setting --------------------------------------------------------------------------------


def resolve(cli: dict[str, object], env: dict[str, str], hps: dict[str, object]) -> int:
    sources = settings.Sources(cli, env, hps, "/opt/ml/input/config/hyperparameters.json")
    return settings.resolve(sources, default_backend=settings.Backend.TORCH).max_restarts


def test_max_restarts_comes_from_the_usual_sources_in_the_usual_order() -> None:
    assert resolve({}, {}, {}) == 0
    assert resolve({}, {}, {"launcher_max_restarts": 3}) == 3
    assert resolve({}, {"LAUNCHER_MAX_RESTARTS": "4"}, {"launcher_max_restarts": 3}) == 4
    assert resolve({"max_restarts": "5"}, {"LAUNCHER_MAX_RESTARTS": "4"}, {}) == 5


@pytest.mark.parametrize("bad", ["-1", "1.5", "1001", "many", "inf"])
def test_a_bad_max_restarts_names_its_source(bad: str) -> None:
    with pytest.raises(ConfigError, match="environment: LAUNCHER_MAX_RESTARTS") as caught:
        resolve({}, {"LAUNCHER_MAX_RESTARTS": bad}, {})
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError, match="launcher_max_restarts"):
        resolve({}, {}, {"launcher_max_restarts": True})
