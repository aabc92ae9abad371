"""smenv: the SM_* encodings (contract §5.1), the variables of §5.2/§5.3 and argv (§6).

Pure: each test loads a small tree with config.load and checks the values the contract
gives for it. tests/oracle/ runs the real toolkit on the same shapes of tree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import ConfigError
from launcher.sagemaker import config, smenv
from tests.oracle.trees import WORKED_ARGV, WORKED_EXAMPLE, WORKED_SM_HP

P4D = "ml.p4d.24xlarge"
EXAMPLE_RES = {
    "current_host": "algo-1",
    "hosts": ["algo-1", "algo-2"],
    "current_group_name": "homogeneousCluster",
    "current_instance_type": P4D,
    "instance_groups": [
        {
            "instance_group_name": "homogeneousCluster",
            "instance_type": P4D,
            "hosts": ["algo-1", "algo-2"],
        }
    ],
    "network_interface_name": "eth0",
}
EXAMPLE_DATA = {
    "train": {
        "ContentType": "application/x-npy",
        "TrainingInputMode": "File",
        "S3DistributionType": "FullyReplicated",
        "RecordWrapperType": "None",
    }
}
EXAMPLE_HPS = {
    "epochs": "3",
    "flag": "true",
    "lr": "0.01",
    "model-name": '"resnet"',
    "nested": '{"a": 1}',
    "sagemaker_program": '"train_script.py"',
}


def job_for(
    base: Path,
    hps: dict[str, Any],
    res: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> config.JobConfig:
    cfg = base / "input" / "config"
    cfg.mkdir(parents=True)
    (cfg / "hyperparameters.json").write_text(json.dumps(hps))
    (cfg / "resourceconfig.json").write_text(json.dumps(res or EXAMPLE_RES))
    (cfg / "inputdataconfig.json").write_text(json.dumps(EXAMPLE_DATA if data is None else data))
    return config.load(base, environ or {})


def env_for(job: config.JobConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    return smenv.sm_environment(job, num_gpus=0, num_cpus=2, environ=environ or {})


# --- §5.1 encodings -----------------------------------------------------------------------

ENCODINGS = [
    ("text with $HOME; and 'quotes'", "text with $HOME; and 'quotes'"),
    ("héllo", "héllo"),  # a str passes unchanged, non-ASCII included
    (None, ""),
    (b"caf\xe9", "café"),  # bytes are Latin-1
    (True, "true"),
    (False, "false"),
    (10, "10"),
    (1e-05, "1e-05"),
    (1000.0, "1000.0"),
    ([1, 2, 3], "[1,2,3]"),
    ({"b": 2, "a": [1, None]}, '{"a":[1,null],"b":2}'),
    (["é"], '["\\u00e9"]'),  # non-ASCII escaped inside JSON
    ({}, "{}"),
    (math.nan, "NaN"),
]


@pytest.mark.parametrize(("value", "encoded"), ENCODINGS, ids=[repr(v) for v, _ in ENCODINGS])
def test_encode_value(value: Any, encoded: str) -> None:
    assert smenv.encode_value(value) == encoded


# --- §6 argv ------------------------------------------------------------------------------


def test_worked_example_of_contract_6(tmp_path: Path) -> None:
    job = job_for(tmp_path, WORKED_EXAMPLE)
    assert smenv.user_args(job.hyperparameters.user) == WORKED_ARGV
    env = env_for(job)
    assert {k: v for k, v in env.items() if k.startswith("SM_HP_")} == WORKED_SM_HP
    assert json.loads(env["SM_USER_ARGS"]) == WORKED_ARGV
    assert env["SM_FRAMEWORK_PARAMS"] == '{"sagemaker_mpi_enabled":false}'


def test_upstream_round_trip_oracle() -> None:
    """test_mapping.py::test_env_vars_round_trip: SM_USER_ARGS joined with spaces."""
    hps = {"batch_size": 64, "epochs": 10, "loss": "SGD", "precision": 5.434322}
    assert (
        " ".join(smenv.user_args(hps))
        == "--batch_size 64 --epochs 10 --loss SGD --precision 5.434322"
    )


@pytest.mark.parametrize(
    ("hps", "argv"),
    [
        ({"b": 1, "B": 2, "a": 3}, ["-B", "2", "-a", "3", "-b", "1"]),  # upper case sorts first
        ({"ab": None}, ["--ab", ""]),  # exactly one value element, even empty
        ({"d": {}}, ["-d", ""]),
        ({"d": {"z": True, "a": None}}, ["-d", "a=None,z=True"]),
        ({"l": ["é", None]}, ["-l", "['é', None]"]),
        ({"learning-rate": 0.1, "x_y": "v"}, ["--learning-rate", "0.1", "--x_y", "v"]),
        ({"größe": 1}, ["--größe", "1"]),
    ],
)
def test_user_args_rules(hps: dict[str, Any], argv: list[str]) -> None:
    assert smenv.user_args(hps) == argv


# --- §5.2 variables -----------------------------------------------------------------------


def test_contract_5_2_example(tmp_path: Path) -> None:
    job = job_for(tmp_path, EXAMPLE_HPS)
    env = env_for(job)
    b = str(tmp_path)
    expected = {
        "SM_HOSTS": '["algo-1","algo-2"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_CURRENT_INSTANCE_TYPE": P4D,
        "SM_CURRENT_INSTANCE_GROUP": "homogeneousCluster",
        "SM_CURRENT_INSTANCE_GROUP_HOSTS": '["algo-1","algo-2"]',
        "SM_INSTANCE_GROUPS": '["homogeneousCluster"]',
        "SM_INSTANCE_GROUPS_DICT": '{"homogeneousCluster":{"hosts":["algo-1","algo-2"],'
        '"instance_group_name":"homogeneousCluster","instance_type":"ml.p4d.24xlarge"}}',
        "SM_DISTRIBUTION_INSTANCE_GROUPS": "[]",
        "SM_IS_HETERO": "false",
        "SM_NETWORK_INTERFACE_NAME": "eth0",
        "SM_HPS": '{"epochs":3,"flag":true,"lr":0.01,"model-name":"resnet","nested":{"a":1}}',
        "SM_HP_EPOCHS": "3",
        "SM_HP_FLAG": "true",
        "SM_HP_LR": "0.01",
        "SM_HP_MODEL-NAME": "resnet",
        "SM_HP_NESTED": '{"a":1}',
        "SM_USER_ARGS": '["--epochs","3","--flag","True","--lr","0.01","--model-name","resnet",'
        '"--nested","a=1"]',
        "SM_USER_ENTRY_POINT": "train_script.py",
        "SM_MODULE_NAME": "train_script",
        "SM_MODULE_DIR": f"{b}/code",
        "SM_FRAMEWORK_PARAMS": "{}",
        "SM_FRAMEWORK_MODULE": "",
        "SM_LOG_LEVEL": "20",
        "SM_RESOURCE_CONFIG": json.dumps(EXAMPLE_RES, sort_keys=True, separators=(",", ":")),
        "SM_INPUT_DATA_CONFIG": '{"train":{"ContentType":"application/x-npy","RecordWrapperType"'
        ':"None","S3DistributionType":"FullyReplicated","TrainingInputMode":"File"}}',
        "SM_CHANNELS": '["train"]',
        "SM_CHANNEL_TRAIN": f"{b}/input/data/train",
        "SM_MODEL_DIR": f"{b}/model",
        "SM_OUTPUT_DIR": f"{b}/output",
        "SM_OUTPUT_DATA_DIR": f"{b}/output/data",
        "SM_OUTPUT_INTERMEDIATE_DIR": f"{b}/output/intermediate",
        "SM_INPUT_DIR": f"{b}/input",
        "SM_INPUT_CONFIG_DIR": f"{b}/input/config",
        "SM_NUM_GPUS": "0",
        "SM_NUM_CPUS": "2",
        "SM_NUM_NEURONS": "0",
        "CURRENT_HOST": "algo-1",
        "SAGEMAKER_JOB_NAME": "",
        "SAGEMAKER_REGION": "",
    }
    training_env = json.loads(env.pop("SM_TRAINING_ENV"))
    assert env == expected  # SM_TOPOLOGY absent: the topology is empty
    assert len(training_env) == 37
    assert training_env["distribution_hosts"] == []  # groups present, no distribution group
    assert training_env["master_hostname"] == "algo-1" and training_env["is_master"] is True
    assert training_env["is_modelparallel_enabled"] is None
    assert training_env["job_name"] is None and training_env["framework_module"] is None
    assert training_env["hyperparameters"] == json.loads(expected["SM_HPS"])
    assert training_env["topology"] == []


def test_training_env_text_is_compact_and_sorted(tmp_path: Path) -> None:
    env = env_for(job_for(tmp_path, EXAMPLE_HPS))
    text = env["SM_TRAINING_ENV"]
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_hyphenated_channels_topology_and_neurons(tmp_path: Path) -> None:
    topology = [{"hostName": "algo-1", "capacityUnitId": "cu"}]
    res = {**EXAMPLE_RES, "topology": topology, "current_instance_type": "ml.trn2.48xlarge"}
    env = env_for(job_for(tmp_path, {}, res, {"train-data": {}, "Eval": {}}))
    assert env["SM_CHANNEL_TRAIN-DATA"] == f"{tmp_path}/input/data/train-data"
    assert env["SM_CHANNEL_EVAL"] == f"{tmp_path}/input/data/Eval"
    assert env["SM_CHANNELS"] == '["Eval","train-data"]'
    assert env["SM_TOPOLOGY"] == '[{"capacityUnitId":"cu","hostName":"algo-1"}]'
    assert env["SM_NUM_NEURONS"] == "64"


def test_no_entry_point_gives_the_toolkits_none_strings(tmp_path: Path) -> None:
    env = env_for(job_for(tmp_path, {}))
    assert env["SM_USER_ENTRY_POINT"] == ""
    assert env["SM_MODULE_NAME"] == "None"
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["module_name"] == "None" and training_env["user_entry_point"] is None


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", ""), ("{}", False), ('{"p": 2}', True)]
)
def test_is_modelparallel_enabled(value: str | None, expected: bool | str | None) -> None:
    environ = {} if value is None else {"SM_HP_MP_PARAMETERS": value}
    assert smenv.is_modelparallel_enabled(environ) == expected


def test_case_colliding_keys_keep_file_order(tmp_path: Path) -> None:
    """`lr` and `LR` both become SM_HP_LR; the later one in the file wins, as in the toolkit."""
    env = env_for(job_for(tmp_path, {"lr": "1", "LR": "2"}))
    assert env["SM_HP_LR"] == "2"
    assert json.loads(env["SM_USER_ARGS"]) == ["--LR", "2", "--lr", "1"]


def test_hetero_example_variables(tmp_path: Path) -> None:
    res = {
        "current_host": "algo-1",
        "hosts": ["algo-1", "algo-2", "algo-3"],
        "current_group_name": "data",
        "instance_groups": [
            {"instance_group_name": "data", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
            {"instance_group_name": "train", "instance_type": P4D, "hosts": ["algo-3", "algo-2"]},
        ],
    }
    hps = {"sagemaker_distribution_instance_groups": '["train"]'}
    env = env_for(job_for(tmp_path, hps, res))
    assert env["SM_IS_HETERO"] == "true"
    assert env["SM_CURRENT_INSTANCE_GROUP_HOSTS"] == '["algo-1"]'
    assert env["SM_DISTRIBUTION_INSTANCE_GROUPS"] == '["train"]'
    assert env["SM_INSTANCE_GROUPS"] == '["data","train"]'
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["distribution_hosts"] == ["algo-3", "algo-2"]
    assert training_env["master_hostname"] == "algo-3" and training_env["is_master"] is False


# --- values at the edges: deep nesting and execve's limits -------------------------------


def _with_headroom(frames: int, call: Any) -> Any:
    """Run `call` with only about `frames` frames left before the recursion limit, as it
    would be deep inside a caller's stack."""
    import inspect
    import sys

    used = len(inspect.stack(0))
    depth = sys.getrecursionlimit() - used - frames

    def descend(n: int) -> Any:
        return call() if n <= 0 else descend(n - 1)

    return descend(depth)


