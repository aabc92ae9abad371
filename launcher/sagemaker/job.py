"""From a SageMaker tree to a runnable `JobSpec`: code, entry point, install, environment.

This is the front half of `train`: it fetches the code into `code/` when that is empty,
resolves and installs the entry point, and assembles what the user process sees (the SM_* set,
PYTHONPATH with the code directory first, CURRENT_HOST, SAGEMAKER_JOB_NAME, SAGEMAKER_REGION).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from launcher import procs
from launcher.containment import Containment
from launcher.errors import InstallError
from launcher.plan import Backend, JobSpec
from launcher.sagemaker import codesource, entrypoint, smenv
from launcher.sagemaker.config import JobConfig
from launcher.sagemaker.entrypoint import EntryPoint, Kind

log = logging.getLogger("launcher")


def entry_source(job: JobConfig, environ: Mapping[str, str]) -> str:
    """Where the entry point's name came from, for error messages."""
    if environ.get("SAGEMAKER_PROGRAM"):
        return "environment: SAGEMAKER_PROGRAM"
    return f"{job.paths.input_config_dir / 'hyperparameters.json'}: sagemaker_program"


def fetch_and_resolve(job: JobConfig, environ: Mapping[str, str], *, dry_run: bool) -> EntryPoint:
    """Bring the code into code/ (not in a dry run) and validate the entry point against it."""
    code_dir = job.paths.code_dir
    hps_file = job.paths.input_config_dir / "hyperparameters.json"
    source = entry_source(job, environ)
    if dry_run and (not code_dir.is_dir() or not any(code_dir.iterdir())):
        # Nothing may be written in a dry run: describe the entry point without fetching.
        if not job.entry_point:
            entrypoint.resolve("", code_dir, source)  # raises: no entry point configured
        kind = Kind.PYTHON_PROGRAM if job.entry_point.endswith(".py") else Kind.COMMAND
        return EntryPoint(job.entry_point, kind, code_dir)
    if not dry_run:
        what = codesource.prepare(code_dir, job.submit_dir, hps_file, environ)
        entry = entrypoint.resolve(job.entry_point, code_dir, source)
        log.info("%s", what)
        return entry
    return entrypoint.resolve(job.entry_point, code_dir, source)


def install(entry: EntryPoint, env: dict[str, str], scope: Containment | None = None) -> None:
    """Run the entry point's pip installs (in `scope`'s care); raises InstallError naming the
    failed command, or `StopRequested` (pip stopped first) when a stop signal arrives."""
    for argv in entrypoint.install_commands(entry, sys.executable):
        log.info("installing: %s (in %s)", " ".join(argv[3:]), entry.code_dir)
        returncode, tail = procs.run_once(argv, entry.code_dir, env, scope)
        if returncode != 0:
            lines = [line for line in tail.splitlines() if line.strip()]
            last = lines[-1].strip() if lines else ""
            what = "requirements" if entry.kind is Kind.PYTHON_PROGRAM else "package"
            raise InstallError(
                f"installing the {what} failed: pip exited with code {returncode}"
                + (f": {last}" if last else ""),
                hint=f"check {entry.requirements.name} and that the packages exist",
            )


def user_environment(
    job: JobConfig, *, num_gpus: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """The variables `train` adds for the user process (SM_*, PYTHONPATH and friends)."""
    env = smenv.sm_environment(
        job, num_gpus=num_gpus, num_cpus=os.cpu_count() or 1, environ=environ
    )
    # The toolkit exports its own sys.path behind the code directory; so do we.
    path = [str(job.paths.code_dir), *(p for p in sys.path if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    return env


def spec(
    job: JobConfig,
    entry: EntryPoint,
    backend: Backend,
    env: Mapping[str, str],
    error_dir: str,
) -> JobSpec:
    args = smenv.user_args(job.hyperparameters.user)
    command = entrypoint.command(entry, sys.executable, args)
    return JobSpec(
        command=tuple(command),
        cwd=str(job.paths.code_dir),
        backend=backend,
        env=env,
        user_args=len(args),
        error_dir=error_dir,
        interface=job.resources.network_interface_name if len(job.resources.hosts) > 1 else "",
    )
