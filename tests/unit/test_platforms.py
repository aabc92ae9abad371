"""Platform detection (`launcher.platforms`): each platform's contract, its refusals naming the
variable, `auto`'s order, and the same 2-host x 2-rank world on every platform. Pure."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from launcher import commands
from launcher.platforms import detect, kubernetes, slurm, smtree
from launcher.platforms.model import Kind, PlatformError
from launcher.sagemaker import config, smenv
from tests.helpers.trees import cluster_resources, encode_hps, write_tree

NONE: dict[str, str] = {}


def _no_file(path: str) -> str | None:
    return None


def slurm_env(node: int, **extra: str) -> dict[str, str]:
    """A Slurm step of 2 nodes, one task per node, as srun gives it on node `node`."""
    env = {
        "SLURM_JOB_ID": "1234",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-[07,10]",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NODELIST": "gpu-[07,10]",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
        "SLURM_NTASKS": "2",
        "SLURM_NODEID": str(node),
        "SLURM_PROCID": str(node),
        "SLURM_LOCALID": "0",
        "SLURMD_NODENAME": ("gpu-07", "gpu-10")[node],
    }
    env.update(extra)
    return env


def test_slurm_step_one_launcher_per_node() -> None:
    found = slurm.detect(slurm_env(1))
    assert found.hosts == ("gpu-07", "gpu-10")
    assert (found.current_host, found.node_rank, found.task) == ("gpu-10", 1, None)
    origins = {s.field: s.origin for s in found.sources}
    assert origins["node_rank"] == "SLURM_NODEID"
    assert "SLURM_STEP_NODELIST" in origins["hosts"]


def test_slurm_takes_the_step_not_the_job() -> None:
    """A 2-node step inside a 4-node allocation: the step's hosts, never the job's."""
    env = slurm_env(0, SLURM_JOB_NUM_NODES="4", SLURM_JOB_NODELIST="gpu-[07,10-12]")
    assert slurm.detect(env).hosts == ("gpu-07", "gpu-10")


def test_slurm_batch_script_on_several_nodes_is_refused_with_the_fix() -> None:
    env = slurm_env(0)
    for name in ("SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST", "SLURM_STEP_ID"):
        del env[name]
    with pytest.raises(PlatformError) as caught:
        slurm.detect(env)
    assert caught.value.variable == "SLURM_STEP_NUM_NODES"
    assert "srun --ntasks-per-node=1" in caught.value.hint
    assert caught.value.exit_code == 2


def test_slurm_node_rank_never_from_list_position() -> None:
    """SLURM_NODEID disagreeing with the list order is refused, not guessed (Lightning#17228)."""
    with pytest.raises(PlatformError, match="SLURM_NODEID"):
        slurm.detect(slurm_env(1, SLURMD_NODENAME="gpu-07"))


def test_slurm_one_task_per_gpu() -> None:
    env = slurm_env(
        1,
        SLURM_STEP_TASKS_PER_NODE="2(x2)",
        SLURM_NTASKS="4",
        SLURM_PROCID="3",
        SLURM_LOCALID="1",
        SLURM_STEP_GPUS="2,3",
    )
    found = slurm.detect(env)
    assert found.task is not None
    assert (found.task.rank, found.task.local_rank, found.task.world_size) == (3, 1, 4)
    assert found.slots == 2 and found.task_slots == (2, 2)
    assert found.visible_gpus == "2,3"
    assert slurm.MASTER_PORT_BASE <= found.task.master_port < 65536


def test_slurm_cyclic_layout_is_refused() -> None:
    env = slurm_env(
        0, SLURM_STEP_TASKS_PER_NODE="2(x2)", SLURM_NTASKS="4", SLURM_PROCID="2", SLURM_LOCALID="1"
    )
    with pytest.raises(PlatformError, match="block"):
        slurm.detect(env)


@pytest.mark.parametrize(
    ("text", "counts"), [("4(x2)", (4, 4)), ("2(x3),1", (2, 2, 2, 1)), ("1", (1,))]
)
def test_tasks_per_node(text: str, counts: tuple[int, ...]) -> None:
    assert slurm.tasks_per_node(text) == counts


@pytest.mark.parametrize(
    ("drop", "variable"),
    [("SLURMD_NODENAME", "SLURMD_NODENAME"), ("SLURM_NODEID", "SLURM_NODEID")],
)
def test_slurm_missing_variable_is_named_fast(drop: str, variable: str) -> None:
    env = slurm_env(0)
    del env[drop]
    began = time.monotonic()
    with pytest.raises(PlatformError) as caught:
        detect.detect(Kind.AUTO, env, _no_file, "here")
    assert time.monotonic() - began < 0.1
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"slurm environment: {variable}:")


