"""Kubernetes pods: Kubeflow PyTorchJob (and Trainer v2), Indexed Job, JobSet. Pure.

Each pod runs one launcher. The host names are the pods' stable DNS names, computed alike in
every pod; they need not resolve yet when the launcher starts (a follower retries the
leader's name until the peer deadline, naming it in its progress lines).

PyTorchJob (training-operator v1): `PET_NNODES`, `PET_NODE_RANK` (else `RANK`, the pod index),
`PET_NPROC_PER_NODE`, `MASTER_ADDR` = `<job>-master-0`, `MASTER_PORT`. The hosts are
`<job>-master-0`, `<job>-worker-0` .. `<job>-worker-(N-2)`. Trainer v2 gives
`PET_MASTER_ADDR` = `<job>-node-0-0.<job>`: the hosts are `<job>-node-0-<i>.<job>`. Elastic
`PET_NNODES=min:max` is refused: the launcher's world is fixed.

Indexed Job: `JOB_COMPLETION_INDEX` (set by Kubernetes), the pod's host name
`<job>-<index>` (`HOSTNAME`), the node count and the headless Service (`subdomain`) from the
manifest: `LAUNCHER_NNODES` and `LAUNCHER_K8S_SUBDOMAIN`. Hosts: `<job>-<i>.<subdomain>`.

JobSet: one replicated job of `LAUNCHER_JOBSET_REPLICAS` Indexed Jobs with
`LAUNCHER_NNODES` pods in all; the pod's job index from the label
`jobset.sigs.k8s.io/job-index` (downward API into `LAUNCHER_JOBSET_JOB_INDEX`), the names
`LAUNCHER_JOBSET_NAME` and `LAUNCHER_JOBSET_RJOB`. Hosts:
`<jobset>-<rjob>-<j>-<i>.<subdomain>` (the subdomain defaults to the JobSet's name).
"""

from __future__ import annotations

from collections.abc import Mapping

from launcher.platforms.model import Kind, Platform, PlatformError, Source, integer, required

__all__ = ["detect_indexed_job", "detect_jobset", "detect_kubeflow", "is_indexed", "is_kubeflow"]

MAX_NODES = 65536


def is_kubeflow(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("PET_NNODES")) or all(
        environ.get(v) for v in ("MASTER_ADDR", "WORLD_SIZE", "RANK")
    )


def is_indexed(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("JOB_COMPLETION_INDEX"))


def detect_kubeflow(environ: Mapping[str, str]) -> Platform:
    """A PyTorchJob (or Trainer v2) pod. Raises `PlatformError` naming the variable."""
    k = Kind.KUBEFLOW
    sources: list[Source] = []
    master_var = "PET_MASTER_ADDR" if environ.get("PET_MASTER_ADDR") else "MASTER_ADDR"
    master = required(environ, k, master_var)
    if environ.get("PET_NNODES"):
        nnodes_text = environ["PET_NNODES"]
        if ":" in nnodes_text:
            raise PlatformError(
                k, "PET_NNODES", f"is elastic ({nnodes_text!r}); the launcher needs a fixed count"
            )
        nnodes, nnodes_var = integer(k, "PET_NNODES", nnodes_text, 1), "PET_NNODES"
    else:
        # Before training-operator#1840, WORLD_SIZE counted pods, not processes.
        nnodes = integer(k, "WORLD_SIZE", required(environ, k, "WORLD_SIZE"), 1)
        nnodes_var = "WORLD_SIZE (no PET_NNODES: pods)"
    rank_var = "PET_NODE_RANK" if environ.get("PET_NODE_RANK") else "RANK"
    node_rank = integer(k, rank_var, required(environ, k, rank_var))
    if nnodes > MAX_NODES or node_rank >= nnodes:
        raise PlatformError(k, rank_var, f"is {node_rank}, outside {nnodes} nodes")
    job, hosts = _kubeflow_hosts(k, master_var, master, nnodes)
    slots = None
    nproc = environ.get("PET_NPROC_PER_NODE", "")
    if nproc and nproc not in ("auto", "gpu"):
        slots = integer(k, "PET_NPROC_PER_NODE", nproc, 1)
        sources.append(Source("slots", str(slots), "PET_NPROC_PER_NODE"))
    port = 0
    if environ.get("MASTER_PORT") or environ.get("PET_MASTER_PORT"):
        port_var = "PET_MASTER_PORT" if environ.get("PET_MASTER_PORT") else "MASTER_PORT"
        port = integer(k, port_var, environ[port_var], 1)
        if port > 65535:
            raise PlatformError(k, port_var, f"is {port}, not a port")
        sources.append(Source("master_port", str(port), port_var))
    sources[:0] = [
        Source("hosts", ",".join(hosts), f"{master_var} {master!r} and {nnodes_var} {nnodes}"),
        Source("current_host", hosts[node_rank], f"{rank_var} {node_rank}"),
        Source("node_rank", str(node_rank), rank_var),
    ]
    _check_hostname(k, environ, hosts[node_rank])
    return Platform(
        k, hosts, hosts[node_rank], node_rank, f"kubeflow-{job}", tuple(sources), slots,
        master_port=port,
    )  # fmt: skip


def _kubeflow_hosts(k: Kind, var: str, master: str, nnodes: int) -> tuple[str, tuple[str, ...]]:
    short, dot, domain = master.partition(".")
    if short.endswith("-master-0") and not dot:
        job = short[: -len("-master-0")]
        return job, (master, *(f"{job}-worker-{i}" for i in range(nnodes - 1)))
    if short.endswith("-node-0-0"):
        job = short[: -len("-node-0-0")]
        return job, tuple(f"{job}-node-0-{i}{dot}{domain}" for i in range(nnodes))
    raise PlatformError(
        k, var, f"is {master!r}: neither <job>-master-0 (PyTorchJob) nor <job>-node-0-0.<job>"
    )


