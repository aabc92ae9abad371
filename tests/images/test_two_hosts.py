"""A 2-host job as two containers on one network: the torch backend and the `mpi` backend
(mpirun over the launcher's sshd, mpi4py in the image) with the example training job on each,
and the horovod backend (Horovod over gloo, built into the image) with a Horovod training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.images.conftest import HOSTS, ROOT, JobRun, job_trees, run_two_hosts
from tests.images.engine import Scope


def assert_job_succeeded(job: JobRun, backend_line: str) -> None:
    both = "\n".join(f"--- {h}\n{job.logs[h]}" for h in HOSTS)
    assert job.codes == dict.fromkeys(HOSTS, 0), both
    for host in HOSTS:
        assert (job.trees[host] / "output" / "success").exists(), host
        assert not (job.trees[host] / "output" / "failure").exists(), host
    assert (job.trees["algo-1"] / "model" / "model.pt").stat().st_size > 0
    assert (job.trees["algo-1"] / "model" / "code" / "inference.py").exists()
    assert not (job.trees["algo-2"] / "model" / "model.pt").exists(), "only rank 0 saves"
    assert backend_line in both, both


@pytest.mark.timeout(300)
def test_two_hosts_torch_backend(torch_job: JobRun) -> None:
    assert_job_succeeded(torch_job, "training on 2 rank(s)")
    assert "host algo-2 joined" in torch_job.logs["algo-1"]


@pytest.mark.timeout(300)
def test_two_hosts_mpi_backend(scope: Scope, tmp_path: Path) -> None:
    hps: dict[str, object] = {"sagemaker_mpi_enabled": True, "epochs": 2}
    job = run_two_hosts(scope, job_trees(tmp_path, hps))
    assert_job_succeeded(job, "training on 2 rank(s)")
    # The mpi path itself: the follower's sshd, the leader's ssh check, then one mpirun.
    assert "sshd ready on" in job.logs["algo-2"], job.logs["algo-2"]
    assert "ssh to 1 host(s) verified" in job.logs["algo-1"], job.logs["algo-1"]


@pytest.mark.timeout(300)
def test_two_hosts_horovod_backend(scope: Scope, tmp_path: Path) -> None:
    # tests/bin/hvd_train.py: DistributedOptimizer steps, then the weights allgathered; rank 0
    # writes Horovod's own view of the job.
    hps: dict[str, object] = {"out": "/opt/ml/output/data/hvd.json"}
    trees = job_trees(tmp_path, hps, ROOT / "tests" / "bin" / "hvd_train.py")
    job = run_two_hosts(scope, trees, env={"LAUNCHER_BACKEND": "horovod"})
    assert job.codes == dict.fromkeys(HOSTS, 0), job.logs
    result = json.loads((trees["algo-1"] / "output" / "data" / "hvd.json").read_text())
    assert result["controller"] == "gloo"
    assert result["size"] == 2 and result["weights_agree"]
    assert [r[5] for r in result["ranks"]] == ["algo-1", "algo-2"]