@pytest.mark.parametrize("depth", [64, 65, 200, 400, 900])
@pytest.mark.parametrize("shape", ["lists", "objects"])
def test_whatever_load_accepts_encodes_even_deep_in_a_stack(
    tmp_path: Path, depth: int, shape: str
) -> None:
    """A value nesting `depth` levels, raw and JSON-encoded, in every file: either `load`
    refuses it, or every SM_* variable and argument can be built with 150 frames to spare."""
    text = "[" * depth + "]" * depth if shape == "lists" else '{"a":' * depth + "1" + "}" * depth
    cfg = tmp_path / "input" / "config"
    cfg.mkdir(parents=True)
    (cfg / "hyperparameters.json").write_text(f'{{"raw": {text}, "encoded": {json.dumps(text)}}}')
    (cfg / "resourceconfig.json").write_text(
        f'{{"current_host": "a", "hosts": ["a"], "topology": [{text}]}}'
    )
    (cfg / "inputdataconfig.json").write_text(f'{{"train": {{"x": {text}}}}}')
    try:
        job = config.load(tmp_path, {})
    except ConfigError as e:
        assert "nests too deeply" in str(e)
        return
    env = _with_headroom(
        150, lambda: smenv.sm_environment(job, num_gpus=8, num_cpus=96, environ={})
    )
    assert json.loads(env["SM_TRAINING_ENV"])["hyperparameters"]["raw"] == json.loads(text)
    _with_headroom(150, lambda: smenv.user_args(job.hyperparameters.user))


def test_exec_bytes_counts_what_execve_counts() -> None:
    assert smenv.exec_bytes("abc") == 4  # the NUL
    assert smenv.exec_bytes("v", "SM_X") == len(b"SM_X=v") + 1
    assert smenv.exec_bytes("\u00e9") == 3  # UTF-8 bytes, not characters
    assert smenv.exec_bytes("\udcff") == 2  # a byte the environment held, as it was
    assert smenv.MAX_STRING_BYTES == 32 * 4096  # Linux's MAX_ARG_STRLEN
