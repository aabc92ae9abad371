"""`launcher doctor`: what this host offers a training job, and what to do about what is missing.

`collect(environ, backend, io)` gathers `Finding`s: the GPUs NVML sees (driver and CUDA versions)
and which of them the visibility variables leave, the network interfaces and those the job names,
whether torch (gloo, NCCL), Horovod (frameworks, controllers, rendezvous server), mpirun, mpi4py,
ssh and sshd are usable, and the resolved SageMaker tree with the launcher's settings. Every
finding that is not OK says what to do. `Report.exit_code` is 0 when everything the chosen backend
needs is there, 1 otherwise. Nothing here raises for a broken host: a `ConfigError`, a missing
program or a crashing probe becomes a finding.

The launcher never imports torch, Horovod or mpi4py: each is probed by a fixed `python -c` program
in a child process (`procs.capture`, with a timeout). The I/O sits behind the fields of `Io`, so
tests replace only what needs hardware (NVML).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher import commands, gpus, procs
from launcher.doctor.findings import Finding, Report, Status, render_json, render_table
from launcher.doctor.hostfacts import (
    HOROVOD_PROBE,
    MPI4PY_PROBE,
    PROBE_TIMEOUT_S,
    TORCH_PROBE,
    GpuFacts,
    nvml_facts,
)
from launcher.errors import ConfigError, SpawnError
from launcher.net import Interface, read_interfaces
from launcher.sagemaker import config, job
from launcher.settings import Backend


@dataclass(frozen=True, slots=True)
class Io:
    """The host, seen through small functions; tests replace those that need hardware."""

    python: str = field(default_factory=lambda: sys.executable)  # what ranks run with
    run: Callable[..., procs.Captured] = procs.capture  # argv, env=, cwd=, timeout_s=
    nvml: Callable[[], GpuFacts] = nvml_facts
    interfaces: Callable[[], tuple[Interface, ...]] = read_interfaces
    timeout_s: float = PROBE_TIMEOUT_S


_BASE = frozenset({"job", "job.entry", "settings"})
_DISTRIBUTED = _BASE | {"net.job", "net.NCCL_SOCKET_IFNAME", "net.GLOO_SOCKET_IFNAME"}
_TORCH = _DISTRIBUTED | {"torch", "torch.gloo"}
_SSH = frozenset({"ssh", "sshd", "ssh-keygen"})
NEEDS: Mapping[Backend, frozenset[str]] = {
    Backend.NONE: _BASE,
    Backend.TORCH: _TORCH,
    Backend.HOROVOD: _TORCH | {"horovod", "horovod.torch", "horovod.gloo", "horovod.rendezvous"},
    Backend.MPI: _DISTRIBUTED | {"mpirun", "mpi4py"} | _SSH,  # python runs as `-m mpi4py`
}


def main(environ: Mapping[str, str], *, as_json: bool = False, backend: str | None = None) -> int:
    """Print the report on stdout (a table, or JSON); 0 when the backend has what it needs."""
    report = collect(environ, backend, Io())
    print(render_json(report) if as_json else render_table(report))
    return report.exit_code


def collect(environ: Mapping[str, str], backend: str | None, io: Io) -> Report:
    """Every finding, `required` set from the chosen backend's needs. A broken tree, a bad
    setting, a missing program or a failing probe is a finding, not an exception."""
    with ThreadPoolExecutor(max_workers=4) as pool:  # the probes are processes: overlap them
        torch_probe = pool.submit(_python_probe, io, environ, TORCH_PROBE)
        horovod_probe = pool.submit(_python_probe, io, environ, HOROVOD_PROBE)
        mpi4py_probe = pool.submit(_python_probe, io, environ, MPI4PY_PROBE)
        tools = pool.submit(_tools, io, environ)
        facts = io.nvml()
        visible = gpus.discover(environ, _Fixed(facts.devices)) if not facts.error else ()
        chosen, cfg, job_findings = _job(environ, backend, len(visible))
        findings = [
            *_gpu_findings(facts, visible, environ),
            *_network_findings(io.interfaces(), environ, cfg),
            *_torch_findings(torch_probe.result(), io.python, len(visible)),
            *_horovod_findings(horovod_probe.result(), len(visible)),
            *tools.result(),
            _mpi4py_finding(mpi4py_probe.result()),
            *job_findings,
        ]
    needs = NEEDS[chosen]
    if cfg is None or len(cfg.distribution_hosts) < 2:
        needs -= _SSH  # one host: mpirun starts its ranks without ssh
    return Report(chosen, tuple(replace(f, required=f.key in needs) for f in findings))


class _Fixed:
    def __init__(self, devices: Sequence[gpus.GpuInfo]) -> None:
        self._devices = devices

    def devices(self) -> Sequence[gpus.GpuInfo]:
        return self._devices


def _gpu_findings(
    facts: GpuFacts, visible: Sequence[gpus.GpuInfo], environ: Mapping[str, str]
) -> list[Finding]:
    if facts.error:
        fix = "on a GPU host: install the NVIDIA driver; in docker: run with --gpus all"
        return [Finding("nvml", "NVML", Status.INFO, f"{facts.error}: a CPU host", fix)]
    detail = f"driver {facts.driver}, CUDA {facts.cuda}, {len(facts.devices)} GPU(s)"
    versions = {"driver": facts.driver, "cuda": facts.cuda}
    out = [Finding("nvml", "NVML", Status.OK, detail, data=versions)]
    masks = " ".join(f"{v}={environ[v]}" for v in _VISIBILITY_VARS if v in environ)
    for gpu in facts.devices:
        seen = gpu in visible
        where = f"visible as cuda:{visible.index(gpu)}" if seen else f"hidden by {masks}"
        detail = f"{gpu.name}, {gpu.memory_mib} MiB, {gpu.uuid}, bus {gpu.pci_bus_id}; {where}"
        status = Status.OK if seen else Status.INFO
        data = {"uuid": gpu.uuid, "visible": seen, "memory_mib": gpu.memory_mib}
        out.append(Finding(f"gpu.{gpu.index}", f"GPU {gpu.index}", status, detail, data=data))
    if facts.devices and not visible:
        fix = f"unset or correct {masks}"
        out.append(Finding("gpu.visible", "visible GPUs", Status.WARN, "none: CPU ranks", fix))
    return out


def _network_findings(
    interfaces: Sequence[Interface], environ: Mapping[str, str], cfg: config.JobConfig | None
) -> list[Finding]:
    out = []
    for i in interfaces:
        detail = f"{'up' if i.up else 'down'}: {', '.join(i.addresses) or 'no address'}"
        status = Status.OK if i.up and i.addresses else Status.INFO
        data = {"up": i.up, "addresses": list(i.addresses)}
        out.append(Finding(f"if.{i.name}", i.name, status, detail, data=data))
    names = [i.name for i in interfaces if i.addresses]
    wanted = [(v, environ[v]) for v in _IFNAME_VARS if environ.get(v)]
    if cfg is not None and len(cfg.resources.hosts) > 1 and len(wanted) < len(_IFNAME_VARS):
        wanted.append(("job", cfg.resources.network_interface_name))  # what the plan sets
    for key, spec in wanted:
        label = "network_interface_name" if key == "job" else key
        matched = _matching(spec, names, nccl=key.startswith("NCCL"))
        detail = f"{spec} selects {', '.join(matched)}" if matched else f"{spec} has no address"
        status = Status.OK if matched else Status.BROKEN
        fix = f"set {label} to one of: {', '.join(names)}"
        out.append(Finding(f"net.{key}", label, status, detail, fix))
    return out


_IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
_VISIBILITY_VARS = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def _matching(spec: str, names: Sequence[str], *, nccl: bool) -> list[str]:
    """Interfaces `spec` selects: exact names (gloo), or NCCL's prefixes with `=` and `^`."""
    exclude, exact = nccl and spec.startswith("^"), not nccl or spec.startswith("=")
    entries = [e.strip() for e in spec.lstrip("^=").split(",") if e.strip()]
    if exclude:
        return [n for n in names if not any(n.startswith(e) for e in entries)]
    return [n for n in names if any(n == e or (not exact and n.startswith(e)) for e in entries)]


