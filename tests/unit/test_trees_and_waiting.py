"""The shared test helpers: trees the launcher reads as SageMaker's, and waits that say why.

tests/helpers/trees.py builds every `/opt/ml` tree of the suites and benchmarks, so its trees
are checked here against the launcher's own reader (`config.load`); tests/helpers/waiting.py
is checked for what a failing test prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.sagemaker import config
from tests.helpers.trees import (
    TRAIN_CHANNEL,
    cluster_resources,
    encode_hps,
    write_config,
    write_tree,
    write_trees,
)
from tests.helpers.waiting import WaitTimeout, poll_until, wait_for


def test_a_one_host_tree_reads_as_sagemaker_writes_it(tmp_path: Path) -> None:
    hps = {**encode_hps({"epochs": 3, "name": "resnet 50"}), "flag": "true"}
    base = write_tree(
        tmp_path / "ml", "algo-1", ["algo-1"], hps, "print(1)\n", channels=TRAIN_CHANNEL
    )
    job = config.load(base, {})
    assert job.entry_point == "train.py"
    assert (base / "code" / "train.py").read_text() == "print(1)\n"
    assert dict(job.hyperparameters.user) == {"epochs": 3, "name": "resnet 50", "flag": True}
    assert (job.resources.current_host, job.resources.hosts) == ("algo-1", ("algo-1",))
    assert job.channels == ("train",)
    for folder in ("input/data/train", "output/data", "model"):
        assert (base / folder).is_dir(), folder


def test_cluster_trees_name_the_group_the_interface_and_a_copied_program(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("pass\n")
    program.chmod(0o755)
    hosts = ["algo-1", "algo-2"]
    trees = write_trees(
        tmp_path / "trees",
        hosts,
        {"sagemaker_torch_distributed_enabled": "true"},
        program,
        entry="prog.py",
        resources=cluster_resources(hosts),
    )
    assert list(trees) == hosts
    for host, base in trees.items():
        job = config.load(base, {})
        assert base == tmp_path / "trees" / host
        assert (job.resources.current_host, job.entry_point) == (host, "prog.py")
        assert job.resources.network_interface_name == "eth0"
        assert [g.hosts for g in job.resources.instance_groups] == [("algo-1", "algo-2")]
        assert job.master_host == "algo-1"
        assert (base / "code" / "prog.py").stat().st_mode & 0o777 == 0o755
    no_groups = cluster_resources(hosts, instance_groups=False)
    assert "instance_groups" not in no_groups and no_groups["network_interface_name"] == "eth0"


def test_hyperparameters_override_the_entry_point_and_non_ascii_stays_as_written(
    tmp_path: Path,
) -> None:
    hps = {"sagemaker_program": json.dumps("other.py"), "größe": '"naïve"'}
    base = write_tree(tmp_path / "ml", "algo-1", ["algo-1"], hps, "")
    text = (base / "input" / "config" / "hyperparameters.json").read_text(encoding="utf-8")
    assert '"größe": "\\"naïve\\""' in text  # not \\u escapes: the tree tests decoding
    assert config.load(base, {}).entry_point == "other.py"


def test_a_tree_is_never_written_over_another(tmp_path: Path) -> None:
    base = write_config(tmp_path / "ml", hyperparameters={}, resourceconfig={}, inputdataconfig={})
    with pytest.raises(FileExistsError):
        write_tree(base, "algo-1", ["algo-1"], {}, "")


def test_wait_for_returns_the_time_it_took_once_the_condition_holds() -> None:
    calls = iter([False, False, True])
    took = wait_for(lambda: next(calls), 5, "the third call", poll_s=0.001)
    assert 0 <= took < 5


def test_wait_for_names_what_it_waited_for_and_adds_the_description() -> None:
    with pytest.raises(WaitTimeout, match=r"^timed out after 0.05 s waiting for the flag\nlog: x$"):
        wait_for(lambda: False, 0.05, "the flag", describe=lambda: "log: x")


def test_wait_for_stops_at_once_with_the_reason_stop_if_gives() -> None:
    reasons = iter([None, "launcher exited (1)"])
    with pytest.raises(WaitTimeout, match=r"^launcher exited \(1\) before the ranks$"):
        wait_for(lambda: False, 60, "the ranks", stop_if=lambda: next(reasons), poll_s=0.001)


def test_poll_until_tries_once_more_at_the_deadline() -> None:
    """A condition that turns true during the last sleep is not reported as a timeout."""
    calls = iter([False, True])
    assert poll_until(lambda: next(calls), 0.0)
    assert not poll_until(lambda: False, 0.01)
    assert not poll_until(lambda: False, 60, stop_if=lambda: True)
