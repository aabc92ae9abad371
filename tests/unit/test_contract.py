"""The rank env contract: what the launcher writes is what `collectives` reads back."""

from __future__ import annotations

import pytest

from launcher import contract
from launcher.contract import ContractError, HorovodSlot, RankEnv, horovod_slots, read_rank_env

EXAMPLE = RankEnv(
    rank=5,
    local_rank=1,
    world_size=8,
    local_world_size=4,
    node_rank=1,
    num_nodes=2,
    master_addr="10.0.0.1",
    master_port=29500,
    run_id="job-7",
    error_file="/tmp/errors/rank-5/error.json",
    host="algo-2",
    backend="torch",
    restart_count=0,
    max_restarts=0,
)


def test_torch_env_round_trips() -> None:
    assert read_rank_env(EXAMPLE.torch_env()) == EXAMPLE


def test_torch_env_has_the_whole_torchrun_contract() -> None:
    env = EXAMPLE.torch_env()
    assert env == env | {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_RANK": "5",
        "ROLE_WORLD_SIZE": "8",
        "ROLE_NAME": "default",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_RUN_ID": "job-7",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_ERROR_FILE": "/tmp/errors/rank-5/error.json",
    }
    assert all(isinstance(v, str) for v in env.values())


def test_outside_any_launcher_there_is_no_rank_env() -> None:
    assert read_rank_env({}) is None
    assert read_rank_env({"RANK": "0"}) is None  # no world size: not a launch
    assert read_rank_env({"PATH": "/bin", "RANK": "", "WORLD_SIZE": ""}) is None


def test_torch_defaults_for_optional_variables() -> None:
    env = read_rank_env({"RANK": "1", "WORLD_SIZE": "2"})
    assert env == RankEnv(1, 0, 2, 2, 0, 1, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1' is negative"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "x"}, "MASTER_PORT='x'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "outside its world"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "outside"),
        ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_RANK"),
    ],
)
def test_malformed_variables_fail_loudly_naming_the_variable(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ContractError, match=problem):
        read_rank_env(environ)


def test_horovod_slot_env_round_trips_through_the_reader() -> None:
    slots = horovod_slots([("algo-1", 2), ("algo-2", 2)])
    for slot in slots:
        env = read_rank_env(slot.env("10.0.0.1", 4000, "eth0"))
        assert env is not None
        assert (env.rank, env.local_rank, env.world_size) == (slot.rank, slot.local_rank, 4)
        assert (env.local_world_size, env.node_rank, env.num_nodes) == (2, slot.cross_rank, 2)
        assert env.backend == "horovod"
    assert slots[3].env("a", 1, "eth0")[contract.HOROVOD_GLOO_IFACE] == "eth0"
    assert contract.HOROVOD_GLOO_IFACE not in slots[3].env("a", 1, None)


def test_horovod_slots_with_uneven_hosts_follow_get_host_assignments() -> None:
    slots = horovod_slots([("a", 2), ("b", 1), ("c", 3)])
    assert [s.rank for s in slots] == list(range(6))
    assert [(s.hostname, s.local_rank) for s in slots] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
        ("c", 1),
        ("c", 2),
    ]
    # Local rank 0 exists on three hosts, local rank 1 on a and c, local rank 2 only on c.
    assert [(s.cross_rank, s.cross_size) for s in slots] == [
        (0, 3),
        (0, 2),
        (1, 3),
        (2, 3),
        (1, 2),
        (0, 1),
    ]
    assert slots[0] == HorovodSlot("a", 0, 0, 0, 6, 2, 3)


def test_open_mpi_and_mpich_variables_are_read() -> None:
    ompi = read_rank_env(
        {
            "OMPI_COMM_WORLD_RANK": "5",
            "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        }
    )
    assert ompi is not None
    assert (ompi.rank, ompi.local_rank, ompi.node_rank, ompi.num_nodes) == (5, 1, 1, 2)
    assert ompi.backend == "mpi"
    pmi = read_rank_env({"PMI_RANK": "2", "PMI_SIZE": "3"})
    assert pmi is not None
    assert (pmi.rank, pmi.world_size, pmi.local_world_size, pmi.num_nodes) == (2, 3, 3, 1)


def test_torch_variables_win_over_mpi_ones() -> None:
    both = {**EXAMPLE.torch_env(), "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"}
    assert read_rank_env(both) == EXAMPLE


def test_world_of_one_is_rank_zero_of_one() -> None:
    one = contract.WORLD_OF_ONE
    assert (one.rank, one.world_size, one.local_world_size, one.backend) == (0, 1, 1, "none")
