"""`launcher doctor`: findings, what each backend needs, the exit code, and the rendering.

Pure logic runs against canned probe answers and a fixed list of interfaces; the probes
themselves run for real (the venv's python with torch, a python without site-packages, a
"python" that never answers, one that crashes), and so do the interface reader and the SageMaker
trees. Only NVML is faked, with a stand-in `pynvml` module, since this machine has no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from launcher import gpus, net, procs
from launcher.doctor import checks as doctor
from launcher.doctor import findings, hostfacts
from launcher.doctor.checks import Io
from launcher.doctor.findings import Finding, Report, Status
from launcher.doctor.hostfacts import GpuFacts
from launcher.net import Interface
from launcher.procs import Captured
from launcher.settings import Backend
from tests.helpers.procwatch import LeakWatch

REPO = Path(__file__).resolve().parents[2]
TORCH_OK = {"version": "2.13.0+cpu", "cuda": None, "gpus": 0, "nccl": False, "nccl_version": ""}
TORCH_OK["gloo"] = True
HOROVOD_OK = {"version": "0.28.1", "frameworks": ["torch"], "gloo": True, "mpi": True}
HOROVOD_OK["nccl"] = False
MPI4PY_OK = {"version": "4.1.2", "library": "Open MPI v4.1.4"}
IFACES = (Interface("lo", True, ("127.0.0.1/8",)), Interface("eth0", True, ("10.0.0.2/24",)))
NO_GPU = GpuFacts("no NVML (test)")


def canned(
    torch: Mapping[str, Any] = TORCH_OK,
    horovod: Mapping[str, Any] = HOROVOD_OK,
    mpi4py: Mapping[str, Any] = MPI4PY_OK,
) -> Callable[..., Captured]:
    """A runner answering the probes with fixed JSON and the tools with version lines."""

    def run(argv: list[str], *, env: Any = None, cwd: Any = None, timeout_s: float) -> Captured:
        if argv[1:2] == ["-c"]:
            program = argv[2]
            is_torch = 'import_module("torch")' in program
            answer = torch if is_torch else mpi4py if "mpi4py" in program else {}
            answer = horovod if "import pathlib, horovod" in program else answer
            return Captured(0, json.dumps(answer) + "\n", "")
        if argv[0].endswith("mpirun"):
            return Captured(0, "mpirun (Open MPI) 4.1.4\n", "")
        return Captured(0, "", "OpenSSH_9.2p1 Debian-2\n")

    return run


def fake_io(**changes: Any) -> Io:
    return Io(**{"run": canned(), "nvml": lambda: NO_GPU, "interfaces": lambda: IFACES, **changes})


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A small environment whose PATH holds stand-ins for mpirun and the OpenSSH programs."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for name in ("mpirun", "ssh", "sshd", "ssh-keygen"):
        (tools / name).touch(mode=0o755)
    return {"PATH": str(tools), "SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), **extra}


def tree(
    tmp_path: Path,
    *,
    hosts: tuple[str, ...] = ("algo-1", "algo-2"),
    current: str = "algo-1",
    hps: Mapping[str, Any] | None = None,
    interface: str = "eth0",
    entry: str = "train.py",
) -> Path:
    """A SageMaker tree under tmp_path/ml with code/train.py."""
    base = tmp_path / "ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "code").mkdir()
    (base / "code" / "train.py").write_text("print('hi')\n")
    hyper = {"sagemaker_program": json.dumps(entry), "sagemaker_job_name": '"j"', **(hps or {})}
    resources = {"current_host": current, "hosts": list(hosts), "network_interface_name": interface}
    for name, value in (("hyperparameters", hyper), ("resourceconfig", resources)):
        (base / "input" / "config" / f"{name}.json").write_text(json.dumps(value))
    (base / "input" / "config" / "inputdataconfig.json").write_text("{}")
    return base


def by_key(report: Report) -> dict[str, Finding]:
    return {f.key: f for f in report.findings}


TORCH_DIST = {"sagemaker_torch_distributed_enabled": "true"}


# --- what each backend needs, and the exit code ---


def test_a_host_with_everything_is_ready_for_every_backend(tmp_path: Path) -> None:
    for backend in Backend:
        report = doctor.collect(environ(tmp_path), backend.value, fake_io())
        assert report.backend is backend
        assert report.ready and report.exit_code == 0, findings.render_table(report)


def test_missing_mpirun_blocks_only_the_mpi_backend(tmp_path: Path) -> None:
    env = environ(tmp_path, PATH=str(tmp_path / "empty"))
    mpi = doctor.collect(env, "mpi", fake_io())
    found = by_key(mpi)["mpirun"]
    assert (found.status, found.required, found.blocking) == (Status.MISSING, True, True)
    assert mpi.exit_code == 1
    table = findings.render_table(mpi)
    assert "MISSING" in table and "apt-get install openmpi-bin" in table
    assert table.endswith("not ready for the mpi backend: mpi mpirun")  # one host: no ssh
    assert doctor.collect(env, "torch", fake_io()).exit_code == 0


def test_ssh_is_needed_only_by_a_multi_host_mpi_job(tmp_path: Path) -> None:
    env = environ(tmp_path, PATH=str(tmp_path / "empty"))
    tree(tmp_path, hps={"sagemaker_mpi_enabled": "true"})
    needed = {f.key for f in doctor.collect(env, None, fake_io()).findings if f.blocking}
    # sshd is also looked for in /usr/sbin and /sbin, where this machine may have it.
    assert {"mpirun", "ssh", "ssh-keygen"} <= needed <= {"mpirun", "ssh", "sshd", "ssh-keygen"}
    single = tmp_path / "one"
    tree(single, hosts=("algo-1",), hps={"sagemaker_mpi_enabled": "true"})
    env["SAGEMAKER_BASE_DIR"] = str(single / "ml")
    assert {f.key for f in doctor.collect(env, None, fake_io()).findings if f.blocking} == {
        "mpirun"
    }


def test_the_backend_and_ranks_are_decided_as_train_decides_them(tmp_path: Path) -> None:
    """An explicit backend makes the current instance group distribute (`train` and `plan`
    share that step with `doctor`): here one host of a heterogeneous cluster, no ssh."""
    from launcher import commands

    base = tree(tmp_path)
    groups = [
        {"instance_group_name": "a", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
        {"instance_group_name": "b", "instance_type": "ml.c5.xlarge", "hosts": ["algo-2"]},
    ]
    resources = {
        "current_host": "algo-1",
        "hosts": ["algo-1", "algo-2"],
        "current_group_name": "a",
        "instance_groups": groups,
        "network_interface_name": "eth0",
    }
    (base / "input" / "config" / "resourceconfig.json").write_text(json.dumps(resources))
    env = environ(tmp_path, PATH=str(tmp_path / "empty"), LAUNCHER_PROCS_PER_HOST="3")
    report = doctor.collect(env, "mpi", fake_io())
    prepared = commands.prepare(argparse.Namespace(backend="mpi"), env, base, dry_run=True)
    assert report.backend is prepared.backend is Backend.MPI
    assert by_key(report)["settings"].data["procs_per_host"] == prepared.slots == 3
    assert {f.key for f in report.findings if f.blocking} == {"mpirun"}  # one host: no ssh


def test_the_mpi_backend_needs_mpi4py(tmp_path: Path) -> None:
    missing = {"error": "ModuleNotFoundError: No module named 'mpi4py'", "missing": True}
    io = fake_io(run=canned(mpi4py=missing))
    report = doctor.collect(environ(tmp_path), "mpi", io)
    assert [f.key for f in report.findings if f.blocking] == ["mpi4py"]
    assert "pip install mpi4py" in by_key(report)["mpi4py"].fix
    assert doctor.collect(environ(tmp_path), "torch", io).ready


def test_horovod_without_gloo_controller_blocks_the_horovod_backend(tmp_path: Path) -> None:
    io = fake_io(run=canned(horovod={**HOROVOD_OK, "gloo": False}))
    report = doctor.collect(environ(tmp_path), "horovod", io)
    assert [f.key for f in report.findings if f.blocking] == ["horovod.gloo"]
    assert "HOROVOD_WITH_GLOO=1" in by_key(report)["horovod.gloo"].fix
    assert doctor.collect(environ(tmp_path), "torch", io).ready


def test_broken_gloo_names_the_interface_variable(tmp_path: Path) -> None:
    error = "RuntimeError: Unable to find address for: nope"
    io = fake_io(run=canned(torch={**TORCH_OK, "gloo_error": error}))
    found = by_key(doctor.collect(environ(tmp_path), "torch", io))["torch.gloo"]
    assert found.blocking and found.detail == error and "GLOO_SOCKET_IFNAME" in found.fix


# --- GPUs ---


def gpu(index: int) -> gpus.GpuInfo:
    return gpus.GpuInfo(index, "NVIDIA H100", 81559, f"GPU-{index}aaa", f"0000:0{index}:00.0", ())


def test_gpus_show_driver_cuda_and_what_cuda_visible_devices_leaves(tmp_path: Path) -> None:
    facts = GpuFacts("", "550.54.15", "12.4", (gpu(0), gpu(1)))
    env = environ(tmp_path, CUDA_VISIBLE_DEVICES="1")
    found = by_key(doctor.collect(env, None, fake_io(nvml=lambda: facts)))
    assert found["nvml"].detail == "driver 550.54.15, CUDA 12.4, 2 GPU(s)"
    assert found["gpu.1"].detail.endswith("visible as cuda:0") and found["gpu.1"].data["visible"]
    assert found["gpu.0"].detail.endswith("hidden by CUDA_VISIBLE_DEVICES=1")
    # torch (canned: a CPU build) sees no device although one is visible: say so.
    assert found["torch"].status is Status.WARN and "CUDA build" in found["torch"].fix
    assert found["torch.nccl"].status is Status.WARN


def test_every_gpu_hidden_is_a_warning(tmp_path: Path) -> None:
    facts = GpuFacts("", "550.54.15", "12.4", (gpu(0),))
    env = environ(tmp_path, NVIDIA_VISIBLE_DEVICES="none")
    found = by_key(doctor.collect(env, None, fake_io(nvml=lambda: facts)))["gpu.visible"]
    assert found.status is Status.WARN and "NVIDIA_VISIBLE_DEVICES=none" in found.fix


class FakeNvmlError(Exception):
    pass


def fake_pynvml(fail_init: bool = False) -> types.ModuleType:
    """A stand-in for nvidia-ml-py with two GPUs (there is no GPU on the test machine)."""
    module = types.ModuleType("pynvml")
    names = {0: b"NVIDIA A100", 1: "NVIDIA A100"}  # NVML returns bytes or str by version

    def init() -> None:
        if fail_init:
            raise FakeNvmlError("Driver Not Loaded")

    functions: dict[str, Any] = {
        "NVMLError": FakeNvmlError,
        "nvmlInit": init,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: b"535.104.05",
        "nvmlSystemGetCudaDriverVersion": lambda: 12020,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=40 << 30),
        "nvmlDeviceGetCpuAffinity": lambda h, n: [0b11 << (2 * h)],
        "nvmlDeviceGetName": lambda h: names[h],
        "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
        "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=f"0000:{h}:00.0"),
    }
    for name, value in functions.items():
        setattr(module, name, value)
    return module


def test_nvml_facts_reads_driver_cuda_and_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    # gpus.PynvmlProbe first loads the NVML library itself; any library stands in for it.
    monkeypatch.setattr(gpus, "NVML_LIBRARY", "libc.so.6")
    facts = hostfacts.nvml_facts()
    assert (facts.error, facts.driver, facts.cuda) == ("", "535.104.05", "12.2")
    assert [(g.name, g.memory_mib, g.cpu_affinity) for g in facts.devices] == [
        ("NVIDIA A100", 40960, (0, 1)),
        ("NVIDIA A100", 40960, (2, 3)),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    assert hostfacts.nvml_facts() == GpuFacts("no NVML (Driver Not Loaded)")


def test_real_nvml_answers_or_says_why_not() -> None:
    facts = hostfacts.nvml_facts()
    assert bool(facts.error) != bool(facts.driver), facts  # a CPU host here; a GPU host in CI-gpu
    assert facts.error or facts.devices


# --- network ---


def test_real_interfaces_include_loopback_with_its_address() -> None:
    found = {i.name: i for i in net.read_interfaces()}
    assert {name for _, name in socket.if_nameindex()} == set(found)
    assert found["lo"].up and "127.0.0.1/8" in found["lo"].addresses


@pytest.mark.parametrize(
    ("spec", "nccl", "selected"),
    [
        ("eth", True, ["eth0"]),  # NCCL: a prefix
        ("=eth", True, []),  # NCCL: exact names only
        ("=eth0", True, ["eth0"]),
        ("^lo", True, ["eth0"]),  # NCCL: all but these prefixes
        ("eth0,lo", False, ["lo", "eth0"]),  # gloo: exact names
        ("eth", False, []),
    ],
)
def test_interface_specs_select_like_nccl_and_gloo(
    spec: str, nccl: bool, selected: list[str]
) -> None:
    assert doctor._matching(spec, ["lo", "eth0"], nccl=nccl) == selected


def test_an_interface_variable_that_matches_nothing_blocks(tmp_path: Path) -> None:
    env = environ(tmp_path, NCCL_SOCKET_IFNAME="ib")
    found = by_key(doctor.collect(env, "torch", fake_io()))["net.NCCL_SOCKET_IFNAME"]
    assert found.blocking and found.fix == "set NCCL_SOCKET_IFNAME to one of: lo, eth0"
    assert doctor.collect(env, "none", fake_io()).ready


# --- the SageMaker tree and the settings ---


def test_a_multi_host_tree_is_resolved(tmp_path: Path) -> None:
    tree(tmp_path, current="algo-2", hps=TORCH_DIST)
    report = doctor.collect(environ(tmp_path), None, fake_io())
    found = by_key(report)
    assert report.backend is Backend.TORCH and report.ready
    assert found["job"].data["hosts"] == ["algo-1", "algo-2"]
    assert found["job"].data["leader"] == "algo-1" and "the leader is algo-1" in found["job"].detail
    assert found["job.entry"].detail.startswith("train.py (python program)")
    assert found["settings"].data == {"backend": "torch", "procs_per_host": 1}
    assert found["net.job"].detail == "eth0 selects eth0"


def test_the_job_interface_must_exist(tmp_path: Path) -> None:
    tree(tmp_path, hps=TORCH_DIST, interface="eth9")
    report = doctor.collect(environ(tmp_path), None, fake_io())
    found = by_key(report)["net.job"]
    assert found.blocking and found.fix == "set network_interface_name to one of: lo, eth0"
    # The user's own NCCL and gloo variables win over the tree's interface (plan.py's rule).
    env = environ(tmp_path, NCCL_SOCKET_IFNAME="eth0", GLOO_SOCKET_IFNAME="eth0")
    assert doctor.collect(env, None, fake_io()).ready


def test_a_broken_tree_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    tree(tmp_path, current="algo-9")
    report = doctor.collect(environ(tmp_path), None, fake_io())
    found = by_key(report)["job"]
    assert found.blocking and report.exit_code == 1
    assert "resourceconfig.json: current_host: 'algo-9' is not one of hosts" in found.detail


def test_a_missing_entry_point_blocks_every_backend(tmp_path: Path) -> None:
    tree(tmp_path, entry="nope.py")
    for backend in (None, "none", "torch"):
        report = doctor.collect(environ(tmp_path), backend, fake_io())
        assert [f.key for f in report.findings if f.blocking] == ["job.entry"]
        assert "does not exist" in by_key(report)["job.entry"].detail


def test_without_a_distribution_flag_train_runs_once_and_needs_no_torch(tmp_path: Path) -> None:
    tree(tmp_path)
    io = fake_io(run=canned(torch={"error": "ModuleNotFoundError: torch", "missing": True}))
    report = doctor.collect(environ(tmp_path), None, io)
    assert report.backend is Backend.NONE and report.ready
    assert by_key(report)["torch"].status is Status.MISSING


def test_a_bad_setting_names_its_source(tmp_path: Path) -> None:
    report = doctor.collect(environ(tmp_path, LAUNCHER_BACKEND="bogus"), None, fake_io())
    found = by_key(report)["settings"]
    assert found.blocking and found.detail.startswith("environment: LAUNCHER_BACKEND: 'bogus'")


def test_json_holds_every_finding(tmp_path: Path) -> None:
    report = doctor.collect(environ(tmp_path), "torch", fake_io())
    document = json.loads(findings.render_json(report))
    assert (document["backend"], document["ready"]) == ("torch", True)
    assert [f["key"] for f in document["findings"]] == [f.key for f in report.findings]
    torch = next(f for f in document["findings"] if f["key"] == "torch")
    assert (torch["area"], torch["status"], torch["required"]) == ("torch", "ok", True)


# --- the probes, for real ---


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.timeout(60)
def test_a_python_without_torch_blocks_the_torch_backend(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    bare = script(tmp_path, "python", f'exec {sys.executable} -S "$@"')  # no site-packages
    io = fake_io(run=procs.capture, python=bare)
    report = doctor.collect(environ(tmp_path, **no_leaks.env()), "torch", io)
    found = by_key(report)
    assert found["torch"].status is Status.MISSING and found["torch"].blocking
    assert "ModuleNotFoundError" in found["torch"].detail and "pip install" in found["torch"].fix
    assert found["horovod"].status is Status.MISSING and not found["horovod"].required
    assert report.exit_code == 1
    assert doctor.collect(environ(tmp_path), "none", io).exit_code == 0


@pytest.mark.timeout(60)
def test_probes_that_hang_or_crash_are_findings(tmp_path: Path, no_leaks: LeakWatch) -> None:
    # A child that never answers, with a grandchild: the whole group must go at the timeout.
    hangs = script(tmp_path, "hangs", f"{shutil.which('sleep')} 30 & wait")
    io = fake_io(run=procs.capture, python=hangs, timeout_s=0.5)
    found = by_key(doctor.collect(environ(tmp_path, **no_leaks.env()), "torch", io))
    assert found["torch"].status is Status.BROKEN
    assert found["torch"].detail.endswith("hangs gave no answer within 0.5 s")
    crashes = script(tmp_path, "crashes", "kill -SEGV $$")
    io = fake_io(run=procs.capture, python=crashes)
    found = by_key(doctor.collect(environ(tmp_path), "torch", io))
    assert found["mpi4py"].detail == "the probe exited with code -11: no output"
    io = fake_io(run=procs.capture, python=str(tmp_path / "absent"))
    assert "cannot start" in by_key(doctor.collect(environ(tmp_path), "torch", io))["torch"].detail


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_doctor_on_this_host_never_imports_torch(tmp_path: Path, no_leaks: LeakWatch) -> None:
    """The real thing end to end: venv python, torch and Horovod probes, tools, interfaces."""
    program = (
        "import os, sys\nfrom launcher.doctor import checks as doctor\n"
        "code = doctor.main(dict(os.environ), as_json=True)\n"
        "assert not {'torch', 'horovod', 'mpi4py'} & set(sys.modules), 'imported a framework'\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    for name in ("LAUNCHER_BACKEND", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, timeout=100
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    found = {f["key"]: f for f in json.loads(done.stdout)["findings"]}
    assert found["torch"]["status"] == "ok" and found["torch.gloo"]["status"] == "ok"
    assert "127.0.0.1/8" in found["if.lo"]["data"]["addresses"]
    assert found["settings"]["data"]["backend"] == "torch"
