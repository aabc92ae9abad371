"""Run a `train` (the toolkit's or ours) on a tree and compare what the user program received.

`run(train_argv, tree, workdir, ...)` builds a fresh copy of the tree at `workdir/opt/ml`, runs
the launcher there with a controlled environment, and returns a `Run`: exit code, output, the
dump written by tests/bin/dump_env.py, and what `code/` and `output/` hold afterwards. Both
launchers of one comparison get the same base path, so paths compare verbatim.

`differences(expected, actual)` lists every mismatch between two dumps as readable lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.oracle.trees import Tree, build

RUN_TIMEOUT_S = 60
# The variables the toolkit sets outside SM_* (contract §5.4), compared exactly.
NON_SM_VARS = ("CURRENT_HOST", "SAGEMAKER_JOB_NAME", "SAGEMAKER_REGION")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    dump: dict[str, Any] | None
    code_files: tuple[str, ...]
    output_files: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"exit {self.returncode}\n--- stdout (tail)\n{self.stdout[-3000:]}\n"
            f"--- stderr (tail)\n{self.stderr[-3000:]}"
        )


def base_env(workdir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The whole environment a launcher gets: nothing inherited but the leak-watch tag."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),  # no ~/.aws/config: boto3's default region comes from env only
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "SM_STUDIO_LOCAL_MODE": "true",  # the toolkit would wait for DNS of algo-N otherwise
    }
    if "LAUNCHER_TEST_TAG" in os.environ:
        env["LAUNCHER_TEST_TAG"] = os.environ["LAUNCHER_TEST_TAG"]
    env.update(extra)
    return env


def run(
    train_argv: Sequence[str],
    tree: Tree,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
) -> Run:
    """Build `tree` afresh at `workdir/opt/ml` and run `train_argv` on it."""
    base = workdir / "opt" / "ml"
    if base.exists():
        shutil.rmtree(base)
    build(tree, base)
    dump_path = workdir / "dump.json"
    dump_path.unlink(missing_ok=True)
    full_env = base_env(
        workdir,
        {**tree.env, **(env or {}), "SAGEMAKER_BASE_DIR": str(base), "DUMP_OUT": str(dump_path)},
    )
    proc = subprocess.run(
        list(train_argv),
        env=full_env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout_s,
    )
    dump = json.loads(dump_path.read_text(encoding="utf-8")) if dump_path.exists() else None
    return Run(
        returncode=proc.returncode,
        stdout=proc.stdout.decode("utf-8", "replace"),
        stderr=proc.stderr.decode("utf-8", "replace"),
        dump=dump,
        code_files=listing(base / "code"),
        output_files=listing(base / "output"),
    )


def listing(root: Path) -> tuple[str, ...]:
    """Every entry under `root`: `path/` for directories, `path -> target` for links."""
    if not root.is_dir():
        return ()
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out.append(f"{rel} -> {os.readlink(path)}")
            elif path.is_dir():
                out.append(f"{rel}/")
            else:
                out.append(f"{rel} ({path.stat().st_size} B)")
    return tuple(sorted(out))


def sm_vars(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("SM_")}


def differences(
    expected: Mapping[str, Any], actual: Mapping[str, Any], *, ignore: Sequence[str] = ()
) -> list[str]:
    """Every difference between two dumps (expected = the toolkit's), one line each.

    Compares every SM_* name and value (SM_TRAINING_ENV also key by key as parsed JSON),
    argv, the interpreter's argv after the interpreter itself, cwd, the first PYTHONPATH
    entry and the variables of NON_SM_VARS. Names in `ignore` are skipped (deliberate
    differences that the caller asserts separately).
    """
    diffs: list[str] = []
    e_env: Mapping[str, str] = expected["env"]
    a_env: Mapping[str, str] = actual["env"]
    e_sm, a_sm = sm_vars(e_env), sm_vars(a_env)
    for name in sorted(set(e_sm) | set(a_sm)):
        if name in ignore:
            continue
        if name not in a_sm:
            diffs.append(f"{name}: missing in ours (toolkit: {e_sm[name]!r})")
        elif name not in e_sm:
            diffs.append(f"{name}: only in ours ({a_sm[name]!r})")
        elif e_sm[name] != a_sm[name] and name != "SM_TRAINING_ENV":
            diffs.append(f"{name}: toolkit {e_sm[name]!r} != ours {a_sm[name]!r}")
    if "SM_TRAINING_ENV" in e_sm and "SM_TRAINING_ENV" in a_sm:
        diffs += _training_env_diffs(e_sm["SM_TRAINING_ENV"], a_sm["SM_TRAINING_ENV"], ignore)
    for name in NON_SM_VARS:
        if e_env.get(name) != a_env.get(name):
            diffs.append(f"{name}: toolkit {e_env.get(name)!r} != ours {a_env.get(name)!r}")
    for key in ("argv", "cwd"):
        if expected[key] != actual[key]:
            diffs.append(f"{key}: toolkit {expected[key]!r} != ours {actual[key]!r}")
    if expected["orig_argv"][1:] != actual["orig_argv"][1:]:
        diffs.append(
            f"interpreter argv: toolkit {expected['orig_argv'][1:]!r}"
            f" != ours {actual['orig_argv'][1:]!r}"
        )
    e_pp = e_env.get("PYTHONPATH", "").split(":")[0]
    a_pp = a_env.get("PYTHONPATH", "").split(":")[0]
    if e_pp != a_pp:
        diffs.append(f"PYTHONPATH[0]: toolkit {e_pp!r} != ours {a_pp!r}")
    return diffs


def _training_env_diffs(expected: str, actual: str, ignore: Sequence[str]) -> list[str]:
    e, a = json.loads(expected), json.loads(actual)
    diffs: list[str] = []
    for key in sorted(set(e) | set(a)):
        if f"SM_TRAINING_ENV.{key}" in ignore:
            continue
        if key not in a:
            diffs.append(f"SM_TRAINING_ENV.{key}: missing in ours")
        elif key not in e:
            diffs.append(f"SM_TRAINING_ENV.{key}: only in ours")
        elif e[key] != a[key]:
            diffs.append(f"SM_TRAINING_ENV.{key}: toolkit {e[key]!r} != ours {a[key]!r}")
    # Same parsed content must also mean the same text: sorted keys, compact separators.
    ignoring_some = any(name.startswith("SM_TRAINING_ENV.") for name in ignore)
    if not diffs and not ignoring_some and expected != actual:
        diffs.append("SM_TRAINING_ENV: same content, different text encoding")
    return diffs
