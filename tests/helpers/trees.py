"""`/opt/ml`-shaped SageMaker trees for tests and benchmarks.

What SageMaker lays out before it runs `train` (reference/sagemaker-contract.md):
`input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`, one `input/data/<channel>/`
per channel, `output/data/`, `model/`, and the user's code in `code/`.

* `write_tree(base, host, hosts, hps, program)`: a whole tree for one host, the program in
  `code/` and named by `sagemaker_program`.
* `write_trees(root, hosts, hps, program)`: one such tree per host, at `root/<host>`.
* `write_config(base, ...)`: only the three files (written as given) and the folders they imply;
  for suites that put the code somewhere else themselves (tests/oracle/trees.py).

Hyperparameter values are written to the file as they are given. SageMaker writes every value
as a JSON string (`"epochs": "10"`, `"name": "\\"resnet\\""`); `encode_hps` turns plain values
into that form. Files are UTF-8 with non-ASCII characters kept as they are, so a tree can test
how a launcher decodes them. Nothing here deletes anything: `base` must not hold a tree yet
(the config folder is created with `parents=True`, not `exist_ok`), so two builders writing the
same tree fail loudly instead of mixing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

# The channel most single-host tests use, as SageMaker describes a File-mode channel.
TRAIN_CHANNEL: Mapping[str, Mapping[str, object]] = {"train": {"TrainingInputMode": "File"}}
GROUP = "homogeneousCluster"
INSTANCE_TYPE = "ml.c5.xlarge"


def encode_hps(values: Mapping[str, object]) -> dict[str, str]:
    """Each value JSON-encoded, as the SageMaker SDK writes hyperparameters.json."""
    return {key: json.dumps(value) for key, value in values.items()}


def cluster_resources(hosts: Sequence[str], *, instance_groups: bool = True) -> dict[str, object]:
    """resourceconfig.json keys (beyond `current_host` and `hosts`) of a homogeneous CPU cluster
    whose hosts talk over eth0, as the simulated hosts of tests/multihost do.

    With `instance_groups`, the hosts also form SageMaker's one instance group; without it,
    every host is a distribution host only when a distribution flag or backend says so.
    """
    resources: dict[str, object] = {
        "current_group_name": GROUP,
        "current_instance_type": INSTANCE_TYPE,
        "network_interface_name": "eth0",
    }
    if instance_groups:
        group = {"instance_group_name": GROUP, "instance_type": INSTANCE_TYPE}
        resources["instance_groups"] = [{**group, "hosts": list(hosts)}]
    return resources


def write_config(
    base: Path,
    *,
    hyperparameters: Mapping[str, object],
    resourceconfig: Mapping[str, object],
    inputdataconfig: Mapping[str, object],
) -> Path:
    """Write the three config files at `base/input/config` exactly as given, and create the
    folders SageMaker creates with them: one per channel, `output/data` and `model`.

    Returns `base`. Raises FileExistsError when `base/input/config` already exists.
    """
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for name, content in (
        ("hyperparameters.json", hyperparameters),
        ("resourceconfig.json", resourceconfig),
        ("inputdataconfig.json", inputdataconfig),
    ):
        text = json.dumps(content, ensure_ascii=False, indent=1)
        (config / name).write_text(text, encoding="utf-8")
    for channel in inputdataconfig:
        (base / "input" / "data" / channel).mkdir(parents=True, exist_ok=True)
    (base / "output" / "data").mkdir(parents=True, exist_ok=True)
    (base / "model").mkdir(exist_ok=True)
    return base


def write_tree(
    base: Path,
    host: str,
    hosts: Sequence[str],
    hps: Mapping[str, object],
    program: str | Path,
    *,
    entry: str = "train.py",
    channels: Mapping[str, Mapping[str, object]] | None = None,
    resources: Mapping[str, object] | None = None,
) -> Path:
    """The tree of `host` in a job of `hosts`, at `base` (the SAGEMAKER_BASE_DIR); returns `base`.

    `program` is the entry point's text, or a file to copy (mode bits included) to
    `code/<entry>`; `sagemaker_program` names `entry` unless `hps` (written as given, see
    `encode_hps`) sets it. `channels` is inputdataconfig.json (none by default: `input/data`
    alone); `resources` adds keys to resourceconfig.json (`cluster_resources`).
    """
    write_config(
        base,
        hyperparameters={"sagemaker_program": json.dumps(entry), **hps},
        resourceconfig={"current_host": host, "hosts": list(hosts), **(resources or {})},
        inputdataconfig=dict(channels or {}),
    )
    (base / "input" / "data").mkdir(exist_ok=True)
    target = base / "code" / entry
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(program, Path):
        shutil.copy(program, target)
    else:
        target.write_text(program)
    return base


def write_trees(
    root: Path,
    hosts: Sequence[str],
    hps: Mapping[str, object],
    program: str | Path,
    *,
    entry: str = "train.py",
    resources: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """One `write_tree` per host of a job, at `root/<host>`: host name -> its tree."""
    return {
        host: write_tree(root / host, host, hosts, hps, program, entry=entry, resources=resources)
        for host in hosts
    }