def _python_probe(io: Io, environ: Mapping[str, str], program: str) -> dict[str, Any]:
    """The probe's JSON answer, or {"error": ...} when it could not run or answer."""
    done = _command(io, environ, [io.python, "-c", program])
    if isinstance(done, str):
        return {"error": done}
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"the probe exited with code {done.returncode}: {last}"}


def _command(io: Io, environ: Mapping[str, str], argv: list[str]) -> procs.Captured | str:
    """What the command printed, or why it gave nothing (could not start, timed out)."""
    try:  # cwd /: a torch/ folder in the current directory must not shadow the real one
        done = io.run(argv, env=environ, cwd=Path("/"), timeout_s=io.timeout_s)
    except SpawnError as e:
        return str(e)
    if done.returncode is None:
        return f"{Path(argv[0]).name} gave no answer within {io.timeout_s:g} s"
    return done


def _torch_findings(probe: Mapping[str, Any], python: str, n_gpus: int) -> list[Finding]:
    install = "pip install '.[torch]' in a checkout of ml-launcher, or the torch build you need"
    if "error" in probe:
        status = Status.MISSING if probe.get("missing") else Status.BROKEN
        return [Finding("torch", "torch", status, f"{python}: {probe['error']}", install)]
    cuda = probe["cuda"] or "none (a CPU build)"
    detail = f"{probe['version']}, CUDA {cuda}, sees {probe['gpus']} CUDA device(s)"
    fix = f"NVML shows {n_gpus} visible GPU(s): install a CUDA build of torch for this driver"
    status = Status.WARN if probe["gpus"] < n_gpus else Status.OK
    out = [Finding("torch", "torch", status, detail, fix, data=dict(probe))]
    fix = "set GLOO_SOCKET_IFNAME to an interface with an address, or make the hostname resolve"
    if probe.get("gloo_error"):
        out.append(Finding("torch.gloo", "gloo", Status.BROKEN, probe["gloo_error"], fix))
    elif probe["gloo"]:
        out.append(Finding("torch.gloo", "gloo", Status.OK, "a one-rank all_reduce works"))
    else:
        out.append(Finding("torch.gloo", "gloo", Status.MISSING, "not built", install))
    if probe["nccl"]:
        out.append(Finding("torch.nccl", "NCCL", Status.OK, probe["nccl_version"] or "built"))
    else:
        fix = "GPU ranks need NCCL: install a CUDA build of torch"
        status = Status.WARN if n_gpus else Status.INFO
        out.append(Finding("torch.nccl", "NCCL", status, "not in this torch build", fix))
    return out