def kubeflow_env(node: int) -> dict[str, str]:
    env = {
        "MASTER_ADDR": "mnist-master-0",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "4",
        "RANK": str(node),
        "PET_NNODES": "2",
        "PET_NODE_RANK": str(node),
        "PET_NPROC_PER_NODE": "2",
        "HOSTNAME": ("mnist-master-0", "mnist-worker-0")[node],
    }
    return env


def test_kubeflow_pytorchjob() -> None:
    found = kubernetes.detect_kubeflow(kubeflow_env(1))
    assert found.hosts == ("mnist-master-0", "mnist-worker-0")
    assert (found.current_host, found.node_rank, found.slots, found.master_port) == (
        "mnist-worker-0",
        1,
        2,
        23456,
    )


def test_kubeflow_trainer_v2_names() -> None:
    env = {"PET_MASTER_ADDR": "tj-node-0-0.tj", "PET_NNODES": "3", "PET_NODE_RANK": "2"}
    found = kubernetes.detect_kubeflow(env)
    assert found.hosts == ("tj-node-0-0.tj", "tj-node-0-1.tj", "tj-node-0-2.tj")


def test_kubeflow_elastic_is_refused() -> None:
    env = {**kubeflow_env(0), "PET_NNODES": "1:4"}
    with pytest.raises(PlatformError, match="elastic"):
        kubernetes.detect_kubeflow(env)


def indexed_env(index: int) -> dict[str, str]:
    return {
        "JOB_COMPLETION_INDEX": str(index),
        "HOSTNAME": f"train-{index}",
        "LAUNCHER_NNODES": "2",
        "LAUNCHER_K8S_SUBDOMAIN": "train-svc",
    }


def test_indexed_job() -> None:
    found = kubernetes.detect_indexed_job(indexed_env(1))
    assert found.hosts == ("train-0.train-svc", "train-1.train-svc")
    assert (found.current_host, found.node_rank) == ("train-1.train-svc", 1)


def test_indexed_job_hostname_must_match_the_index() -> None:
    env = {**indexed_env(1), "LAUNCHER_K8S_JOB": "train", "HOSTNAME": "train-0"}
    with pytest.raises(PlatformError, match="HOSTNAME"):
        kubernetes.detect_indexed_job(env)


def jobset_env(job: int, pod: int) -> dict[str, str]:
    return {
        "JOB_COMPLETION_INDEX": str(pod),
        "LAUNCHER_JOBSET_NAME": "js",
        "LAUNCHER_JOBSET_RJOB": "workers",
        "LAUNCHER_JOBSET_JOB_INDEX": str(job),
        "LAUNCHER_JOBSET_REPLICAS": "2",
        "LAUNCHER_NNODES": "4",
        "HOSTNAME": f"js-workers-{job}-{pod}",
    }


def test_jobset() -> None:
    found = kubernetes.detect_jobset(jobset_env(1, 0))
    assert found.hosts == (
        "js-workers-0-0.js",
        "js-workers-0-1.js",
        "js-workers-1-0.js",
        "js-workers-1-1.js",
    )
    assert (found.current_host, found.node_rank) == ("js-workers-1-0.js", 2)


