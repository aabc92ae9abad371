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

from launcher.errors import EXIT_USAGE, ConfigError
from launcher.sagemaker import config, smenv

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


def test_the_launchers_own_hyperparameters_never_reach_the_script(tmp_path: Path) -> None:
    """`launcher_hang_timeout` is a setting of the launcher: neither an argument nor SM_HP_*."""
    job = load(tree(tmp_path, {"epochs": "3", "launcher_hang_timeout": '"60"'}))
    assert dict(job.hyperparameters.user) == {"epochs": 3}
    assert job.hyperparameters.sagemaker["launcher_hang_timeout"] == "60"
    assert "--launcher_hang_timeout" not in smenv.user_args(job.hyperparameters.user)


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


# --- nesting, digits and sizes: one ConfigError naming the file and the key ---------------

MAX = 64  # config.MAX_NESTING (a literal, so that each test below fails on its own before it)


def test_the_nesting_limit() -> None:
    assert config.MAX_NESTING == MAX


def nested(depth: int, shape: str) -> str:
    """JSON text nesting `depth` lists or objects."""
    if shape == "lists":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def write_raw(base: Path, name: str, text: str) -> None:
    (base / "input" / "config" / name).write_text(text)


DEPTHS = [MAX + 1, 500, 995, 100_000]


RES_TEMPLATE = '{"current_host": "h", "hosts": ["h"], "topology": %s}'
WHERE_DEEP = {  # file, key, template, whether the value is a JSON-encoded string
    "hps-raw": ("hyperparameters.json", "x", '{"x": %s}', False),
    "hps-string": ("hyperparameters.json", "x", '{"x": %s}', True),
    "res": ("resourceconfig.json", "topology", RES_TEMPLATE, False),
    "data": ("inputdataconfig.json", "train", '{"train": {"spec": %s}}', False),
}


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["lists", "objects"])
@pytest.mark.parametrize("where", list(WHERE_DEEP))
def test_deep_nesting_is_one_error_naming_file_and_key(
    tmp_path: Path, where: str, shape: str, depth: int
) -> None:
    name, key, template, encoded = WHERE_DEEP[where]
    base = tree(tmp_path, {})
    value = nested(depth, shape)
    if encoded:
        value = json.dumps(value)  # as SageMaker writes hyperparameters: a JSON string
    write_raw(base, name, template % value)
    with pytest.raises(ConfigError, match="nests too deeply") as info:
        load(base)
    assert info.value.path == str(base / "input" / "config" / name)
    assert info.value.key == key
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", ["lists", "objects"])
def test_nesting_up_to_the_limit_loads_and_encodes(tmp_path: Path, shape: str) -> None:
    from launcher.sagemaker import smenv

    # The channel's own object is one level: the limit counts from the top-level key's value.
    base = tree(
        tmp_path,
        {"raw": json.loads(nested(MAX, shape)), "encoded": nested(MAX, shape)},
        res={**ONE_HOST, "topology": json.loads(nested(MAX, "lists"))},
        data={"train": {"spec": json.loads(nested(MAX - 1, shape))}},
    )
    job = load(base)
    env = smenv.sm_environment(job, num_gpus=8, num_cpus=96, environ={})
    assert json.loads(env["SM_HP_ENCODED"]) == json.loads(nested(MAX, shape))
    assert smenv.user_args(job.hyperparameters.user)[1].startswith(
        "[" if shape == "lists" else "a="
    )


def test_decode_hyperparameter_refuses_values_too_deep() -> None:
    from launcher.sagemaker.files import NestingError

    assert config.decode_hyperparameter(nested(MAX, "lists")) == json.loads(nested(MAX, "lists"))
    for depth in (MAX + 1, 100_000):
        with pytest.raises(NestingError):
            config.decode_hyperparameter(nested(depth, "objects"))


@pytest.mark.parametrize(
    ("name", "key", "template"),
    [
        ("hyperparameters.json", "n", '{"n": %s}'),
        (
            "resourceconfig.json",
            "topology",
            '{"current_host": "h", "hosts": ["h"], "topology": [%s]}',
        ),
        ("inputdataconfig.json", "train", '{"train": {"n": -%s}}'),
    ],
)
def test_an_integer_over_the_digit_limit_is_one_error(
    tmp_path: Path, name: str, key: str, template: str
) -> None:
    base = tree(tmp_path, {})
    write_raw(base, name, template % ("7" * 5000))
    with pytest.raises(ConfigError, match="digits") as info:
        load(base)
    assert (info.value.path, info.value.key) == (str(base / "input" / "config" / name), key)


def test_a_long_integer_in_a_hyperparameter_string_is_kept_as_the_string(tmp_path: Path) -> None:
    # The toolkit's json.loads raises ValueError on it, and keeps the raw string.
    job = load(tree(tmp_path, {"n": "7" * 5000}))
    assert job.hyperparameters.user["n"] == "7" * 5000


KIB = 1024