def _horovod_findings(probe: Mapping[str, Any], n_gpus: int) -> list[Finding]:
    build = 'build it against this torch: scripts/install-horovod.sh "$VIRTUAL_ENV"'
    if "error" in probe:
        status = Status.MISSING if probe.get("missing") else Status.BROKEN
        return [Finding("horovod", "horovod", status, probe["error"], build)]
    built = ", ".join(probe["frameworks"]) or "no framework"
    out = [Finding("horovod", "horovod", Status.OK, f"{probe['version']}, built for {built}")]
    if probe.get("torch_error"):
        out.append(
            Finding("horovod.torch", "torch framework", Status.BROKEN, probe["torch_error"], build)
        )
    else:
        ops = "NCCL operations" if probe["nccl"] else "no NCCL operations"
        status = Status.WARN if n_gpus and not probe["nccl"] else Status.OK
        fix = f"for GPUs: HOROVOD_GPU_OPERATIONS=NCCL {build}"
        out.append(Finding("horovod.torch", "torch framework", status, f"loads; {ops}", fix))
        for name in ("gloo", "mpi"):
            status = Status.OK if probe[name] else Status.MISSING
            detail = "controller built" if probe[name] else "controller not built"
            fix = f"HOROVOD_WITH_{name.upper()}=1 {build}"
            out.append(Finding(f"horovod.{name}", f"{name} controller", status, detail, fix))
    error = probe.get("rendezvous_error")
    status, detail = (Status.BROKEN, error) if error else (Status.OK, "RendezvousServer imports")
    return [*out, Finding("horovod.rendezvous", "rendezvous", status, detail, build)]


def _tools(io: Io, environ: Mapping[str, str]) -> list[Finding]:
    """mpirun and OpenSSH as the mpi backend finds them (LAUNCHER_MPIRUN, LAUNCHER_SSHD, PATH,
    sshd in /usr/sbin too), each asked for its version."""
    path = environ.get("PATH", "")
    out = []
    for key, flag, package in (
        ("mpirun", "--version", "openmpi-bin"),
        ("ssh", "-V", "openssh-client"),
        ("sshd", "-V", "openssh-server"),
        ("ssh-keygen", "", "openssh-client"),
    ):
        fix = f"apt-get install {package} (Debian, Ubuntu)"
        program = environ.get(f"LAUNCHER_{key.upper()}", "") if key in ("mpirun", "sshd") else ""
        where = shutil.which(program or key, path=path + (":/usr/sbin" if key == "sshd" else ""))
        done = _command(io, environ, [where, flag]) if where and flag else where
        if done is None:
            out.append(Finding(key, key, Status.MISSING, f"{program or key} not found", fix))
        elif isinstance(done, str):
            status = Status.OK if done == where else Status.BROKEN
            out.append(Finding(key, key, status, done, fix))
        else:
            text = done.stdout + done.stderr
            found = re.search(r"Open MPI\)? [\d.]+|OpenSSH_[\w.]+", text)
            version = found.group(0).replace(")", "") if found else text.strip()[:80]
            status = Status.WARN if key == "mpirun" and "Open MPI" not in text else Status.OK
            fix = "the mpi backend passes Open MPI's flags: install Open MPI"
            out.append(Finding(key, key, status, f"{version} ({where})", fix))
    return out