def test_auto_order() -> None:
    tree = json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]})

    def read(path: str) -> str | None:
        return tree if path.endswith("resourceconfig.json") else None

    both = {**slurm_env(0), **kubeflow_env(0)}
    assert detect.detect(Kind.AUTO, both, read, "x").kind is Kind.SAGEMAKER
    assert detect.detect(Kind.AUTO, both, _no_file, "x").kind is Kind.SLURM
    assert detect.detect(Kind.AUTO, kubeflow_env(0), _no_file, "x").kind is Kind.KUBEFLOW
    assert detect.detect(Kind.AUTO, jobset_env(0, 0), _no_file, "x").kind is Kind.JOBSET
    assert detect.detect(Kind.AUTO, indexed_env(0), _no_file, "x").kind is Kind.INDEXED_JOB
    alone = detect.detect(Kind.AUTO, NONE, _no_file, "box")
    assert (alone.kind, alone.hosts) == (Kind.STATIC, ("box",))
    sm = detect.detect(Kind.SAGEMAKER, NONE, read, "x")
    assert (sm.hosts, sm.node_rank) == (("algo-1", "algo-2"), 1)


def test_commands_fast_path_knows_every_marker() -> None:
    """`launcher run` skips importing the platforms when no marker is set: every environment
    that `auto` detects must carry one of `commands.PLATFORM_MARKERS`."""
    for env in (slurm_env(0), kubeflow_env(0), indexed_env(0), jobset_env(0, 0)):
        assert any(env.get(m) for m in commands.PLATFORM_MARKERS)
        assert detect.detect(Kind.AUTO, env, _no_file, "x").kind is not Kind.STATIC
    assert detect.detect(Kind.AUTO, {"MASTER_ADDR": "a"}, _no_file, "x").kind is Kind.STATIC


def test_slurm_one_node_batch_script_runs_outside_a_step() -> None:
    """`sbatch --nodes=1` and a launcher in the script itself: the job's one node is the world."""
    env = {
        "SLURM_JOB_ID": "9",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "gpu-07",
        "SLURM_NODEID": "0",
        "SLURMD_NODENAME": "gpu-07",
        "SLURM_JOB_GPUS": "0,1",
    }
    found = slurm.detect(env)
    assert (found.hosts, found.node_rank, found.task, found.multi) == (("gpu-07",), 0, None, False)
    assert found.visible_gpus == "0,1"
    assert found.job_name == "slurm-9.batch"


def test_the_sm_set_is_the_equivalent_tree_s(tmp_path: Path) -> None:
    """`SM_*` from a platform equal `train`'s for the same hosts, entry point and channel,
    the instance type aside (a platform does not know it) and the code folder (a tree's
    `code/`, the program's own folder for `launcher run`)."""
    hosts = ["algo-1", "algo-2"]
    resources = cluster_resources(hosts)
    resources["current_instance_type"] = smtree.INSTANCE_TYPE
    resources["instance_groups"][0]["instance_type"] = smtree.INSTANCE_TYPE  # type: ignore[index]
    channel = {"train": {"TrainingInputMode": "File"}}
    base = write_tree(
        tmp_path / "ml",
        "algo-2",
        hosts,
        encode_hps({"sagemaker_torch_distributed_enabled": True}),
        "pass\n",
        channels=channel,
        resources=resources,
    )
    environ = {"SAGEMAKER_BASE_DIR": str(base), "TRAINING_JOB_NAME": "j"}
    cfg = config.load(base, environ)
    tree_env = smenv.sm_environment(cfg, num_gpus=0, num_cpus=2, environ=environ)
    found = detect.detect(Kind.SAGEMAKER, environ, lambda p: Path(p).read_text(), "x")
    found = replace(found, job_name="j")
    platform_cfg = smtree.job_config(found, str(base / "code" / "train.py"), environ, ("train",))
    platform_env = smenv.sm_environment(platform_cfg, num_gpus=0, num_cpus=2, environ=environ)
    # The distribution flag is a hyperparameter of the tree (SM_FRAMEWORK_PARAMS); `launcher
    # run` has none, and distributes every host. SM_TRAINING_ENV repeats the others.
    training = ("SM_TRAINING_ENV", "SM_FRAMEWORK_PARAMS", "SAGEMAKER_JOB_NAME", "SAGEMAKER_REGION")
    assert {k: v for k, v in platform_env.items() if k not in training} == {
        k: v for k, v in tree_env.items() if k not in training
    }
    assert json.loads(platform_env["SM_RESOURCE_CONFIG"])["hosts"] == hosts
