"""Where our `train` deliberately differs from sagemaker-training 5.1.4, and what it does.

Each test runs the same tree under both launchers where that is cheap and harmless, asserts
the toolkit's behaviour (so the difference is real, not folklore) and then ours. The list
and the reasons are in docs/compatibility.md; each entry there names its test here.
SIGTERM (D1) runs ours only: the toolkit orphans the user process, which a test must not do.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.helpers.waiting import wait_for
from tests.oracle import harness
from tests.oracle.trees import TREES, Tree, build

pytestmark = [pytest.mark.oracle, pytest.mark.timeout(120)]

PROGRAM = {"sagemaker_program": '"train.py"', "epochs": "2"}
PLAIN = Tree("plain", PROGRAM)


def exited(proc: subprocess.Popen[bytes]) -> str | None:
    """Once `proc` has exited, "train exited (CODE)"; None while it runs (a `stop_if`)."""
    code = proc.poll()
    return None if code is None else f"train exited ({code})"


def failure_text(workdir: Path) -> str:
    path = workdir / "opt" / "ml" / "output" / "failure"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def both(
    oracle: list[str], ours: list[str], tree: Tree, tmp_path: Path, **env: str
) -> tuple[harness.Run, str, harness.Run, str]:
    """Run `tree` under the toolkit, then ours; return each run with its failure text."""
    theirs_dir, ours_dir = tmp_path / "theirs", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    theirs = harness.run(oracle, tree, theirs_dir, env=env)
    mine = harness.run(ours, tree, ours_dir, env=env)
    return theirs, failure_text(theirs_dir), mine, failure_text(ours_dir)


def test_exit_code_is_the_users_code(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """D5: the toolkit exits 1 whatever the script's code; we exit with the script's code."""
    theirs, their_failure, ours, our_failure = both(
        oracle_train, our_train, PLAIN, tmp_path, DUMP_EXIT="3"
    )
    assert theirs.returncode == 1 and "ExitCode 3" in their_failure
    assert ours.returncode == 3, ours.describe()
    assert "code 3" in our_failure.splitlines()[0]


def test_a_signal_death_is_128_plus_n(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """D5: a script killed by SIGKILL: the toolkit exits 1 (ExitCode -9), we exit 137."""
    theirs, their_failure, ours, our_failure = both(
        oracle_train, our_train, PLAIN, tmp_path, DUMP_SIGNAL="9"
    )
    assert theirs.returncode == 1 and "ExitCode -9" in their_failure
    assert ours.returncode == 128 + signal.SIGKILL, ours.describe()
    assert "SIGKILL" in our_failure.splitlines()[0]


def test_failure_file_starts_with_the_root_cause(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """Contract §11.2: plain `train` leaves ErrorMessage empty; our first line has the error."""
    _, their_failure, ours, our_failure = both(
        oracle_train, our_train, PLAIN, tmp_path, DUMP_RAISE="boom from user"
    )
    assert their_failure.startswith('ExecuteUserScriptError:\nExitCode 1\nErrorMessage ""')
    assert ours.returncode == 1
    first = our_failure.splitlines()[0]
    assert "exited with code 1" in first and "ValueError: boom from user" in first
    assert "Traceback" in our_failure  # the stderr tail follows the root cause


def test_a_user_written_failure_file_is_kept_by_both(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """Same behaviour (contract §11.1, issue #111), asserted here next to the differences."""
    _, their_failure, ours, our_failure = both(
        oracle_train, our_train, PLAIN, tmp_path, DUMP_FAILURE_TEXT="my reason\n", DUMP_EXIT="4"
    )
    assert their_failure == our_failure == "my reason\n"
    assert ours.returncode == 4


def test_missing_entry_point_is_a_configuration_error(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """The toolkit starts `python -- missing.py` and reports exit 1; we refuse it with 2."""
    tree = Tree("missing", {"sagemaker_program": '"missing.py"'})
    theirs, their_failure, ours, our_failure = both(oracle_train, our_train, tree, tmp_path)
    assert theirs.returncode == 1 and their_failure.startswith("ExecuteUserScriptError")
    assert ours.returncode == 2, ours.describe()
    assert "sagemaker_program: entry point 'missing.py' does not exist" in our_failure


def test_hostile_archive_is_refused_not_sanitised(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """Contract §8: the toolkit renames ../evil.py to evil.py and runs; we refuse the archive."""
    tree = Tree(
        "hostile-tar",
        {**PROGRAM, "sagemaker_submit_directory": '"@BASE@/submit/sourcedir.tar.gz"'},
        source="tar",
        tar_members={"../evil.py": "print('evil')\n"},
    )
    theirs, _, ours, our_failure = both(oracle_train, our_train, tree, tmp_path)
    assert theirs.returncode == 0 and any(f.startswith("evil.py") for f in theirs.code_files)
    assert ours.returncode == 2 and ours.dump is None, ours.describe()
    assert ours.code_files == ()  # nothing extracted
    assert "../evil.py: archive member contains '..'" in our_failure


def test_uncompressed_tarball_is_accepted(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """The toolkit opens a local archive as gzip only (Framework Error); we read any tar."""
    tree = Tree(
        "plain-tar",
        {**PROGRAM, "sagemaker_submit_directory": '"@BASE@/submit/sourcedir.tar.gz"'},
        source="tar",
        tar_mode="w",
    )
    theirs, their_failure, ours, _ = both(oracle_train, our_train, tree, tmp_path)
    assert theirs.returncode == 1 and their_failure.startswith("Framework Error")
    assert ours.returncode == 0 and ours.dump is not None, ours.describe()


def test_log_level_must_be_an_integer(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """Both refuse "DEBUG": the toolkit with a Framework Error traceback and exit 1 (its
    logging setup compares the level with 20), we with one line and exit 2."""
    tree = Tree("log-level", {**PROGRAM, "sagemaker_container_log_level": '"DEBUG"'})
    theirs, their_failure, ours, our_failure = both(oracle_train, our_train, tree, tmp_path)
    assert theirs.returncode == 1 and their_failure.startswith("Framework Error")
    assert "Traceback" in their_failure
    assert ours.returncode == 2 and "Traceback" not in ours.stdout + ours.stderr
    assert "sagemaker_container_log_level: must be an integer level" in our_failure


def test_module_name_follows_the_entry_point_that_runs(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """SAGEMAKER_PROGRAM set but empty: both run sagemaker_program; the toolkit's
    SM_MODULE_NAME is then "" (taken from the empty variable), ours names what runs."""
    theirs, _, ours, _ = both(oracle_train, our_train, PLAIN, tmp_path, SAGEMAKER_PROGRAM="")
    assert theirs.dump is not None and ours.dump is not None, ours.describe()
    assert theirs.dump["env"]["SM_MODULE_NAME"] == ""
    assert ours.dump["env"]["SM_MODULE_NAME"] == "train"
    assert ours.dump["env"]["SM_USER_ENTRY_POINT"] == theirs.dump["env"]["SM_USER_ENTRY_POINT"]


def test_hyperparameter_values_are_not_logged(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """D8: the toolkit logs the whole environment, secrets included; we never log values."""
    secret = "s3cret-9f8e7d"
    tree = Tree("secret", {**PROGRAM, "api-key": json.dumps(secret), "raw-token": secret + "x"})
    theirs, _, ours, _ = both(oracle_train, our_train, tree, tmp_path)
    assert secret in theirs.stdout + theirs.stderr
    assert ours.returncode == 0, ours.describe()
    assert secret not in ours.stdout + ours.stderr


# A private mount namespace with an empty tmpfs on /opt: there is no /opt/ml whatever the
# machine holds, and nothing either launcher writes there outlives the run.
HIDE_OPT = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
HIDE_OPT_SCRIPT = 'mount -t tmpfs tmpfs /opt && exec "$@"'


def _can_hide_opt() -> bool:
    try:
        probe = subprocess.run([*HIDE_OPT, HIDE_OPT_SCRIPT, "sh", "true"], timeout=30)
    except OSError:
        return False
    return probe.returncode == 0


def test_no_stub_tree_without_a_base_directory(
    oracle_train: list[str], our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """D9: with no /opt/ml and no SAGEMAKER_BASE_DIR the toolkit's import creates a stub tree
    under $HOME; ours reports the missing file and creates nothing there."""
    if not _can_hide_opt():
        pytest.skip("needs root and unshare(1) to hide /opt in a mount namespace")
    for who, argv in (("theirs", oracle_train), ("ours", our_train)):
        workdir = tmp_path / who
        workdir.mkdir()
        env = harness.base_env(workdir, {})
        proc = subprocess.run(
            [*HIDE_OPT, HIDE_OPT_SCRIPT, "sh", *argv],
            env=env,
            cwd=workdir,
            capture_output=True,
            timeout=60,
        )
        created = sorted(p.name for p in (workdir / "home").iterdir())
        if who == "theirs":
            assert created == ["sagemaker_local"], proc.stderr.decode(errors="replace")
        else:
            assert proc.returncode == 2 and created == []
            assert b"/opt/ml/input/config/hyperparameters.json: is missing" in proc.stderr


def test_sigterm_reaches_the_user_program(
    our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """D1: SIGTERM to `train` reaches the script (the toolkit orphans it); exit 128+15."""
    base = tmp_path / "opt" / "ml"
    build(PLAIN, base)
    dump = tmp_path / "dump.json"
    env = harness.base_env(
        tmp_path, {"SAGEMAKER_BASE_DIR": str(base), "DUMP_OUT": str(dump), "DUMP_WAIT_TERM": "1"}
    )
    proc = subprocess.Popen(
        our_train, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # The dump appears once the program's SIGTERM handler is set.
        wait_for(dump.exists, 30, "the user program to start", stop_if=lambda: exited(proc))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode(errors="replace")
    assert Path(str(dump) + ".term").read_text() == "got SIGTERM\n"
    assert "SIGTERM" in failure_text(tmp_path).splitlines()[0]


@pytest.mark.timeout(60)
def test_distribution_flags_select_our_backend(
    our_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    """The toolkit's base `train` ignores every distribution flag but sagemaker_mpi_enabled
    (torchrun needs its PyTorch framework module); ours starts its torch backend on the
    distribution hosts, in instance-group order. Shown with --dry-run: nothing starts."""
    tree = next(t for t in TREES if t.name == "hetero-train-host")
    base = tmp_path / "opt" / "ml"
    build(tree, base)
    env = harness.base_env(tmp_path, {"SAGEMAKER_BASE_DIR": str(base)})
    proc = subprocess.run(
        [*our_train, "--dry-run", "--json"], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    plan = json.loads(proc.stdout)
    assert plan["backend"] == "torch"
    assert [h["name"] for h in plan["hosts"]] == ["algo-3", "algo-2"]
    assert plan["node_rank"] == 0
