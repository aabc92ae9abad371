"""What a hang report contains: the flight-recorder environment (`launcher.hangs.flightrec`)
and the culprit line and details (`launcher.hangs.summary`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from launcher.hangs import flightrec
from launcher.hangs.stacks import Frame, RankStack
from launcher.hangs.summary import culprit_line, details, short_path
from launcher.hangs.verdict import NS, Hung, RankProgress, Suspect, suspects

LOGS = Path("/logs/job")
OURS = {
    "TORCH_FR_BUFFER_SIZE": "2000",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_FR_DUMP_TEMP_FILE": "/logs/job/flightrec/rank_",
}
# Never set by us: torch 2.13 warns on every rank's start when it finds an older name.
OLD_NAMES = ("TORCH_NCCL_TRACE_BUFFER_SIZE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")


def test_the_flight_recorder_is_on_with_dumps_in_the_log_dir() -> None:
    got = flightrec.environment({"PATH": "/bin"}, LOGS)
    assert got == OURS
    assert not set(got) & set(OLD_NAMES)
    assert flightrec.folder(LOGS) == LOGS / "flightrec"


@pytest.mark.parametrize(
    ("user", "left_out"),
    [
        (
            {"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"},
            ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"),
        ),
        ({"TORCH_FR_BUFFER_SIZE": "50"}, ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")),
        ({"TORCH_NCCL_DUMP_ON_TIMEOUT": ""}, ("TORCH_NCCL_DUMP_ON_TIMEOUT",)),
        (
            {"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/mine/t_"},
            ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"),
        ),
    ],
)
def test_a_setting_the_user_made_in_any_spelling_is_never_overridden(
    user: dict[str, str], left_out: tuple[str, ...]
) -> None:
    got = flightrec.environment(user, LOGS)
    assert got == {k: v for k, v in OURS.items() if k not in left_out}
    assert not set(got) & set(user)


def test_the_dump_prefix_follows_torchs_order() -> None:
    assert flightrec.dump_prefix({}) == "/tmp/nccl_trace_rank_"
    assert flightrec.dump_prefix({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/a/x_"}) == "/a/x_"
    both = {"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/a/x_", "TORCH_FR_DUMP_TEMP_FILE": "/b/y_"}
    assert flightrec.dump_prefix(both) == "/b/y_"
    with pytest.raises(ValueError):
        flightrec.environment({}, LOGS, buffer_size=-1)


def test_dumps_are_found_by_prefix_and_age(tmp_path: Path) -> None:
    (tmp_path / "rank_0").write_bytes(b"pickle")
    (tmp_path / "rank_1").write_bytes(b"pickle")
    (tmp_path / "other").write_bytes(b"")
    old = tmp_path / "rank_9"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    prefix = str(tmp_path / "rank_")
    assert flightrec.find_dumps([prefix, prefix]) == tuple(
        tmp_path / n for n in ("rank_0", "rank_1", "rank_9")
    )
    assert [p.name for p in flightrec.find_dumps([prefix], since=time.time() - 60)] == [
        "rank_0",
        "rank_1",
    ]
    assert flightrec.find_dumps([str(tmp_path / "missing" / "rank_")]) == ()


# --- the culprit line ------------------------------------------------------------------------

C10D = "/opt/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"


def waiting(rank: int, op: str = "all_reduce") -> RankStack:
    frames = (Frame(op, C10D, 3252), Frame("step", "/opt/ml/code/train.py", 40))
    return RankStack(rank, 100 + rank, "py-spy", "", frames)


def stalled(rank: int) -> RankStack:
    frames = (Frame("load_batch", "/opt/ml/code/data.py", 12), Frame("<module>", "train.py", 88))
    return RankStack(rank, 100 + rank, "signal", "", frames)


def hung(*counts: int, automatic: bool = False) -> Hung:
    ranks = tuple(RankProgress(r, c, 10 * NS, 1 * NS) for r, c in enumerate(counts))
    return Hung(quiet_s=61.4, window_s=60, automatic=automatic, at_ns=71 * NS, ranks=ranks)


HOSTS = {0: "algo-1", 1: "algo-1", 2: "algo-2", 3: "algo-2"}


def test_the_culprit_line_names_rank_host_frame_and_what_the_others_do() -> None:
    verdict = hung(5, 5, 4, 5)
    stacks = {0: waiting(0), 1: waiting(1), 2: stalled(2), 3: waiting(3)}
    line = culprit_line(verdict, suspects(verdict, stacks), stacks, HOSTS)
    assert line == (
        "hang: no progress for 61 s (window 60 s); suspect rank 2 on host algo-2 at "
        "/opt/ml/code/data.py:12 in load_batch (least progress: 4, others up to 5; stack "
        "outside any collective); 3 ranks wait in all_reduce"
    )


def test_the_culprit_line_without_stacks_or_suspects() -> None:
    verdict = hung(5, 4, automatic=True)
    found = suspects(verdict, {})
    line = culprit_line(verdict, found, {0: RankStack(0, 100, "", "", error="py-spy: denied")}, {})
    assert line == (
        "hang: no progress for 61 s (window 60 s, automatic); suspect rank 1 with no stack "
        "(least progress: 4, others up to 5); 1 rank has no stack"
    )
    everyone = {0: waiting(0), 1: waiting(1)}
    assert culprit_line(hung(3, 3), (), everyone, {}).endswith(
        "; no single suspect; 2 ranks wait in all_reduce"
    )


def test_several_suspects_and_a_suspect_inside_a_collective() -> None:
    verdict = hung(4, 4, 5, 5)
    stacks = {r: waiting(r, "broadcast" if r < 2 else "all_reduce") for r in range(4)}
    found = (Suspect(0, ("least progress: 4, others up to 5",)), Suspect(1, ("x",)))
    line = culprit_line(verdict, found, stacks, HOSTS)
    assert "suspect rank 0 on host algo-1 at /opt/ml/code/train.py:40 in step, waiting in " in line
    assert "; also suspect: rank 1 (algo-1); 2 ranks wait in all_reduce" in line


def test_a_section_overrun_says_so() -> None:
    sample = RankProgress(0, 3, 5 * NS, 1 * NS, 1, 6 * NS, "save")
    verdict = Hung(4000, 60, False, 4006 * NS, (sample, RankProgress(1, 3)), (0,), 3600)
    line = culprit_line(verdict, suspects(verdict, {}), {}, {})
    assert line.startswith("hang: a section outlived its limit (3600 s); suspect rank 0 ")
    assert "(in section 'save' for 4000 s, over the 3600 s limit)" in line


def test_details_list_every_rank_and_the_evidence() -> None:
    verdict = hung(5, 4)
    stacks = {0: waiting(0), 1: stalled(1)}
    text = details(
        verdict,
        suspects(verdict, stacks),
        stacks,
        HOSTS,
        stacks_dir=Path("/logs/stacks"),
        dumps=[Path("/logs/flightrec/rank_0")],
    )
    assert text.splitlines() == [
        "hang window: 60 s (fixed); no progress for 61.4 s",
        "suspect rank 1 (algo-1): least progress: 4, others up to 5; stack outside any collective",
        "rank 0 (algo-1): progress 5 (last 61.0 s before the verdict); at "
        "/opt/ml/code/train.py:40 in step, waiting in all_reduce [py-spy]",
        "rank 1 (algo-1): progress 4 (last 61.0 s before the verdict); at "
        "/opt/ml/code/data.py:12 in load_batch [signal]",
        "stacks: /logs/stacks",
        "flight recorder dumps: /logs/flightrec/rank_0",
    ]


def test_short_paths() -> None:
    assert short_path(C10D) == "torch/distributed/distributed_c10d.py"
    assert short_path("/opt/ml/code/train.py") == "/opt/ml/code/train.py"
    long = "/a" * 40 + "/pkg/mod.py"
    assert short_path(long) == ".../pkg/mod.py"
