"""The pure launch plan: rank arithmetic, the env of every rank, --dry-run masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher import plan
from launcher.contract import read_rank_env
from launcher.plan import Backend, HostSlots, JobSpec, World

COMMAND = ("python", "train.py", "--lr", "0.1", "--token", "s3cret")


def world(slots: list[int], node_rank: int, **kw: object) -> World:
    hosts = tuple(HostSlots(f"algo-{i + 1}", n) for i, n in enumerate(slots))
    return World(hosts, node_rank, "10.0.0.1", 29500, **kw)  # type: ignore[arg-type]


def job(backend: Backend = Backend.TORCH, **kw: object) -> JobSpec:
    return JobSpec(COMMAND, "/code", backend, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("slots", "node", "ranks", "local_size", "omp"),
    [
        ([1], 0, [0], 1, "16"),  # one GPU: the whole host's cores
        ([8], 0, list(range(8)), 8, "2"),
        ([8, 8], 1, list(range(8, 16)), 8, "2"),
        ([2, 3, 1], 1, [2, 3, 4], 3, "5"),  # heterogeneous hosts
        ([2, 3, 1], 2, [5], 1, "16"),
        ([32], 0, list(range(32)), 32, "1"),  # more ranks than cores: never 0
    ],
)
def test_ranks_of_this_host(
    slots: list[int], node: int, ranks: list[int], local_size: int, omp: str
) -> None:
    launch = plan.build(job(error_dir="/err"), world(slots, node), {}, cpu_count=16)
    assert [s.rank for s in launch.ranks] == ranks
    assert [s.local_rank for s in launch.ranks] == list(range(local_size))
    for spec in launch.ranks:
        env = spec.env
        assert env["RANK"] == str(spec.rank)
        assert env["WORLD_SIZE"] == str(sum(slots))
        assert env["LOCAL_WORLD_SIZE"] == str(local_size)
        assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == (str(node), str(len(slots)))
        assert (env["ROLE_RANK"], env["ROLE_WORLD_SIZE"]) == (str(spec.rank), str(sum(slots)))
        assert env["ROLE_NAME"] == "default"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29500")
        assert env["TORCHELASTIC_RUN_ID"] == "none"
        assert env["TORCHELASTIC_RESTART_COUNT"] == env["TORCHELASTIC_MAX_RESTARTS"] == "0"
        assert env["TORCHELASTIC_ERROR_FILE"] == f"/err/rank-{spec.rank}/error.json"
        assert spec.error_file == env["TORCHELASTIC_ERROR_FILE"]
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert env["OMP_NUM_THREADS"] == omp
        assert spec.argv == COMMAND and spec.cwd == "/code"
        assert spec.host == f"algo-{node + 1}"


def test_inherited_values_win_over_the_launchers_defaults() -> None:
    base = {"OMP_NUM_THREADS": "3", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0", "PATH": "/bin"}
    launch = plan.build(job(), world([2], 0), base, cpu_count=8)
    spec = launch.ranks[0]
    assert "OMP_NUM_THREADS" not in spec.env
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in spec.env
    full = launch.full_env(spec)
    assert (full["OMP_NUM_THREADS"], full["TORCH_NCCL_ASYNC_ERROR_HANDLING"]) == ("3", "0")
    assert full["PATH"] == "/bin" and full["RANK"] == "0"


def test_job_env_is_shared_and_rank_variables_override_it() -> None:
    shared = {"SM_MODEL_DIR": "/opt/ml/model", "RANK": "99", "OMP_NUM_THREADS": "4"}
    launch = plan.build(job(env=shared), world([2], 0), {}, cpu_count=8)
    for spec in launch.ranks:
        assert spec.env["SM_MODEL_DIR"] == "/opt/ml/model"
        assert spec.env["RANK"] == str(spec.rank)
        assert spec.env["OMP_NUM_THREADS"] == "4"


def test_network_interface_reaches_nccl_and_gloo() -> None:
    launch = plan.build(job(interface="eth1"), world([1], 0), {"GLOO_SOCKET_IFNAME": "lo"}, 4)
    env = launch.ranks[0].env
    assert env["NCCL_SOCKET_IFNAME"] == "eth1"
    assert "GLOO_SOCKET_IFNAME" not in env  # the inherited choice stands


def test_backend_none_sets_no_rank_variables() -> None:
    launch = plan.build(job(Backend.NONE, env={"SM_HPS": "{}"}), world([1], 0), {}, 8)
    (spec,) = launch.ranks
    assert spec.env == {"SM_HPS": "{}"}
    assert spec.error_file == ""


def test_horovod_backend_adds_the_horovodrun_contract() -> None:
    hvd_world = world([2, 2], 1, horovod_rendezvous=("10.0.0.1", 4000))
    launch = plan.build(job(Backend.HOROVOD, interface="eth0"), hvd_world, {}, 8)
    env = launch.ranks[1].env
    assert (env["HOROVOD_RANK"], env["HOROVOD_SIZE"]) == ("3", "4")
    assert (env["HOROVOD_LOCAL_RANK"], env["HOROVOD_CROSS_RANK"]) == ("1", "1")
    assert env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == "10.0.0.1"
    assert env["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "4000"
    assert (env["HOROVOD_CONTROLLER"], env["HOROVOD_GLOO_IFACE"]) == ("gloo", "eth0")
    assert env["RANK"] == "3"  # the torch contract is there too


def test_a_node_rank_outside_the_world_is_an_error() -> None:
    with pytest.raises(ValueError, match="node rank 2 outside 2 hosts"):
        plan.build(job(), world([1, 1], 2), {}, 4)


def test_describe_masks_hyperparameter_values_and_keeps_names() -> None:
    shared = {"SM_HPS": '{"token": "s3cret"}', "SM_HP_TOKEN": "s3cret", "SM_MODEL_DIR": "/m"}
    launch = plan.build(job(env=shared, user_args=4), world([2], 0), {}, 4)
    described = plan.describe(launch)
    assert "s3cret" not in repr(described)
    first = described["ranks"][0]  # type: ignore[index]
    assert first["argv"] == ["python", "train.py", "--lr", "***", "--token", "***"]
    assert first["env"]["SM_HPS"] == first["env"]["SM_HP_TOKEN"] == "***"
    assert first["env"]["SM_MODEL_DIR"] == "/m"
    assert described["world_size"] == 2 and described["master"] == "10.0.0.1:29500"


@given(
    slots=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6),
    cpus=st.integers(min_value=1, max_value=256),
)
def test_every_layout_gives_a_consistent_world(slots: list[int], cpus: int) -> None:
    """Over every host: ranks are a permutation of 0..N-1, local ranks are 0..k-1 on each
    host, and every rank's env reads back (through the reader `collectives` uses) as where
    the plan put it."""
    total = sum(slots)
    seen: list[int] = []
    for node, count in enumerate(slots):
        launch = plan.build(job(error_dir="/e"), world(slots, node), {}, cpu_count=cpus)
        assert [s.local_rank for s in launch.ranks] == list(range(count))
        for spec in launch.ranks:
            seen.append(spec.rank)
            env = read_rank_env(launch.full_env(spec))
            assert env is not None
            assert (env.rank, env.local_rank) == (spec.rank, spec.local_rank)
            assert (env.world_size, env.local_world_size) == (total, count)
            assert (env.node_rank, env.num_nodes) == (node, len(slots))
            assert (env.master_addr, env.master_port) == ("10.0.0.1", 29500)
            assert env.host == spec.host and env.error_file == spec.error_file
            assert int(spec.env["OMP_NUM_THREADS"]) in range(1, cpus + 1)
    assert sorted(seen) == list(range(total))
    # Contiguous per host, in node order.
    assert seen == list(range(total))


def test_the_job_token_never_reaches_a_rank() -> None:
    job = JobSpec(("prog",), "/", Backend.TORCH)
    world = World((HostSlots("h", 2, "127.0.0.1"),), 0, "127.0.0.1", 1234)
    launch = plan.build(job, world, {"LAUNCHER_JOB_TOKEN": "s3cret", "PATH": "/bin"}, 2)
    for spec in launch.ranks:
        env = launch.full_env(spec)
        assert "LAUNCHER_JOB_TOKEN" not in env
        assert env["PATH"] == "/bin"
