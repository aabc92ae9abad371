"""Slurm's host-list grammar (`launcher.platforms.hostlist`) against the real `scontrol`.

The corpus under tests/data/hostlists was recorded with `scontrol show hostnames` of Slurm
22.05.8 (Debian 12's slurm-wlm): `valid.jsonl` holds each list and the names scontrol printed,
`invalid.txt` the lists scontrol refuses ("Invalid hostlist"). Where `scontrol` is installed
(CI installs slurm-wlm), every case is also checked against it live.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.platforms.hostlist import MAX_RANGE, HostlistError, expand

DATA = Path(__file__).resolve().parents[1] / "data" / "hostlists"
VALID: list[tuple[str, tuple[str, ...]]] = [
    (case["list"], tuple(case["hosts"]))
    for case in map(json.loads, (DATA / "valid.jsonl").read_text().splitlines())
]
INVALID = (DATA / "invalid.txt").read_text().splitlines()
# scontrol needs a configuration to start, even to expand a host list; nothing is contacted.
SLURM_CONF = (
    "ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n"
)


def test_the_corpus_is_large_enough() -> None:
    assert len(VALID) >= 40
    assert len(INVALID) >= 20


@pytest.mark.parametrize(("text", "hosts"), VALID, ids=[t for t, _ in VALID])
def test_expands_as_scontrol_did(text: str, hosts: tuple[str, ...]) -> None:
    assert expand(text) == hosts


@pytest.mark.parametrize("text", INVALID)
def test_refuses_what_scontrol_refuses(text: str) -> None:
    with pytest.raises(HostlistError):
        expand(text)


@pytest.mark.parametrize("text", ["n[1-]", "n[ 1-2]", "n[1-2", "n[1-2]]x", "n[\u0661-\u0662]"])
def test_refuses_what_slurm_only_guesses_at(text: str) -> None:
    """Slurm reads `n[1-]` as n1 and `n[1-2` as `n]`; a launcher must not guess hosts."""
    with pytest.raises(HostlistError):
        expand(text)


def test_a_range_is_bounded() -> None:
    assert len(expand(f"n[1-{MAX_RANGE}]")) == MAX_RANGE
    with pytest.raises(HostlistError, match="more than"):
        expand("n[1-300][1-300][1-300]")


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="slurm-wlm is not installed")
def test_the_corpus_matches_the_installed_scontrol(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(SLURM_CONF)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for text, hosts in VALID:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", text],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        assert tuple(out.stdout.split()) == hosts == expand(text), text
    for text in INVALID:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", text],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert "Invalid hostlist" in out.stdout + out.stderr, text
