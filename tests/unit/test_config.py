"""config.load: hyperparameter decoding, defaults, precedence, distribution hosts, errors.

Pure and fast: every test writes a small tree under tmp_path and reads it back. The expected
values come from sagemaker-contract.md (§3.1 decoding, §3.2 defaults, §4 precedence, §10.4
master election); tests/oracle/ checks the same facts against the real toolkit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from launcher import config
from launcher.errors import EXIT_USAGE, ConfigError

ONE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"]}


def tree(
    base: Path,
    hps: dict[str, Any] | None = None,
    res: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Path:
    cfg = base / "input" / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "hyperparameters.json").write_text(json.dumps(hps or {}))
    (cfg / "resourceconfig.json").write_text(json.dumps(res or ONE_HOST))
    (cfg / "inputdataconfig.json").write_text(json.dumps(data if data is not None else {}))
    return base


def load(base: Path, **environ: str) -> config.JobConfig:
    return config.load(base, environ)


# --- §3.1 hyperparameter decoding ---------------------------------------------------------

DECODING = [
    ("10", 10),
    ("0.01", 0.01),
    ("1e-5", 1e-05),
    ("1e3", 1000.0),
    ("true", True),
    ("false", False),
    ("null", None),
    ("[1, 2, 3]", [1, 2, 3]),
    ('{"a": 1}', {"a": 1}),
    ('"abc"', "abc"),
    ('"10"', "10"),
    ("01", "01"),  # not JSON: kept raw
    ("not-json $HOME", "not-json $HOME"),
    ("True", "True"),
    ("", ""),
    (" 7 ", 7),  # JSON allows surrounding whitespace
    ("Infinity", math.inf),
    (10, 10),  # not a string in the file: the toolkit's TypeError keeps it
    (True, True),
    (None, None),
    ([1, "a"], [1, "a"]),
]


@pytest.mark.parametrize(("raw", "decoded"), DECODING, ids=[repr(r) for r, _ in DECODING])
def test_hyperparameter_decoding(raw: Any, decoded: Any) -> None:
    value = config.decode_hyperparameter(raw)
    assert value == decoded
    assert type(value) is type(decoded)


def test_nan_decodes_like_python_json() -> None:
    assert math.isnan(config.decode_hyperparameter("NaN"))


def test_hyperparameters_split_into_user_sagemaker_and_framework(tmp_path: Path) -> None:
    hps = {
        "epochs": "3",
        "sagemaker_program": '"train.py"',
        "sagemaker_mpi_enabled": "false",
        "sagemaker_custom": '{"a": 1}',
        "default_user_module_name": '"m"',
        "_tuning_objective_metric": '"loss"',
        "sagemaker_s3_output": '"s3://b/p"',
    }
    job = load(tree(tmp_path, hps))
    assert dict(job.hyperparameters.user) == {"epochs": 3}
    assert set(job.hyperparameters.sagemaker) == set(hps) - {"epochs"}
    assert job.hyperparameters.framework_params == {
        "sagemaker_mpi_enabled": False,
        "sagemaker_custom": {"a": 1},
    }
    assert not job.hyperparameters.flag("sagemaker_mpi_enabled")  # "false" is off


# --- §3.2 defaults, §4 precedence ---------------------------------------------------------


def test_defaults_of_a_minimal_tree(tmp_path: Path) -> None:
    job = load(tree(tmp_path, {"sagemaker_program": '"train.py"'}))
    res = job.resources
    assert (res.current_group_name, res.current_instance_type, res.network_interface_name) == (
        "homogeneousCluster",
        "local",
        "eth0",
    )
    assert res.instance_groups == () and res.topology == ()
    assert job.log_level == 20
    assert job.submit_dir == str(tmp_path / "code")
    assert job.framework_module is None and job.training_job_name is None
    assert (job.sagemaker_job_name, job.region) == ("", "")
    assert job.channels == ()


def test_sagemaker_program_env_beats_hyperparameter(tmp_path: Path) -> None:
    base = tree(tmp_path, {"sagemaker_program": '"decoy.py"'})
    assert load(base).entry_point == "decoy.py"
    assert load(base, SAGEMAKER_PROGRAM="real.py").entry_point == "real.py"


def test_submit_directory_and_log_level_env_are_ignored(tmp_path: Path) -> None:
    job = load(
        tree(tmp_path, {"sagemaker_program": '"t.py"'}),
        SAGEMAKER_SUBMIT_DIRECTORY="/elsewhere",
        SAGEMAKER_CONTAINER_LOG_LEVEL="10",
    )
    assert job.submit_dir == str(tmp_path / "code")
    assert job.log_level == 20


def test_region_from_hyperparameter_then_aws_default_region_only(tmp_path: Path) -> None:
    base = tree(tmp_path, {})
    # boto3, which the toolkit asks, reads AWS_DEFAULT_REGION and ignores AWS_REGION.
    assert load(base, AWS_REGION="eu-west-1").region == ""
    assert load(base, AWS_REGION="eu-west-1", AWS_DEFAULT_REGION="ap-south-1").region == (
        "ap-south-1"
    )
    base = tree(tmp_path, {"sagemaker_region": '"us-west-2"'})
    assert load(base, AWS_DEFAULT_REGION="ap-south-1").region == "us-west-2"


def test_environment_values_are_read_from_the_argument_only(tmp_path: Path) -> None:
    job = load(
        tree(tmp_path, {"sagemaker_job_name": '"sm-job"'}),
        TRAINING_JOB_NAME="tj",
        SAGEMAKER_TRAINING_MODULE="pkg.mod:main",
    )
    assert (job.training_job_name, job.sagemaker_job_name) == ("tj", "sm-job")
    assert job.framework_module == "pkg.mod:main"


def test_load_writes_nothing(tmp_path: Path) -> None:
    """Unlike the toolkit's import (contract §2.1, D9), reading never creates code/."""
    base = tree(tmp_path, {"sagemaker_program": '"t.py"'})
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    load(base)
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_channels_are_sorted_and_file_is_kept(tmp_path: Path) -> None:
    data = {"train": {"TrainingInputMode": "File"}, "Eval": {}, "train-data": {}}
    job = load(tree(tmp_path, {}, data=data))
    assert job.channels == ("Eval", "train", "train-data")
    assert dict(job.input_data_config) == data
    assert job.paths.channel_dir("train-data") == tmp_path / "input" / "data" / "train-data"