Sizes = tuple[
    dict[str, Any], dict[str, Any] | None, dict[str, Any] | None, dict[str, str], str, str | None
]
TOO_LARGE: dict[str, Sizes] = {  # the three files, the environment; the source and key named
    "one-value": ({"big": "x" * 200 * KIB}, None, None, {}, "hyperparameters.json", "big"),
    "one-list": (
        {"big": ["x" * 70 * KIB, "y" * 70 * KIB]},
        None,
        None,
        {},
        "hyperparameters.json",
        "big",
    ),
    "two-values": (
        {"a": "x" * 100 * KIB, "b": "y" * 100 * KIB},
        None,
        None,
        {},
        "hyperparameters.json",
        None,
    ),
    "sagemaker-key": (
        {"sagemaker_job_name": json.dumps("j" * 200 * KIB)},
        None,
        None,
        {},
        "hyperparameters.json",
        "sagemaker_job_name",
    ),
    "resources": (
        {},
        {**ONE_HOST, "topology": ["t" * 200 * KIB]},
        None,
        {},
        "resourceconfig.json",
        "topology",
    ),
    "channels": (
        {},
        None,
        {f"c{i}": {"x": "y" * KIB} for i in range(200)},
        {},
        "inputdataconfig.json",
        None,
    ),
    "env": (
        {},
        None,
        None,
        {"TRAINING_JOB_NAME": "t" * 200 * KIB},
        "environment",
        "TRAINING_JOB_NAME",
    ),
    "total": (
        {f"k{i}": "v" * 90 * KIB for i in range(12)},
        None,
        None,
        {},
        "hyperparameters.json",
        None,
    ),
}


@pytest.mark.parametrize("case", list(TOO_LARGE))
def test_values_too_large_for_execve_are_one_error_naming_the_source(
    tmp_path: Path, case: str
) -> None:
    hps, res, data, environ, where, key = TOO_LARGE[case]
    base = tree(tmp_path, hps, res, data)
    with pytest.raises(ConfigError, match="too large") as info:
        config.load(base, environ)
    expected = where if where == "environment" else str(base / "input" / "config" / where)
    assert (info.value.path, info.value.key) == (expected, key)
    assert len(str(info.value)) < 400


def test_large_values_that_execve_accepts_load(tmp_path: Path) -> None:
    from launcher.sagemaker import smenv

    job = load(tree(tmp_path, {"a": "x" * 60 * KIB}, data={"train": {"x": "y" * 30 * KIB}}))
    env = smenv.sm_environment(job, num_gpus=8, num_cpus=96, environ={})
    assert max(smenv.exec_bytes(v, k) for k, v in env.items()) < smenv.MAX_STRING_BYTES


@pytest.mark.parametrize("key", ["a\nb", "a=\nb", "k" * 10_000])
def test_keys_in_messages_stay_on_one_short_line(tmp_path: Path, key: str) -> None:
    base = tree(tmp_path, {})
    text = json.dumps({key: 1})[:-1] + ", " + json.dumps(key) + ": 2}"  # the key twice
    write_raw(base, "hyperparameters.json", text)
    with pytest.raises(ConfigError) as info:
        load(base)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    write_raw(base, "hyperparameters.json", json.dumps({key + "=": 1}))
    with pytest.raises(ConfigError) as info:
        load(base)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


# --- no input crashes the front half: a property test ---------------------------------------

# Every key the launcher reads from the three files and the environment, fed random JSON values
# (raw, and JSON-encoded as SageMaker writes hyperparameters), numbers in every spelling,
# nesting on both sides of the limit, and strings too long for execve. Whatever comes in, only
# a LauncherError (ConfigError) may come out of config.load, settings.resolve, the MPI
# settings, the SM_* encoding and the entry point check.

HP_KEYS = [
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_container_log_level",
    "sagemaker_region",
    "sagemaker_job_name",
    "sagemaker_distribution_instance_groups",
    "sagemaker_mpi_enabled",
    "sagemaker_torch_distributed_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_mpi_num_of_processes_per_host",
    "sagemaker_mpi_num_processes",
    "sagemaker_mpi_custom_mpi_options",
    "default_user_module_name",
    "epochs",
    "x",
]
RES_KEYS = [
    "current_host",
    "hosts",
    "current_group_name",
    "current_instance_type",
    "network_interface_name",
    "instance_groups",
    "topology",
]
GROUP_KEYS = ["instance_group_name", "instance_type", "hosts"]
ENV_KEYS = [
    "LAUNCHER_BACKEND",
    "LAUNCHER_PROCS_PER_HOST",
    "LAUNCHER_GRACE_PERIOD",
    "LAUNCHER_LOG_DIR",
    "LAUNCHER_RANKS",
    "LAUNCHER_MASTER_PORT",
    "LAUNCHER_PEER_TIMEOUT",
    "LAUNCHER_HEARTBEAT_TIMEOUT",
    "LAUNCHER_CONTROL_PORT",
    "LAUNCHER_JOB_TOKEN",
    "LAUNCHER_MPI_NUM_PROCESSES",
    "LAUNCHER_MPI_OPTIONS",
    "LAUNCHER_SSH_PORT",
    "SAGEMAKER_PROGRAM",
    "SAGEMAKER_TRAINING_MODULE",
    "TRAINING_JOB_NAME",
    "AWS_DEFAULT_REGION",
]
CLI_KEYS = ["backend", "nproc_per_host", "grace_period", "log_dir", "ranks", "master_port"]
NUMBERS = [
    "inf", "-inf", "nan", "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "0", "-1",
    "1.5", "4.0", "65536", "1" * 30, "true", "True", "gpu", "auto", "", " ", "mpi", "torch",
    "0,3", "x.py", "../x.py", "\udcff",
]  # fmt: skip


