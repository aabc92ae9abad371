"""`train` without a distribution: one process, SageMaker's behaviour, on a real tree.

Each test builds a one-host SageMaker tree in a temporary folder (conftest.sm_tree) whose
entry point is a small script, and runs `python -m launcher train` on it as a real process.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.integration.conftest import PYTHON, Launch, Launched, gone, sm_tree, wait_for

pytestmark = pytest.mark.timeout(60)

TRAIN = (PYTHON, "-m", "launcher", "train")


def train(launch: Launch, base: Path, *args: str, env: Mapping[str, str] | None = None) -> Launched:
    return launch(command=[*TRAIN, *args], env={"SAGEMAKER_BASE_DIR": str(base), **(env or {})})


def test_success_writes_the_success_file(launch: Launch, tmp_path: Path) -> None:
    base = sm_tree(tmp_path / "sm", "print('trained')\n")
    job = train(launch, base)
    assert job.wait() == 0, job.err
    assert job.out_bytes == b"trained\n"
    assert (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()


def test_failure_file_starts_with_the_root_cause(launch: Launch, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "print('epoch 1 loss 0.3')\n"
        "print('x' * 3000, file=sys.stderr)\n"  # a long stderr must not push the cause out
        "raise ValueError('learning rate 7.0 diverged')\n"
    )
    base = sm_tree(tmp_path / "sm", script)
    job = train(launch, base)
    assert job.wait() == 1, job.err
    failure = (base / "output" / "failure").read_text()
    cause = "rank 0 on algo-1 exited with code 1: ValueError: learning rate 7.0 diverged"
    assert failure.splitlines()[0] == cause
    assert cause in failure[:1024]
    assert "Traceback (most recent call last):" in job.err  # the user's own stderr, unchanged
    assert not (base / "output" / "success").exists()


def test_exit_code_is_the_scripts(launch: Launch, tmp_path: Path) -> None:
    base = sm_tree(tmp_path / "sm", "import sys\nsys.exit(7)\n")
    job = train(launch, base)
    assert job.wait() == 7, job.err
    assert (
        (base / "output" / "failure").read_text().startswith("rank 0 on algo-1 exited with code 7")
    )


def test_the_scripts_own_failure_file_is_kept(launch: Launch, tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "with open(os.path.join(os.environ['SM_OUTPUT_DIR'], 'failure'), 'w') as f:\n"
        "    f.write('my own reason: out of data\\n')\n"
        "sys.exit(5)\n"
    )
    base = sm_tree(tmp_path / "sm", script)
    job = train(launch, base)
    assert job.wait() == 5, job.err
    assert (base / "output" / "failure").read_text() == "my own reason: out of data\n"


SIGTERM_SCRIPT = """
import json, os, signal, subprocess, sys, time

log = os.environ['SIG_LOG']
def handler(signum, frame):
    with open(log, 'a') as f:
        f.write('script ' + signal.Signals(signum).name + '\\n')
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, handler)
child = subprocess.Popen([sys.executable, '-c', '''
import os, signal, sys
def handler(signum, frame):
    with open(os.environ['SIG_LOG'], 'a') as f:
        f.write('child ' + signal.Signals(signum).name + '\\\\n')
    sys.exit(0)
signal.signal(signal.SIGTERM, handler)
print('armed', flush=True)
while True: signal.pause()
'''], stdout=subprocess.PIPE)
child.stdout.readline()
info = {'pid': os.getpid(), 'pgid': os.getpgrp(), 'child': child.pid,
        'child_pgid': os.getpgid(child.pid)}
tmp = os.path.join(os.environ['READY_DIR'], 'tmp')
with open(tmp, 'w') as f:
    json.dump(info, f)
os.replace(tmp, os.path.join(os.environ['READY_DIR'], 'rank-0.json'))
while True:
    signal.pause()
"""


def test_sigterm_reaches_the_scripts_process_group(launch: Launch, tmp_path: Path) -> None:
    log = tmp_path / "signals.log"
    base = sm_tree(tmp_path / "sm", SIGTERM_SCRIPT)
    job = train(launch, base, env={"SIG_LOG": str(log)})
    (info,) = job.ready(1)
    assert info["pgid"] == info["pid"] == info["child_pgid"]  # a group of its own, with its child
    job.send(signal.SIGTERM)
    assert job.wait() == 143, job.err
    assert sorted(log.read_text().splitlines()) == ["child SIGTERM", "script SIGTERM"]
    failure = (base / "output" / "failure").read_text()
    assert failure.splitlines()[0] == (
        "the job was stopped by SIGTERM, which was forwarded to every rank"
    )
    wait_for(
        "the script and its child to end", lambda: gone(info["pid"]) and gone(info["child"]), 5
    )


def test_dry_run_prints_the_plan_masks_values_and_starts_nothing(
    launch: Launch, tmp_path: Path
) -> None:
    marker = tmp_path / "it-ran"
    script = f"open({str(marker)!r}, 'w').close()\n"
    hps = {"api-token": json.dumps("hunter2-secret"), "epochs": "3"}
    base = sm_tree(tmp_path / "sm", script, hps)
    job = train(launch, base, "--dry-run", "--json")
    assert job.wait() == 0, job.err
    plan = json.loads(job.out)
    (rank,) = plan["ranks"]
    assert rank["argv"][-4:] == ["--api-token", "***", "--epochs", "***"]
    assert rank["env"]["SM_HP_API-TOKEN"] == "***"
    assert rank["env"]["SM_HPS"] == "***"
    assert "hunter2" not in job.out + job.err
    assert not marker.exists()
    assert not (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()


def test_output_passes_through_byte_for_byte(launch: Launch, tmp_path: Path) -> None:
    out = b"line one\nprogress 10%\rprogress 100%\n\xff\xfe raw \x80\nno newline at the end"
    err = b"warning \xc3\x28 invalid utf-8\n\tindented\npartial err"
    script = (
        "import sys\n"
        f"for piece in ({out[:12]!r}, {out[12:]!r}):\n"
        "    sys.stdout.buffer.write(piece); sys.stdout.flush()\n"
        f"sys.stderr.buffer.write({err!r}); sys.stderr.flush()\n"
    )
    base = sm_tree(tmp_path / "sm", script)
    job = train(launch, base)
    assert job.wait() == 0, job.err
    assert job.out_bytes == out
    assert err in job.err_path.read_bytes()


@pytest.mark.parametrize("args", [["--grace-period"], ["--bogus"], ["--grace-period", "-inf"]])
def test_a_bad_command_line_is_one_line_and_a_failure_file(
    launch: Launch, tmp_path: Path, args: list[str]
) -> None:
    base = sm_tree(tmp_path / "ml", "print('never runs')\n")
    job = launch(
        command=[PYTHON, "-m", "launcher", "train", *args], env={"SAGEMAKER_BASE_DIR": str(base)}
    )
    assert job.wait() == 2
    assert len(job.stderr_lines()) == 1, job.err
    assert job.err.startswith("[launcher] error: command line: ")
    assert (base / "output" / "failure").read_text().startswith("command line: ")
