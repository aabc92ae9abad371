"""The SageMaker trees the oracle suite runs under both `train`s, described as data.

Each `Tree` says what goes into `input/config/*.json`, which channels exist, where the dump
program (tests/bin/dump_env.py) is put and under which name (which decides the entry-point
kind), where the code comes from (`code/`, a local submit directory, a tarball or a single
file), and what extra environment the launcher gets. `@BASE@` in any hyperparameter value is
replaced with the absolute base directory when the tree is built, so that
`sagemaker_submit_directory` can point inside the tree.

Values in `hyperparameters` are written to the file as they are: strings (what SageMaker
writes, JSON-decoded by both launchers) or, on purpose in one tree, other JSON types.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.helpers.trees import write_config

REPO = Path(__file__).resolve().parents[2]
DUMP_SCRIPT = REPO / "tests" / "bin" / "dump_env.py"

ONE_HOST: dict[str, Any] = {"current_host": "algo-1", "hosts": ["algo-1"]}
TRAIN_CHANNEL: dict[str, Any] = {
    "train": {
        "ContentType": "application/x-npy",
        "TrainingInputMode": "File",
        "S3DistributionType": "FullyReplicated",
        "RecordWrapperType": "None",
    }
}
P4D = "ml.p4d.24xlarge"

# 20 arguments that a shell would mangle: spaces, quotes, expansions, globs, redirections,
# newlines, option look-alikes, and an empty one (contract §15 case 8 asks for 18).
SHELL_NASTIES: tuple[str, ...] = (
    "a b  c",
    "$HOME",
    "`id`",
    "$(echo pwned)",
    "; echo pwned",
    "'single'",
    '"double"',
    "back\\slash",
    "*",
    "a|b && c",
    "> /tmp/should-not-exist",
    "line1\nline2",
    "\ttab",
    "-x",
    "--flag",
    "#not-a-comment",
    "~",
    "{a,b}",
    "!event",
    "",
)


def nasty_hyperparameters() -> dict[str, str]:
    """SHELL_NASTIES as hyperparameters m00..m19, half raw and half JSON-quoted."""
    hps: dict[str, str] = {}
    for i, value in enumerate(SHELL_NASTIES):
        hps[f"m{i:02d}"] = json.dumps(value) if i % 2 else value
    return hps


@dataclass(frozen=True)
class Tree:
    """One SageMaker tree. See the module docstring."""

    name: str
    hyperparameters: Mapping[str, Any]
    resourceconfig: Mapping[str, Any] = field(default_factory=lambda: dict(ONE_HOST))
    inputdataconfig: Mapping[str, Any] = field(default_factory=lambda: dict(TRAIN_CHANNEL))
    # Where the dump program goes, relative to the code source, and whether it is executable.
    program: str = "train.py"
    executable: bool = False
    # "code": into code/; "dir": into submit/ (copied by the launcher); "channel": into
    # input/data/code/; "tar": submit/sourcedir.tar.gz made with `tar -C src .` member names;
    # "file": submit/<program> alone.
    source: str = "code"
    # Extra files (relative path -> text) next to the program, in the same source.
    extra_files: Mapping[str, str] = field(default_factory=dict)
    # Extra files in code/ itself, whatever the source (to make code/ non-empty).
    code_files: Mapping[str, str] = field(default_factory=dict)
    # Relative symlinks (link -> target) in the source, kept inside it.
    links: Mapping[str, str] = field(default_factory=dict)
    # source="tar" only: the tarfile mode, and extra members (name -> text) added verbatim,
    # hostile names included ("../evil.py").
    tar_mode: Literal["w:gz", "w"] = "w:gz"
    tar_members: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # Extra arguments for OUR train only. A distribution flag starts our distributed mode
    # (the toolkit's base `train` ignores every flag but sagemaker_mpi_enabled, contract
    # §10.2); `--backend none` asks for the toolkit's one plain process.
    our_args: tuple[str, ...] = ()
    doc: str = ""


def build(tree: Tree, base: Path) -> None:
    """Write `tree` at `base` (which must not exist yet).

    The config files and their folders come from tests/helpers/trees.py (`write_config`, which
    keeps non-ASCII characters as they are); the code source is laid out here.
    """
    hps = {k: _subst(v, base) for k, v in tree.hyperparameters.items()}
    write_config(
        base,
        hyperparameters=hps,
        resourceconfig=tree.resourceconfig,
        inputdataconfig=tree.inputdataconfig,
    )
    source = {
        "code": base / "code",
        "dir": base / "submit",
        "channel": base / "input" / "data" / "code",
        "tar": base / "staging",
        "file": base / "submit",
    }[tree.source]
    _populate(tree, source, only_program=tree.source == "file")
    if tree.source == "tar":
        (base / "submit").mkdir()
        with tarfile.open(base / "submit" / "sourcedir.tar.gz", tree.tar_mode) as tar:
            tar.add(source, arcname=".")  # members "./", "./train.py", ... like `tar -C src .`
            for name, text in tree.tar_members.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        shutil.rmtree(source)
    for rel, text in tree.code_files.items():
        _write(base / "code" / rel, text)


def _populate(tree: Tree, source: Path, *, only_program: bool) -> None:
    program = source / tree.program
    program.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DUMP_SCRIPT, program)
    program.chmod(0o755 if tree.executable else 0o644)
    if only_program:
        return
    for rel, text in tree.extra_files.items():
        _write(source / rel, text)
    for link, target in tree.links.items():
        (source / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, source / link)


def _subst(value: Any, base: Path) -> Any:
    return value.replace("@BASE@", str(base)) if isinstance(value, str) else value


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# Contract §6, verbatim.
WORKED_EXAMPLE: dict[str, str] = {
    "epochs": "10",
    "flag": "true",
    "f": "false",
    "layers": "[1, 2, 3]",
    "opts": '{"b":2,"a":"x"}',
    "nest": '{"a":{"b":1}}',
    "x": "1",
    "s": '"true"',
    "name": '"resnet 50; echo pwned"',
    "raw": "not-json $HOME",
    "lr": "1e-5",
    "big": "1e3",
    "zero": "01",
    "nul": "null",
    "learning-rate": "0.1",
    "sagemaker_program": '"train.py"',
    "sagemaker_mpi_enabled": "false",
}
WORKED_ARGV = [
    "--big", "1000.0", "--epochs", "10", "-f", "False", "--flag", "True",
    "--layers", "[1, 2, 3]", "--learning-rate", "0.1", "--lr", "1e-05",
    "--name", "resnet 50; echo pwned", "--nest", "a={'b': 1}", "--nul", "",
    "--opts", "a=x,b=2", "--raw", "not-json $HOME", "-s", "true", "-x", "1", "--zero", "01",
]  # fmt: skip
WORKED_SM_HP: dict[str, str] = {
    "SM_HP_BIG": "1000.0",
    "SM_HP_EPOCHS": "10",
    "SM_HP_F": "false",
    "SM_HP_FLAG": "true",
    "SM_HP_LAYERS": "[1,2,3]",
    "SM_HP_LEARNING-RATE": "0.1",
    "SM_HP_LR": "1e-05",
    "SM_HP_NAME": "resnet 50; echo pwned",
    "SM_HP_NEST": '{"a":{"b":1}}',
    "SM_HP_NUL": "",
    "SM_HP_OPTS": '{"a":"x","b":2}',
    "SM_HP_RAW": "not-json $HOME",
    "SM_HP_S": "true",
    "SM_HP_X": "1",
    "SM_HP_ZERO": "01",
}


HETERO_RESOURCES: dict[str, Any] = {
    "hosts": ["algo-1", "algo-2", "algo-3"],
    "instance_groups": [
        {"instance_group_name": "data", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
        {"instance_group_name": "train", "instance_type": P4D, "hosts": ["algo-3", "algo-2"]},
    ],
    "network_interface_name": "eth0",
}
HETERO_HPS = {
    "sagemaker_program": '"train.py"',
    "sagemaker_distribution_instance_groups": '["train"]',
    "sagemaker_torch_distributed_enabled": "true",
    "epochs": "1",
}

TREES: tuple[Tree, ...] = (
    Tree(
        "contract-5.2-example",
        doc="the observed 2-host job of contract §5.2 / machine-notes §8",
        hyperparameters={
            "epochs": "3",
            "lr": "0.01",
            "model-name": '"resnet"',
            "flag": "true",
            "nested": '{"a": 1}',
            "sagemaker_program": '"train_script.py"',
            "sagemaker_container_log_level": "20",
            "sagemaker_region": '"us-west-2"',
            "sagemaker_job_name": '"fake-job-1"',
        },
        resourceconfig={
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
        },
        program="train_script.py",
    ),
    Tree(
        "worked-example-6",
        doc="the hyperparameters of contract §6, verbatim",
        hyperparameters=WORKED_EXAMPLE,
    ),
    Tree(
        "every-json-type",
        hyperparameters={
            "int": "10",
            "neg": "-3",
            "zero": "0",
            "huge": "123456789012345678901234567890",
            "float": "0.5",
            "exp": "1e-5",
            "exp-up": "1E3",
            "neg-zero": "-0.0",
            "trailing-zero": "2.50",
            "yes": "true",
            "no": "false",
            "none": "null",
            "list": '[1, "a", null, true, 2.5]',
            "nested-list": "[[1, 2], [3], []]",
            "empty-list": "[]",
            "dict": '{"b": 2, "a": [1, 2], "t": true, "n": null}',
            "empty-dict": "{}",
            "deep": '{"a": {"b": {"c": null}}}',
            "str": '"hello"',
            "str-num": '"10"',
            "str-bool": '"true"',
            "nan": "NaN",
            "inf": "Infinity",
            "ninf": "-Infinity",
            "sagemaker_program": '"train.py"',
        },
    ),
    Tree(
        "key-shapes",
        doc="hyphens, one letter, case collisions, digits, dots, spaces, unicode keys",
        hyperparameters={
            "learning-rate": "0.1",
            "a": "1",
            "B": "2",
            "_private": "3",
            "x_y-z": "4",
            "9lives": "5",
            "a.b": "6",
            "lr": "7",
            "LR": "8",
            "größe": "9",
            "CamelCase": "10",
            "-v": "11",
            "two words": "12",
            "ключ": '"значение"',
            "sagemaker_program": '"train.py"',
        },
    ),
    Tree(
        "unicode-values",
        hyperparameters={
            "quoted": '"héllo wörld"',
            "raw": "naïve café",
            "escaped": '"\\u65e5\\u672c"',
            "emoji": "🚀 launch",
            "list": '["é", "ß"]',
            "dict": '{"ключ": "значение", "a": "ü"}',
            "rtl": '"שלום"',
            "combining": '"e\\u0301"',
            "sagemaker_program": '"train.py"',
            "sagemaker_job_name": '"jöb-名前"',
        },
    ),
    Tree(
        "shell-metacharacters-python",
        hyperparameters={**nasty_hyperparameters(), "sagemaker_program": '"train.py"'},
    ),
    Tree(
        "shell-metacharacters-command",
        doc="an extensionless executable (COMMAND kind): every argument arrives intact",
        hyperparameters={**nasty_hyperparameters(), "sagemaker_program": '"run"'},
        program="run",
        executable=True,
    ),
    Tree(
        "empty-and-invalid-json",
        hyperparameters={
            "empty": "",
            "quoted-empty": '""',
            "spaces": "   ",
            "padded": " 7 ",
            "nul": "null",
            "lst": "[]",
            "obj": "{}",
            "zero": "01",
            "py-true": "True",
            "py-none": "None",
            "single": "'x'",
            "hex": "0x10",
            "dot": ".5",
            "trail": "1.",
            "plus": "+1",
            "unterminated": '"abc',
            "bad-obj": "{a: 1}",
            "trailing-comma": "[1,]",
            "nan-lower": "nan",
            "text": "not-json $HOME",
            "sagemaker_program": '"train.py"',
        },
    ),
    Tree(
        "non-string-values-in-file",
        doc="values that are not strings in the file are kept as they are",
        hyperparameters={
            "int": 10,
            "float": 1.5,
            "bool": True,
            "off": False,
            "null": None,
            "list": [1, "two", None],
            "obj": {"k": "v", "n": 1},
            "neg": -2,
            "str-num": "10",
            "sagemaker_container_log_level": 10,
            "sagemaker_program": "train.py",
        },
    ),
    Tree(
        "channels",
        hyperparameters={"sagemaker_program": '"train.py"'},
        inputdataconfig={
            "train": TRAIN_CHANNEL["train"],
            "train-data": {"TrainingInputMode": "FastFile"},
            "test_set": {},
            "Eval": {"TrainingInputMode": "Pipe", "ContentType": "text/csv"},
            "v2.val": {"RecordWrapperType": "RecordIO"},
        },
    ),
    Tree(
        "hetero-data-host",
        doc="contract §10.4 example, on the data host (not in a distribution group)",
        hyperparameters=HETERO_HPS,
        resourceconfig={
            **HETERO_RESOURCES,
            "current_host": "algo-1",
            "current_group_name": "data",
            "current_instance_type": "ml.c5.xlarge",
        },
    ),
    Tree(
        "hetero-train-host",
        doc="contract §10.4 example, on the master of the train group",
        hyperparameters=HETERO_HPS,
        our_args=("--backend", "none"),
        resourceconfig={
            **HETERO_RESOURCES,
            "current_host": "algo-3",
            "current_group_name": "train",
            "current_instance_type": P4D,
        },
    ),
    Tree(
        "distribution-flag-unsorted-hosts",
        doc="a distribution flag with no instance_groups; hosts order kept, not sorted",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_pytorch_ddp_enabled": "true",
            "sagemaker_mpi_enabled": "false",
            "sagemaker_mpi_num_of_processes_per_host": "2",
            "sagemaker_custom_thing": '{"a": 1}',
            "default_user_module_name": '"x"',
            "_tuning_objective_metric": '"loss"',
            "sagemaker_enable_cloudwatch_metrics": "false",
            "batch": "64",
        },
        resourceconfig={"current_host": "algo-2", "hosts": ["algo-10", "algo-2", "algo-1"]},
        our_args=("--backend", "none"),
    ),
    Tree(
        "program-env-precedence",
        doc="SAGEMAKER_PROGRAM beats sagemaker_program; SAGEMAKER_SUBMIT_DIRECTORY and "
        "SAGEMAKER_CONTAINER_LOG_LEVEL are ignored",
        hyperparameters={"sagemaker_program": '"decoy.py"', "epochs": "2"},
        program="real.py",
        extra_files={"decoy.py": "raise SystemExit('the decoy ran')\n"},
        env={
            "SAGEMAKER_PROGRAM": "real.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/nonexistent/submit",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "10",
        },
    ),
    Tree(
        "submit-dir-channel",
        doc="sagemaker_submit_directory = a code channel (contract §15 case 3)",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"@BASE@/input/data/code"',
            "epochs": "1",
        },
        inputdataconfig={"train": {}, "code": {}},
        source="channel",
        extra_files={"lib/helper.py": "VALUE = 1\n", "lib/__init__.py": ""},
    ),
    Tree(
        "submit-dir-local",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"@BASE@/submit"',
        },
        source="dir",
        extra_files={"data/params.yaml": "a: 1\n"},
        links={"current.py": "train.py"},
    ),
    Tree(
        "submit-tarball",
        doc="a sourcedir.tar.gz made like `tar -C src -czf x .`, with a relative symlink",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"@BASE@/submit/sourcedir.tar.gz"',
            "epochs": "4",
        },
        source="tar",
        extra_files={"pkg/__init__.py": "", "pkg/mod.py": "X = 1\n"},
        links={"latest.py": "pkg/mod.py"},
    ),
    Tree(
        "submit-single-file",
        doc="sagemaker_submit_directory = one local file that is not an archive",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"@BASE@/submit/train.py"',
        },
        source="file",
    ),
    Tree(
        "code-not-empty-wins",
        doc="code/ already holds code: sagemaker_submit_directory is not used",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"@BASE@/elsewhere"',
        },
        code_files={"BAKED_IN": "yes\n"},
    ),
    Tree(
        "topology-trn2-misc",
        doc="topology, extra resourceconfig keys, trn2 Neuron count, interface, log level",
        hyperparameters={
            "sagemaker_program": '"train.py"',
            "sagemaker_container_log_level": "10",
            "sagemaker_job_name": '"job-42"',
            "sagemaker_region": '"eu-central-1"',
            "mp_parameters": '{"partitions": 2}',
        },
        resourceconfig={
            "current_host": "algo-1",
            "hosts": ["algo-1", "algo-2"],
            "current_instance_type": "ml.trn2.48xlarge",
            "network_interface_name": "ens5",
            "topology": [
                {"hostName": "algo-1", "capacityUnitId": "cu-1"},
                {"hostName": "algo-2", "capacityUnitId": "cu-1"},
            ],
            "custom_key": {"z": 1, "a": [True, None]},
        },
        env={"TRAINING_JOB_NAME": "tj-42", "SM_HP_MP_PARAMETERS": '{"partitions": 2}'},
    ),
    Tree(
        "shell-entry-point-in-subdir",
        doc="bin/train.sh (COMMAND kind), not executable in the tree: both make it runnable",
        hyperparameters={"sagemaker_program": '"bin/train.sh"', "epochs": "5", "s": "a b"},
        program="bin/train.sh",
        executable=False,
    ),
    Tree(
        "region-from-environment",
        doc="no sagemaker_region: boto3's default reads AWS_DEFAULT_REGION, not AWS_REGION",
        hyperparameters={"sagemaker_program": '"train.py"'},
        env={"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"},
    ),
    Tree(
        "empty-hyperparameters-env-program",
        doc="hyperparameters.json is {}, no channels; the program comes from the environment",
        hyperparameters={},
        inputdataconfig={},
        env={"SAGEMAKER_PROGRAM": "train.py", "SM_HP_MP_PARAMETERS": ""},
    ),
    Tree(
        "program-in-subdir",
        doc="a program in a subdirectory; an inherited PYTHONPATH stays behind code/",
        hyperparameters={"sagemaker_program": '"src/train.py"', "epochs": "1"},
        program="src/train.py",
        extra_files={"src/util.py": "U = 1\n"},
        env={"PYTHONPATH": "/opt/inherited/lib"},
    ),
)