# --- §10.4 distribution groups, hosts and master election ---------------------------------

HETERO = {
    "hosts": ["algo-1", "algo-2", "algo-3"],
    "instance_groups": [
        {"instance_group_name": "data", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
        {
            "instance_group_name": "train",
            "instance_type": "ml.p4d.24xlarge",
            "hosts": ["algo-3", "algo-2"],
        },
    ],
}
HETERO_HPS = {
    "sagemaker_distribution_instance_groups": '["train"]',
    "sagemaker_torch_distributed_enabled": "true",
}


@pytest.mark.parametrize(
    ("current", "group", "is_master", "in_distribution"),
    [
        ("algo-1", "data", False, False),
        ("algo-3", "train", True, True),
        ("algo-2", "train", False, True),
    ],
)
def test_heterogeneous_example_of_contract_10_4(
    tmp_path: Path, current: str, group: str, is_master: bool, in_distribution: bool
) -> None:
    res = {**HETERO, "current_host": current, "current_group_name": group}
    job = load(tree(tmp_path, HETERO_HPS, res))
    assert job.distribution_instance_groups == ("train",)
    assert job.distribution_hosts == ("algo-3", "algo-2")  # group order, not sorted
    assert job.master_host == "algo-3"
    assert (job.is_master, job.in_distribution) == (is_master, in_distribution)


def test_flag_without_instance_groups_distributes_over_hosts_in_given_order(tmp_path: Path) -> None:
    res = {"current_host": "algo-2", "hosts": ["algo-10", "algo-2", "algo-1"]}
    job = load(tree(tmp_path, {"sagemaker_pytorch_ddp_enabled": "true"}, res))
    assert job.distribution_instance_groups == ("homogeneousCluster",)
    assert job.distribution_hosts == ("algo-10", "algo-2", "algo-1")
    assert job.master_host == "algo-10" and not job.is_master


def test_instance_group_order_decides_the_master(tmp_path: Path) -> None:
    """Observed under torchrun: instance_groups[0].hosts = [algo-2, algo-1] made algo-2 node 0."""
    res = {
        "current_host": "algo-1",
        "hosts": ["algo-1", "algo-2"],
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "hosts": ["algo-2", "algo-1"]}
        ],
    }
    job = load(tree(tmp_path, {"sagemaker_torch_distributed_enabled": "true"}, res))
    assert job.distribution_hosts == ("algo-2", "algo-1")
    assert job.master_host == "algo-2"