def _strategies() -> Any:
    """Cases as JSON text per value, so that values nest deeper than json.dumps could write."""
    from hypothesis import strategies as st

    text = st.text(max_size=12)
    numbers = st.sampled_from(NUMBERS) | st.integers(4000, 5000).map(lambda n: "7" * n)
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**300), max_value=10**300)
        | st.floats()
        | text
        | numbers
    )
    small = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps)
    digits = st.integers(4000, 5000).map(lambda n: "7" * n)  # raw: over the digit limit or not
    depths = st.sampled_from([MAX - 1, MAX, MAX + 1, 300, 995, 3000])
    deep = st.tuples(depths, st.booleans(), small).map(
        lambda d: ("[" * d[0] + d[2] + "]" * d[0]) if d[1] else ('{"k":' * d[0] + d[2] + "}" * d[0])
    )
    big = st.sampled_from([200, 70]).map(lambda kib: json.dumps("b" * kib * 1024))
    value = small | deep | digits | big  # JSON text
    # Hyperparameters as SageMaker writes them (a JSON string holding JSON), or raw JSON.
    hp_value = value.map(json.dumps) | value | numbers.map(json.dumps)
    env_value = st.text(alphabet=st.characters(blacklist_characters="\0"), max_size=12) | numbers
    group = st.dictionaries(
        st.sampled_from(GROUP_KEYS), value | st.just('["algo-1"]'), max_size=3
    ).map(_object)
    res_value = value | st.lists(group, max_size=2).map(lambda g: f"[{','.join(g)}]")
    res_value = res_value | st.just('["algo-1", "algo-2"]')
    return st.fixed_dictionaries(
        {
            "hps": st.dictionaries(st.sampled_from(HP_KEYS) | text, hp_value, max_size=5),
            "res": st.dictionaries(st.sampled_from(RES_KEYS), res_value, max_size=3),
            "data": st.dictionaries(text | st.just("train"), value, max_size=2),
            "env": st.dictionaries(st.sampled_from(ENV_KEYS), env_value, max_size=4),
            "cli": st.dictionaries(st.sampled_from(CLI_KEYS), env_value, max_size=3),
        }
    )


def _object(entries: dict[str, str]) -> str:
    """A JSON object from keys and the JSON text of their values."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in entries.items()) + "}"


def _front_half(base: Path, case: dict[str, Any]) -> None:
    """What `train` does with a tree before it starts anything."""
    from launcher import settings
    from launcher.mpi import job as mpijob
    from launcher.plan import Backend
    from launcher.sagemaker import entrypoint, smenv

    cfg_dir = base / "input" / "config"
    res = {"current_host": '"algo-1"', "hosts": '["algo-1", "algo-2"]', **case["res"]}
    for name, content in (
        ("hyperparameters.json", case["hps"]),
        ("resourceconfig.json", res),
        ("inputdataconfig.json", case["data"]),
    ):
        (cfg_dir / name).write_text(_object(content))
    environ = case["env"]
    job = config.load(base, environ)
    hps_file = str(cfg_dir / "hyperparameters.json")
    sources = settings.Sources(case["cli"], environ, job.hyperparameters.sagemaker, hps_file)
    for default in (Backend.NONE, Backend.TORCH):
        settings.resolve(sources, default_backend=default)
    mpijob.mpi_settings(sources)
    smenv.sm_environment(job, num_gpus=8, num_cpus=96, environ=environ)
    smenv.user_args(job.hyperparameters.user)
    source = "environment: SAGEMAKER_PROGRAM" if environ.get("SAGEMAKER_PROGRAM") else hps_file
    entrypoint.resolve(job.entry_point, base / "code", source)


def test_no_input_gets_anything_but_a_launcher_error_out_of_the_front_half(
    tmp_path: Path,
) -> None:
    from hypothesis import HealthCheck, given, settings

    from launcher.errors import LauncherError

    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "x.py").write_text("")

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_strategies())
    def check(case: dict[str, Any]) -> None:
        try:
            _front_half(tmp_path, case)
        except LauncherError as e:
            assert "\n" not in str(e), str(e)  # one line, whatever the value

    check()