def _mpi4py_finding(probe: Mapping[str, Any]) -> Finding:
    if "error" in probe:
        status = Status.MISSING if probe.get("missing") else Status.BROKEN
        fix = "pip install mpi4py (it loads the system libmpi: apt-get install openmpi-bin)"
        return Finding("mpi4py", "mpi4py", status, probe["error"], fix)
    return Finding("mpi4py", "mpi4py", Status.OK, f"{probe['version']} on {probe['library']}")


def _job(
    environ: Mapping[str, str], cli_backend: str | None, n_gpus: int
) -> tuple[Backend, config.JobConfig | None, list[Finding]]:
    """The backend `train` (or `launcher run`) would use, the tree when it loads, findings."""
    base = config.base_dir_from(environ)
    out: list[Finding] = []
    cfg = None
    if not (base / "input" / "config").is_dir():
        detail = f"none at {base} (fine for `launcher run` and `launcher local`)"
        out.append(Finding("job", "SageMaker tree", Status.INFO, detail))
    else:
        try:
            cfg = config.load(base, environ)
        except ConfigError as e:
            fix = e.hint or "correct it: `train` would exit 2 with this line"
            out.append(Finding("job", "SageMaker tree", Status.BROKEN, e.message, fix))
    try:  # the settings, the backend and the ranks exactly as `train` decides them
        chosen = commands.settings_for({"backend": cli_backend}, environ, cfg)
    except ConfigError as e:
        default = Backend.NONE if cfg else Backend.TORCH  # `train`'s, else `launcher run`'s
        fix = e.hint or "correct the value named here (see docs/usage.md)"
        return default, cfg, [*out, Finding("settings", "settings", Status.BROKEN, str(e), fix)]
    cfg, backend = commands.choose_backend(cfg, chosen) if cfg else (None, chosen.backend)
    slots = commands.host_slots(backend, chosen, n_gpus)
    token = "LAUNCHER_JOB_TOKEN" if chosen.job_token else "derived from the job (not a secret)"
    detail = (
        f"backend {backend.value}, {slots} process(es) on this host, grace {chosen.grace_s:g} s,"
        f" peer timeout {chosen.peer_timeout_s:g} s, heartbeat timeout"
        f" {chosen.heartbeat_timeout_s:g} s, control port {chosen.control_port}, token {token}"
    )
    data = {"backend": backend.value, "procs_per_host": slots}
    out.append(Finding("settings", "settings", Status.OK, detail, data=data))
    return backend, cfg, out + (_tree_findings(cfg, environ, backend) if cfg else [])


def _tree_findings(
    cfg: config.JobConfig, environ: Mapping[str, str], backend: Backend
) -> list[Finding]:
    res = cfg.resources
    role = "the leader" if cfg.is_master else f"the leader is {cfg.master_host}"
    outside = "" if cfg.in_distribution else "; outside the distribution groups: runs once"
    detail = f"{cfg.paths.base}: hosts {', '.join(res.hosts)}; this is {res.current_host} ({role})"
    data = {
        "base_dir": str(cfg.paths.base),
        "hosts": list(res.hosts),
        "current_host": res.current_host,
        "leader": cfg.master_host,
        "distribution_hosts": list(cfg.distribution_hosts),
        "entry_point": cfg.entry_point,
        "backend": backend.value,
        "network_interface_name": res.network_interface_name,
    }
    out = [Finding("job", "SageMaker tree", Status.OK, detail + outside, data=data)]
    try:
        entry = job.fetch_and_resolve(cfg, environ, dry_run=True)  # dry run: reads, never writes
    except ConfigError as e:
        return [*out, Finding("job.entry", "entry point", Status.BROKEN, e.message, e.hint)]
    fetched = entry.code_dir.is_dir() and any(entry.code_dir.iterdir())
    later = "" if fetched else f", fetched from {cfg.submit_dir} when the job starts"
    detail = f"{entry.name} ({entry.kind.value}) in {entry.code_dir}{later}"
    return [*out, Finding("job.entry", "entry point", Status.OK, detail)]
