"""`--hosts-from`: the detection order, the SageMaker tree, a static host, and the SageMaker
configuration every platform is given as (so that ranks see the same `SM_*` set). Pure: the
environment and a reader of one file are arguments.

`auto` tries, first match wins: a SageMaker tree (`resourceconfig.json` exists), a Slurm job
(`SLURM_JOB_ID`), a Kubeflow pod (`PET_NNODES`, or `MASTER_ADDR` + `WORLD_SIZE` + `RANK`), a
JobSet pod (`JOB_COMPLETION_INDEX` and `LAUNCHER_JOBSET_NAME`), an Indexed Job pod
(`JOB_COMPLETION_INDEX`), else this host alone (`static`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from launcher.platforms import kubernetes, slurm
from launcher.platforms.model import Kind, Platform, PlatformError, Source
from launcher.sagemaker import config

__all__ = ["RESOURCE_CONFIG", "detect", "parse_kind"]

RESOURCE_CONFIG = "input/config/resourceconfig.json"  # under SAGEMAKER_BASE_DIR (/opt/ml)
Reader = Callable[[str], "str | None"]  # a path's text, None when it does not exist


def parse_kind(value: str) -> Kind:
    """A `--hosts-from` value. Raises ValueError listing the choices."""
    try:
        return Kind(value.strip().lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(k.value for k in Kind)}") from None


def detect(kind: Kind, environ: Mapping[str, str], read: Reader, node_name: str) -> Platform:
    """The platform `kind` (or the first that matches, for `auto`). Raises `PlatformError`
    naming the platform and the variable or file that is missing or wrong."""
    config_path = str(config.base_dir_from(environ) / RESOURCE_CONFIG)
    if kind is Kind.AUTO:
        kind = _auto(environ, read, config_path)
    match kind:
        case Kind.SAGEMAKER:
            return _sagemaker(read, config_path)
        case Kind.SLURM:
            return slurm.detect(environ)
        case Kind.KUBEFLOW:
            return kubernetes.detect_kubeflow(environ)
        case Kind.INDEXED_JOB:
            return kubernetes.detect_indexed_job(environ)
        case Kind.JOBSET:
            return kubernetes.detect_jobset(environ)
        case _:
            host = environ.get("LAUNCHER_HOST_NAME") or node_name
            origin = "LAUNCHER_HOST_NAME" if environ.get("LAUNCHER_HOST_NAME") else "node name"
            source = Source("current_host", host, origin)
            return Platform(Kind.STATIC, (host,), host, 0, f"static-{host}", (source,))


def _auto(environ: Mapping[str, str], read: Reader, config_path: str) -> Kind:
    if read(config_path) is not None:
        return Kind.SAGEMAKER
    if slurm.is_slurm(environ):
        return Kind.SLURM
    if kubernetes.is_kubeflow(environ):
        return Kind.KUBEFLOW
    if kubernetes.is_indexed(environ):
        return Kind.JOBSET if environ.get("LAUNCHER_JOBSET_NAME") else Kind.INDEXED_JOB
    return Kind.STATIC


def _sagemaker(read: Reader, path: str) -> Platform:
    """Hosts and this host from resourceconfig.json (the whole tree is `train`'s business)."""
    text = read(path)
    if text is None:
        raise PlatformError(Kind.SAGEMAKER, path, "does not exist")
    try:
        config = json.loads(text)
        hosts = tuple(config["hosts"])
        current = config["current_host"]
    except (ValueError, KeyError, TypeError) as e:
        raise PlatformError(Kind.SAGEMAKER, path, f"is not a resource config: {e}") from None
    if not hosts or not all(isinstance(h, str) and h for h in hosts) or current not in hosts:
        raise PlatformError(Kind.SAGEMAKER, path, "must list hosts that include current_host")
    sources = (
        Source("hosts", ",".join(hosts), f"{path}: hosts"),
        Source("current_host", current, f"{path}: current_host"),
        Source("node_rank", str(hosts.index(current)), "position of current_host in hosts"),
    )
    return Platform(Kind.SAGEMAKER, hosts, current, hosts.index(current), "sagemaker", sources)