def detect_indexed_job(environ: Mapping[str, str]) -> Platform:
    """An Indexed Job pod. Raises `PlatformError` naming the variable."""
    k = Kind.INDEXED_JOB
    index = integer(k, "JOB_COMPLETION_INDEX", required(environ, k, "JOB_COMPLETION_INDEX"))
    nnodes = _nnodes(k, environ)
    if index >= nnodes:
        raise PlatformError(k, "JOB_COMPLETION_INDEX", f"is {index}, outside {nnodes} nodes")
    job, job_origin = _job_name(k, environ, index)
    subdomain = environ.get("LAUNCHER_K8S_SUBDOMAIN", "").strip()
    suffix = f".{subdomain}" if subdomain else ""
    hosts = tuple(f"{job}-{i}{suffix}" for i in range(nnodes))
    _check_hostname(k, environ, hosts[index])
    sources = (
        Source(
            "hosts", ",".join(hosts), f"<job>-<i>{'.<LAUNCHER_K8S_SUBDOMAIN>' if suffix else ''}"
        ),
        Source("job", job, job_origin),
        Source("current_host", hosts[index], "JOB_COMPLETION_INDEX"),
        Source("node_rank", str(index), "JOB_COMPLETION_INDEX"),
    )
    return Platform(k, hosts, hosts[index], index, f"indexed-job-{job}", sources)


def detect_jobset(environ: Mapping[str, str]) -> Platform:
    """A JobSet pod (one replicated job). Raises `PlatformError` naming the variable."""
    k = Kind.JOBSET
    index = integer(k, "JOB_COMPLETION_INDEX", required(environ, k, "JOB_COMPLETION_INDEX"))
    jobset = required(
        environ, k, "LAUNCHER_JOBSET_NAME", "downward API: the label jobset.sigs.k8s.io/jobset-name"
    )
    rjob = required(
        environ,
        k,
        "LAUNCHER_JOBSET_RJOB",
        "downward API: the label jobset.sigs.k8s.io/replicatedjob-name",
    )
    job_index = integer(
        k,
        "LAUNCHER_JOBSET_JOB_INDEX",
        required(
            environ,
            k,
            "LAUNCHER_JOBSET_JOB_INDEX",
            "downward API: the label jobset.sigs.k8s.io/job-index",
        ),
    )
    replicas = integer(
        k, "LAUNCHER_JOBSET_REPLICAS", environ.get("LAUNCHER_JOBSET_REPLICAS", "1"), 1
    )
    nnodes = _nnodes(k, environ)
    if nnodes % replicas:
        raise PlatformError(k, "LAUNCHER_NNODES", f"is {nnodes}, not a multiple of {replicas} jobs")
    per_job = nnodes // replicas
    if job_index >= replicas or index >= per_job:
        raise PlatformError(
            k,
            "LAUNCHER_JOBSET_JOB_INDEX",
            f"job {job_index} pod {index} is outside {replicas} x {per_job}",
        )
    subdomain = environ.get("LAUNCHER_K8S_SUBDOMAIN", "").strip() or jobset
    hosts = tuple(
        f"{jobset}-{rjob}-{j}-{i}.{subdomain}" for j in range(replicas) for i in range(per_job)
    )
    node_rank = job_index * per_job + index
    _check_hostname(k, environ, hosts[node_rank])
    sources = (
        Source("hosts", ",".join(hosts), "<jobset>-<rjob>-<j>-<i>.<subdomain>"),
        Source("current_host", hosts[node_rank], "LAUNCHER_JOBSET_JOB_INDEX, JOB_COMPLETION_INDEX"),
        Source("node_rank", str(node_rank), f"job index {job_index} x {per_job} + {index}"),
    )
    return Platform(k, hosts, hosts[node_rank], node_rank, f"jobset-{jobset}-{rjob}", sources)


def _nnodes(k: Kind, environ: Mapping[str, str]) -> int:
    nnodes = integer(
        k,
        "LAUNCHER_NNODES",
        required(environ, k, "LAUNCHER_NNODES", "set it in the manifest: the Job's completions"),
        1,
    )
    if nnodes > MAX_NODES:
        raise PlatformError(k, "LAUNCHER_NNODES", f"is {nnodes}, more than {MAX_NODES}")
    return nnodes


def _job_name(k: Kind, environ: Mapping[str, str], index: int) -> tuple[str, str]:
    """The Job's name: `LAUNCHER_K8S_JOB`, else the pod's host name less `-<index>`."""
    if environ.get("LAUNCHER_K8S_JOB"):
        return environ["LAUNCHER_K8S_JOB"].strip(), "LAUNCHER_K8S_JOB"
    host = required(environ, k, "HOSTNAME", "or set LAUNCHER_K8S_JOB to the Job's name")
    tail = f"-{index}"
    if not host.endswith(tail) or len(host) == len(tail):
        raise PlatformError(k, "HOSTNAME", f"is {host!r}, not <job>-{index}")
    return host[: -len(tail)], "HOSTNAME less -<JOB_COMPLETION_INDEX>"


def _check_hostname(k: Kind, environ: Mapping[str, str], host: str) -> None:
    """A pod's HOSTNAME, when set, is its name's first label: a mismatch means the index or
    the names are wrong, and the pods would disagree on who leads."""
    own = environ.get("HOSTNAME", "").strip()
    if own and own != host.split(".", 1)[0]:
        raise PlatformError(k, "HOSTNAME", f"is {own!r}, but this pod's index makes it {host!r}")
