"""A stop signal in every phase before the ranks run: the helper stops, the job reports it.

SIGTERM or SIGINT while requirements install (pip and the build it started), while the hosts
meet, or while a follower's sshd starts: the launcher stops what it started, writes
output/failure naming the signal, and exits 128+N, with no traceback.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.helpers.trees import TRAIN_CHANNEL, write_tree
from tests.integration.conftest import PYTHON, Launch, gone, sm_tree

pytestmark = pytest.mark.timeout(90)

# A package whose build never ends: pip runs this setup.py in a child of its own.
SLOW_SETUP = """\
import os, signal, sys
with open(os.environ["BUILD_READY"] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(os.environ["BUILD_READY"] + ".tmp", os.environ["BUILD_READY"])
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
while True:
    signal.pause()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_requirements_install(launch: Launch, tmp_path: Path, sig: int) -> None:
    base = sm_tree(tmp_path / "ml", "print('never runs')\n")
    pkg = base / "code" / "slowpkg"
    pkg.mkdir()
    (pkg / "setup.py").write_text(SLOW_SETUP)
    (base / "code" / "requirements.txt").write_text("./slowpkg\n")
    ready = tmp_path / "build-ready"
    job = launch(
        command=[PYTHON, "-m", "launcher", "train"],
        env={
            "SAGEMAKER_BASE_DIR": str(base),
            "BUILD_READY": str(ready),
            "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of "off": build with this venv
            "PIP_NO_INDEX": "1",
        },
    )
    job.wait_until(ready.exists, 60, "pip to run the package's build")
    build = int(ready.read_text())
    job.send(sig)
    assert job.wait(15) == 128 + sig, job.err
    assert gone(build), "the build pip started survived the launcher"
    failure = (base / "output" / "failure").read_text()
    assert signal.Signals(sig).name in failure.splitlines()[0]
    assert "Traceback" not in job.err
    assert not (base / "output" / "success").exists()


def two_host_tree(base: Path, current: str) -> Path:
    hps = {"sagemaker_torch_distributed_enabled": "true"}
    hosts = ["algo-1", "algo-2"]
    return write_tree(base, current, hosts, hps, "print('never runs')\n", channels=TRAIN_CHANNEL)


@pytest.mark.parametrize("current", ["algo-1", "algo-2"])
def test_a_stop_while_the_hosts_meet(launch: Launch, tmp_path: Path, current: str) -> None:
    """The leader waiting for a host that never comes, or a follower waiting for a leader
    that is not there: either one stops at once on SIGTERM, long before the peer timeout."""
    base = two_host_tree(tmp_path / "ml", current)
    leads = current == "algo-1"
    with socket.socket() as sock:  # a free port for the leader; a closed one for the follower
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job = launch(
        command=[PYTHON, "-m", "launcher", "train"],
        env={
            "SAGEMAKER_BASE_DIR": str(base),
            "LAUNCHER_PEER_TIMEOUT": "600",
            "LAUNCHER_LEADER_ADDR": "127.0.0.1",
            "LAUNCHER_CONTROL_PORT": str(port),
        },
    )
    waiting = "leading 2 hosts" if leads else "waiting for the leader"
    job.wait_until(lambda: waiting in job.err, 30, "the launcher to wait for its peers")
    job.send(signal.SIGTERM)
    assert job.wait(10) == 128 + signal.SIGTERM, job.err
    failure = (base / "output" / "failure").read_text()
    assert "SIGTERM" in failure.splitlines()[0]
    assert "Traceback" not in job.err
