"""examples/kubernetes: every manifest validates against the Kubernetes schemas
(kubernetes-validate bundles them; strict: an unknown or misspelt field fails), and each asks
for the platform whose contract the launcher reads (tests/multihost/test_platforms.py runs
those contracts).

PyTorchJob and JobSet are custom resources whose schemas the validator does not bundle: their
pod templates (and JobSet's Job template) are validated as the core `PodTemplate` and `Job`
they become; the custom resource's own fields are checked here by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "kubernetes"
VERSION = "1.30"  # a Kubernetes release current clusters run; the schemas are in the wheel
PLATFORMS = REPO / "launcher" / "platforms"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(template["spec"]["containers"])


def check_platform(template: dict[str, Any], platform: str) -> None:
    """The launcher runs with `--hosts-from platform`, and every LAUNCHER_* variable the
    manifest sets is one the platform code reads or a documented setting."""
    (container,) = containers(template)
    command = container["command"]
    assert command[:4] == ["launcher", "run", "--hosts-from", platform]
    source = "".join(p.read_text() for p in PLATFORMS.glob("*.py"))
    source += (REPO / "launcher" / "settings.py").read_text()
    for env in container.get("env", []):
        if env["name"].startswith("LAUNCHER_"):
            assert f'"{env["name"]}"' in source, env["name"]


def test_the_schemas_catch_a_misspelt_field() -> None:
    (secret,) = documents("secret.yaml")
    validate(secret)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**secret, "stringDatta": {}})


def test_indexed_job() -> None:
    service, job = documents("indexed-job.yaml")
    validate(service)
    validate(job)
    assert job["spec"]["completionMode"] == "Indexed"
    template = job["spec"]["template"]
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    check_platform(template, "indexed-job")


def test_pytorchjob() -> None:
    (job,) = documents("pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    assert specs["Master"]["replicas"] == 1
    for spec in specs.values():
        validate(pod_template(spec["template"]))
        check_platform(spec["template"], "kubeflow")


def test_jobset() -> None:
    (jobset,) = documents("jobset.yaml")
    assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    (rjob,) = jobset["spec"]["replicatedJobs"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t"}, **rjob["template"]}
    validate(job)
    check_platform(rjob["template"]["spec"]["template"], "jobset")