def test_instance_groups_without_a_flag_mean_no_distribution_hosts(tmp_path: Path) -> None:
    res = {**HETERO, "current_host": "algo-2", "current_group_name": "train"}
    job = load(tree(tmp_path, {}, res))
    assert job.distribution_instance_groups == () and job.distribution_hosts == ()
    assert job.master_host == "algo-1"  # falls back to hosts[0]
    assert not job.in_distribution


def test_an_explicit_backend_distributes_the_current_group(tmp_path: Path) -> None:
    # DESIGN.md decision 5: --backend / LAUNCHER_BACKEND count as a distribution flag.
    res = {**HETERO, "current_host": "algo-2", "current_group_name": "train"}
    job = config.distributed(load(tree(tmp_path, {}, res)))
    assert job.distribution_instance_groups == ("train",)
    assert job.in_distribution
    assert job.master_host == job.distribution_hosts[0] != "algo-1"


def test_a_false_flag_does_not_distribute(tmp_path: Path) -> None:
    job = load(tree(tmp_path, {"sagemaker_mpi_enabled": "false"}))
    assert job.distribution_instance_groups == ()
    assert job.distribution_hosts == ("algo-1",)  # no instance_groups: a copy of hosts


# --- errors name the file and the key -----------------------------------------------------


@pytest.mark.parametrize(
    ("hps", "res", "file", "key"),
    [
        ({"a=b": "1"}, ONE_HOST, "hyperparameters.json", "a=b"),
        ({"x": '"a\\u0000b"'}, ONE_HOST, "hyperparameters.json", "x"),
        (
            {"sagemaker_container_log_level": "true"},
            ONE_HOST,
            "hyperparameters.json",
            "sagemaker_container_log_level",
        ),
        ({"sagemaker_job_name": "5"}, ONE_HOST, "hyperparameters.json", "sagemaker_job_name"),
        (
            {},
            {"current_host": "algo-2", "hosts": ["algo-1"]},
            "resourceconfig.json",
            "current_host",
        ),
        (
            {},
            {"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]},
            "resourceconfig.json",
            "hosts",
        ),
        (
            {},
            {"current_host": "algo-1", "hosts": ["algo-1", "a\u0000"]},
            "resourceconfig.json",
            "hosts",
        ),
        (
            {},
            {**ONE_HOST, "network_interface_name": ""},
            "resourceconfig.json",
            "network_interface_name",
        ),
        (
            {},
            {**ONE_HOST, "instance_groups": [{"instance_group_name": 1, "hosts": ["algo-1"]}]},
            "resourceconfig.json",
            "instance_groups[0].instance_group_name",
        ),
    ],
)
def test_errors_name_file_and_key(
    tmp_path: Path, hps: dict[str, Any], res: dict[str, Any], file: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tree(tmp_path, hps, res))
    assert info.value.path == str(tmp_path / "input" / "config" / file)
    assert info.value.key == key
    assert info.value.exit_code == EXIT_USAGE
    assert "\n" not in str(info.value)


def test_a_file_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    base = tree(tmp_path, {})
    path = base / "input" / "config" / "hyperparameters.json"
    path.write_text('{"a": "' + "x" * config.MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ConfigError, match="limit") as info:
        load(base)
    assert info.value.key is None


def test_duplicate_keys_are_refused_even_nested(tmp_path: Path) -> None:
    base = tree(tmp_path, {})
    (base / "input" / "config" / "inputdataconfig.json").write_text(
        '{"train": {"ContentType": "a", "ContentType": "b"}}'
    )
    with pytest.raises(ConfigError, match="appears twice") as info:
        load(base)
    assert info.value.key == "ContentType"


def test_a_json_escape_inside_a_value_is_not_a_duplicate_check(tmp_path: Path) -> None:
    """Values are decoded like the toolkit (last key wins inside a value), files are strict."""
    job = load(tree(tmp_path, {"opts": '{"a": 1, "a": 2}'}))
    assert job.hyperparameters.user["opts"] == {"a": 2}


def test_aws_config_file_is_not_read(tmp_path: Path) -> None:
    """boto3 would also read the region from ~/.aws/config; we read the environment only."""
    (tmp_path / "home" / ".aws").mkdir(parents=True)
    (tmp_path / "home" / ".aws" / "config").write_text("[default]\nregion = eu-north-1\n")
    job = load(tree(tmp_path / "base", {}), HOME=str(tmp_path / "home"))
    assert job.region == ""


def test_an_empty_submit_directory_means_the_code_directory(tmp_path: Path) -> None:
    """The toolkit would try to open "" as an archive and fail; we use code/."""
    job = load(tree(tmp_path, {"sagemaker_submit_directory": '""'}))
    assert job.submit_dir == str(tmp_path / "code")
