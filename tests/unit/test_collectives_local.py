"""`collectives` in one process: world of one, rank helpers from the contract, init, engines.

The rank environment is set through `os.environ` (what a launcher does) and re-read with
`collectives.env.refresh()`; every test leaves no process group behind.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import collectives
from collectives import env, group
from collectives.engines import LocalEngine
from launcher import contract
from launcher.contract import WORLD_OF_ONE, RankEnv

RANK_VARS = [v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)]


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean rank environment; `refresh()` after setting variables."""
    for name in RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    env.refresh()
    yield monkeypatch
    collectives.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()
    monkeypatch.undo()
    env.refresh()


def test_outside_a_launch_is_a_world_of_one(environ: pytest.MonkeyPatch) -> None:
    assert env.current() is WORLD_OF_ONE and not env.launched()
    assert (collectives.rank(), collectives.world_size()) == (0, 1)
    assert (collectives.local_rank(), collectives.local_world_size()) == (0, 1)
    assert collectives.node_rank() == 0 and collectives.is_primary()
    # No init needed: collectives are identities.
    t = torch.tensor([1.0, 2.0])
    assert collectives.all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    assert collectives.all_reduce(t, "mean") is t
    assert collectives.broadcast(t, 0) is t
    gathered = collectives.all_gather(t)
    assert len(gathered) == 1 and gathered[0].tolist() == [1.0, 2.0]
    assert gathered[0] is not t
    out = [torch.zeros(2)]
    assert collectives.all_gather(t, out) is out and out[0].tolist() == [1.0, 2.0]
    collectives.barrier()
    with collectives.primary_first():
        pass
    # init starts nothing outside a launch.
    assert collectives.init() is WORLD_OF_ONE
    assert collectives.init("gloo") is WORLD_OF_ONE  # nothing was started to disagree with
    assert not dist.is_initialized()
    active = group.active()
    assert active is not None and active.backend == "none"


def test_bad_arguments_are_value_errors_even_alone(environ: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        collectives.all_reduce(torch.ones(1), "median")
    with pytest.raises(ValueError, match="floating-point"):
        collectives.all_reduce(torch.ones(1, dtype=torch.int64), "mean")
    with pytest.raises(ValueError, match="outside a world of one"):
        collectives.broadcast(torch.ones(1), src=1)


def test_the_rank_environment_comes_from_the_contract(environ: pytest.MonkeyPatch) -> None:
    place = RankEnv(
        rank=5,
        local_rank=1,
        world_size=8,
        local_world_size=4,
        node_rank=1,
        num_nodes=2,
        master_addr="10.0.0.1",
        master_port=29500,
    )
    for name, value in place.torch_env().items():
        environ.setenv(name, value)
    env.refresh()
    assert env.launched()
    assert (collectives.rank(), collectives.world_size()) == (5, 8)
    assert (collectives.local_rank(), collectives.local_world_size()) == (1, 4)
    assert collectives.node_rank() == 1 and not collectives.is_primary()


def test_mpirun_variables_are_read_too(environ: pytest.MonkeyPatch) -> None:
    environ.setenv(contract.OMPI_RANK, "3")
    environ.setenv(contract.OMPI_SIZE, "4")
    environ.setenv(contract.OMPI_LOCAL_RANK, "1")
    environ.setenv(contract.OMPI_LOCAL_SIZE, "2")
    env.refresh()
    assert (collectives.rank(), collectives.local_rank(), collectives.node_rank()) == (3, 1, 1)
    # Launched by mpirun without MASTER_PORT: init must say what is missing.
    with pytest.raises(collectives.CollectiveError, match="MASTER_PORT") as info:
        collectives.init(timeout=5)
    assert info.value.op == "init"


def test_a_larger_world_without_init_refuses_to_pretend(environ: pytest.MonkeyPatch) -> None:
    environ.setenv(contract.RANK, "1")
    environ.setenv(contract.WORLD_SIZE, "2")
    env.refresh()
    with pytest.raises(collectives.CollectiveError, match=r"rank 1 of 2: call collectives.init"):
        collectives.all_reduce(torch.ones(1))


def test_a_malformed_variable_fails_loudly(environ: pytest.MonkeyPatch) -> None:
    environ.setenv(contract.RANK, "one")
    environ.setenv(contract.WORLD_SIZE, "2")
    with pytest.raises(contract.ContractError, match="RANK"):
        env.refresh()


def test_launched_world_of_one_gets_a_real_gloo_group(environ: pytest.MonkeyPatch) -> None:
    environ.setenv(contract.RANK, "0")
    environ.setenv(contract.WORLD_SIZE, "1")
    env.refresh()
    rank_env = collectives.init(timeout=10)
    assert rank_env.world_size == 1 and dist.is_initialized()
    assert dist.get_backend() == "gloo"  # no CUDA here
    assert collectives.init() is rank_env  # idempotent
    with pytest.raises(ValueError, match="already initialised with 'gloo'"):
        collectives.init("nccl")
    t = torch.tensor([3.0])
    assert collectives.all_reduce(t, "mean").item() == 3.0
    assert collectives.all_gather(t)[0].item() == 3.0
    collectives.barrier()
    collectives.shutdown()
    assert not dist.is_initialized()
    collectives.shutdown()


def test_a_group_the_script_made_itself_is_adopted_and_kept(
    environ: pytest.MonkeyPatch,
) -> None:
    store = dist.HashStore()  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    collectives.init()
    active = group.active()
    assert active is not None and active.backend == "gloo" and not active.owns_group
    collectives.shutdown()
    assert dist.is_initialized()  # not ours to destroy


@pytest.mark.parametrize(
    ("requested", "launcher_backend", "cuda", "nccl", "chosen"),
    [
        ("auto", "torch", 0, True, "gloo"),
        ("auto", "torch", 2, True, "nccl"),
        ("auto", "torch", 2, False, "gloo"),
        ("auto", "mpi", 8, True, "nccl"),
        ("auto", "horovod", 8, True, "horovod"),
        ("gloo", "horovod", 8, True, "gloo"),
        ("horovod", "torch", 0, False, "horovod"),
    ],
)
def test_choose_backend(
    requested: str, launcher_backend: str, cuda: int, nccl: bool, chosen: str
) -> None:
    place = RankEnv(
        rank=0,
        local_rank=0,
        world_size=2,
        local_world_size=2,
        node_rank=0,
        num_nodes=1,
        master_addr="x",
        master_port=1,
        backend=launcher_backend,
    )
    assert group.choose_backend(requested, place, cuda, nccl) == chosen


def test_local_engine_is_what_runs_before_init(environ: pytest.MonkeyPatch) -> None:
    assert isinstance(group.engine(), LocalEngine)


def _modules() -> list[Path]:
    return sorted((Path(collectives.__file__).parent).glob("*.py"))


def test_collectives_reads_the_rank_environment_only_through_the_contract() -> None:
    """No module imports another launcher module or spells a contract variable itself."""
    names = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)}
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("launcher"):
                assert node.module in ("launcher", "launcher.contract"), (path, node.module)
                if node.module == "launcher":
                    assert [a.name for a in node.names] == ["contract"], path
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert (
                        not alias.name.startswith("launcher") or alias.name == "launcher.contract"
                    )
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name} spells {node.value!r}"
