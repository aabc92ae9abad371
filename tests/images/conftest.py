"""Fixtures of the image tier: the engine, the built images, a cleaning scope per test, and the
2-host torch job whose model the inference test serves.

Every test here is marked `images` and is skipped, with the reason shown, where no container
engine can run or the images are not built (`make images`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch, no_leaks
from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.images.engine import CPU_IMAGE, SERVE_IMAGE, Engine, Scope, find_engine

__all__ = ["no_leaks"]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
HOSTS = ("algo-1", "algo-2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.images)


@pytest.fixture(scope="session")
def engine() -> Engine:
    found = find_engine()
    if isinstance(found, str):
        pytest.skip(found)
    missing = [i for i in (CPU_IMAGE, SERVE_IMAGE) if not found.has_image(i)]
    if missing:
        pytest.skip(f"images not built: {missing} (run `make images`)")
    return found


@pytest.fixture
def scope(engine: Engine, no_leaks: LeakWatch) -> Iterator[Scope]:
    """A test's containers and networks, removed and checked at its end (then no_leaks runs)."""
    s = Scope(engine)
    yield s
    s.close()


def job_trees(
    root: Path, hps: dict[str, object], program: Path = ROOT / "examples" / "train_regression.py"
) -> dict[str, Path]:
    """One /opt/ml tree per host of the 2-host job, each with `program` (by default the
    example training job) and the example's serving hooks."""
    trees = {}
    for host in HOSTS:
        tree = write_tree(
            root / host,
            host,
            HOSTS,
            encode_hps(hps),
            program,
            entry=program.name,
            resources=cluster_resources(HOSTS),
        )
        (tree / "code" / "inference.py").write_bytes(
            (ROOT / "examples" / "inference.py").read_bytes()
        )
        trees[host] = tree
    return trees


@dataclass(frozen=True)
class JobRun:
    """A job run as one container per host: each host's exit code, log and tree."""

    codes: dict[str, int]
    logs: dict[str, str]
    trees: dict[str, Path]
    wall_s: float


def run_two_hosts(
    scope: Scope, trees: dict[str, Path], env: Mapping[str, str] | None = None, timeout: float = 240
) -> JobRun:
    """Start one CPU-image container per host on one new network, `train` in each (with `env`
    added to the image's environment), and wait for both."""
    network = scope.network()
    env_options = [f"--env={key}={value}" for key, value in (env or {}).items()]
    names = {}
    start = time.monotonic()
    for host, tree in trees.items():
        names[host] = scope.start(
            CPU_IMAGE,
            ["train"],
            f"--hostname={host}",
            f"--network={network}",
            f"--network-alias={host}",
            "--shm-size=256m",
            f"--volume={tree}:/opt/ml",
            *env_options,
            name=scope.name(host),
        )
    scope.engine.run("wait", *names.values(), timeout=timeout)
    wall = time.monotonic() - start
    codes = {host: scope.engine.exit_code(name) for host, name in names.items()}
    logs = {host: scope.engine.logs(name) for host, name in names.items()}
    return JobRun(codes, logs, trees, wall)


@pytest.fixture(scope="session")
def torch_job(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRun]:
    """The example job on two hosts with the torch backend; the inference test serves its model."""
    s = Scope(engine)
    hps: dict[str, object] = {"sagemaker_torch_distributed_enabled": True, "epochs": 2}
    try:
        yield run_two_hosts(s, job_trees(tmp_path_factory.mktemp("torch-job"), hps))
    finally:
        s.close()
