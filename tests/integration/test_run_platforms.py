"""`launcher run` on one host under a platform's environment: what the dry run shows, the
one-line refusals, and a Slurm one-task-per-GPU shim running its rank. Real processes
(`python -m launcher run`); the multi-host paths are in tests/multihost."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.net import free_port
from tests.helpers.procwatch import LeakWatch
from tests.helpers.trees import write_tree

REPO = Path(__file__).resolve().parents[2]
RANK = str(REPO / "tests" / "bin" / "rank_tuple.py")
pytestmark = pytest.mark.timeout(60)
SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_ID": "3",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NODELIST": "gpu[07,10]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_NTASKS": "4",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURMD_NODENAME": "gpu10",
}


def launcher(
    args: list[str], env: dict[str, str], watch: LeakWatch, cwd: Path, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PET_"))}
    return subprocess.run(
        [sys.executable, "-m", "launcher", command, *args],
        env={**clean, **watch.env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_dry_run_shows_the_platform_and_every_origin(tmp_path: Path, no_leaks: LeakWatch) -> None:
    env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    env["SLURM_LOCALID"] = "0"
    (tmp_path / "ml" / "input" / "data" / "train").mkdir(parents=True)
    env["SAGEMAKER_BASE_DIR"] = str(tmp_path / "ml")
    done = launcher(["--dry-run", "--nproc-per-host", "2", RANK], env, no_leaks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "platform slurm: 2 host(s), one launcher per host" in done.stderr
    assert "hosts = gpu07,gpu10  (from SLURM_STEP_NODELIST 'gpu[07,10]' expanded)" in done.stderr
    assert "node_rank = 1  (from SLURM_NODEID)" in done.stderr
    assert "rank 2 (local 0) on gpu10" in done.stdout
    assert 'env SM_HOSTS=["gpu07","gpu10"]' in done.stdout
    assert "env SM_USER_ENTRY_POINT=rank_tuple.py" in done.stdout
    assert "env SM_MODULE_NAME=rank_tuple" in done.stdout
    assert "env SM_CURRENT_HOST=gpu10" in done.stdout
    assert f"env SM_CHANNEL_TRAIN={tmp_path}/ml/input/data/train" in done.stdout
    assert 'env SM_CHANNELS=["train"]' in done.stdout
    assert f"env SM_MODEL_DIR={tmp_path}/ml/model" in done.stdout


def test_the_shim_runs_the_one_rank_slurm_started(tmp_path: Path, no_leaks: LeakWatch) -> None:
    done = launcher([RANK], SLURM, no_leaks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "one task per GPU (rank shim)" in done.stderr
    assert '"rank": 3' in done.stdout and '"local_rank": 1' in done.stdout
    assert '"world_size": 4' in done.stdout and '"master": "gpu07"' in done.stdout
    assert done.stdout.count("TUPLE") == 1


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {k: v for k, v in SLURM.items() if k != "SLURMD_NODENAME"},
            "slurm environment: SLURMD_NODENAME: is not set",
        ),
        (
            {**SLURM, "SLURM_STEP_NODELIST": "gpu[07-]"},
            "slurm environment: SLURM_STEP_NODELIST: invalid range '07-'",
        ),
        (
            {"PET_NNODES": "1:4", "MASTER_ADDR": "j-master-0", "PET_NODE_RANK": "0"},
            "kubeflow environment: PET_NNODES: is elastic",
        ),
        ({"LAUNCHER_HOSTS_FROM": "k8s"}, "environment: LAUNCHER_HOSTS_FROM"),
    ],
)
def test_bad_platform_input_is_one_line_and_exit_2(
    tmp_path: Path, no_leaks: LeakWatch, env: dict[str, str], line: str
) -> None:
    done = launcher([RANK], env, no_leaks, tmp_path)
    assert done.returncode == 2, done.stderr
    assert line in done.stderr
    assert "Traceback" not in done.stderr
    assert "TUPLE" not in done.stdout


def test_secret_file_that_cannot_be_read_is_named(tmp_path: Path, no_leaks: LeakWatch) -> None:
    env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    env.update(SLURM_LOCALID="0", LAUNCHER_JOB_TOKEN_FILE=str(tmp_path / "missing"))
    done = launcher([RANK], env, no_leaks, tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'missing'}: cannot read the secret" in done.stderr


def test_launcher_plan_shows_the_platform(tmp_path: Path, no_leaks: LeakWatch) -> None:
    env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_NTASKS": "2"}
    done = launcher([], env, no_leaks, tmp_path, command="plan")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "platform slurm: 2 host(s), one launcher per host",
        "  hosts = gpu07,gpu10  (from SLURM_STEP_NODELIST 'gpu[07,10]' expanded)",
        "  current_host = gpu10  (from SLURMD_NODENAME)",
    ]


def test_launcher_plan_of_a_tree_names_it_and_keeps_its_json(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    base = write_tree(tmp_path / "ml", "algo-2", ["algo-1", "algo-2"], {}, "pass\n")
    env = {"SAGEMAKER_BASE_DIR": str(base)}
    done = launcher(["--json"], env, no_leaks, tmp_path, command="plan")
    assert done.returncode == 0, done.stderr
    assert "platform sagemaker: 2 host(s)" in done.stderr
    assert json.loads(done.stdout)["hosts"][0]["name"] == "algo-2"  # no distribution flag: alone


def test_launcher_plan_of_a_broken_tree_names_the_file_and_key(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    base = write_tree(tmp_path / "ml", "algo-2", ["algo-1", "algo-2"], {}, "pass\n")
    config = base / "input" / "config" / "resourceconfig.json"
    config.write_text('{"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]}')
    done = launcher([], {"SAGEMAKER_BASE_DIR": str(base)}, no_leaks, tmp_path, command="plan")
    assert done.returncode == 2
    assert f"{config}: current_host" in done.stderr
    assert "Traceback" not in done.stderr


def two_slurm_nodes(
    tmp_path: Path, watch: LeakWatch, options: list[str], program: list[str]
) -> list[tuple[int, str]]:
    """Two launchers as two Slurm nodes on loopback (`localhost` and `127.0.0.1`), one rank
    each, each with its own output folder; their (exit code, stderr)."""
    step = {
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NODELIST": "localhost,127.0.0.1",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "LAUNCHER_CONTROL_PORT": str(free_port()),
        "LAUNCHER_JOB_TOKEN": "a shared secret",
        "LAUNCHER_PEER_TIMEOUT": "30",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PET_"))}
    nodes = []
    for node, name in enumerate(("localhost", "127.0.0.1")):
        env = {**clean, **watch.env(), **step, "SLURM_NODEID": str(node)}
        env |= {"SLURM_PROCID": str(node), "SLURMD_NODENAME": name}
        out = ["--output-dir", str(tmp_path / f"output-{node}")]
        argv = [sys.executable, "-m", "launcher", "run", *options, *out, "--nproc-per-host", "1"]
        nodes.append(
            subprocess.Popen(
                [*argv, *program], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
            )
        )
    return [(node.wait(timeout=90), node.communicate()[1]) for node in nodes]


def test_a_slurm_job_of_two_launchers_restarts_as_one_with_a_fresh_port(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """Node 1's rank fails in attempt 0. With --max-restarts 1 the leader restarts the whole
    job: both nodes' ranks see restart 1, and a master port of the new attempt."""
    out = tmp_path / "out"
    out.mkdir()
    program = [str(REPO / "tests" / "bin" / "fail_once.py"), "--out", str(out), "--ranks", "1"]
    program += ["--together", "1"]  # rank 1 fails once rank 0 has started too
    ended = two_slurm_nodes(tmp_path, no_leaks, ["--max-restarts", "1"], program)
    assert [code for code, _ in ended] == [0, 0], ended
    assert all("job succeeded after 2 attempts" in err for _, err in ended), ended
    first = json.loads((out / "start-0-0.json").read_text())
    again = [json.loads((out / f"start-1-{r}.json").read_text()) for r in (0, 1)]
    assert {a["restart_count"] for a in again} == {"1"}, again
    assert {a["master_port"] for a in again} != {first["master_port"]}, (first, again)


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="needs Horovod")
def test_a_slurm_horovod_job_restarts_on_a_fresh_rendezvous_server(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """The horovod backend on two Slurm nodes: node 1's rank dies in attempt 0; the leader
    starts a new Horovod rendezvous server for attempt 1, and both nodes train to the end."""
    out = tmp_path / "result.json"
    program = [str(REPO / "tests" / "bin" / "hvd_train.py"), "--out", str(out)]
    program += ["--fail-rank", "1", "--fail-attempts", "1"]
    options = ["--backend", "horovod", "--max-restarts", "1"]
    ended = two_slurm_nodes(tmp_path, no_leaks, options, program)
    assert [code for code, _ in ended] == [0, 0], ended
    assert all("job succeeded after 2 attempts" in err for _, err in ended), ended
    ports = {}
    for attempt in (0, 1):
        starts = [tmp_path / f"result.json.start-{attempt}-{rank}.json" for rank in (0, 1)]
        ports[attempt] = {json.loads(path.read_text())["port"] for path in starts}
    assert len(ports[1]) == 1 and ports[0] != ports[1], ports
    result = json.loads(out.read_text())
    assert result["size"] == 2 and result["weights_agree"], result


@pytest.mark.timeout(150)
@pytest.mark.parametrize("floor", ["", "1000000"], ids=["healthy", "link-under-the-floor"])
def test_a_slurm_job_checks_every_node_before_any_user_code(
    tmp_path: Path, no_leaks: LeakWatch, floor: str
) -> None:
    """--preflight on a platform launch: every node checks itself, the leader judges; a
    cross-node bandwidth floor no link reaches fails both nodes with 78 before any rank."""
    out = tmp_path / "out"
    out.mkdir()
    options = ["--preflight", "quick", *(["--preflight-min-gbps", floor] if floor else [])]
    program = [str(REPO / "tests" / "bin" / "fail_once.py"), "--out", str(out), "--fail", "0"]
    ended = two_slurm_nodes(tmp_path, no_leaks, options, program)
    for node in (0, 1):
        assert (tmp_path / f"output-{node}" / "preflight.json").is_file(), ended
    started = sorted(p.name for p in out.glob("start-*"))
    if not floor:
        assert [code for code, _ in ended] == [0, 0], ended
        assert started == ["start-0-0.json", "start-0-1.json"]
        return
    assert [code for code, _ in ended] == [78, 78], ended
    assert started == []  # no user code ran anywhere
    for node in (0, 1):
        failure = (tmp_path / f"output-{node}" / "failure").read_text()
        assert failure.startswith("preflight failed on "), failure
