"""`launcher local`: N simulated hosts on this machine, each a real `train` with a tree of its
own, started through one zygote (`cluster`, `zygote`) and supervised like any job."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from launcher import plan, settings
from launcher.app import RunOptions, execute, guarded
from launcher.local import cluster
from launcher.net import free_port
from launcher.plan import HostSlots, JobSpec, LaunchPlan, World
from launcher.settings import Backend

log = logging.getLogger("launcher")


def local(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`launcher local`: N simulated hosts on this machine, each a `train` with its own tree;
    the leader's exit code. Raises `UsageError` for a bad host count or script."""
    sources = settings.Sources(vars(args), environ, {})
    chosen = settings.resolve(sources, default_backend=Backend.TORCH)
    with guarded(dry_run=False, environ=environ, grace_s=chosen.grace_s) as scope:
        job = cluster.create(
            Path(args.job_dir).resolve(),
            n_hosts=args.hosts,
            procs_per_host=chosen.procs_per_host,
            script=Path(args.program).resolve(),
            args=list(args.args),
            backend=chosen.backend,
        )
        log.info("local job of %d hosts in %s", len(job.hosts), job.folder)
        port, token = free_port(), os.urandom(16).hex()
        hosts_file = cluster.write_host_envs(job, port, token)
        argv = tuple(cluster.zygote_argv(hosts_file))
        ranks = (plan.RankSpec(0, 0, job.hosts[0], argv, str(Path.cwd()), {}, ""),)
        spec = JobSpec(argv, str(Path.cwd()), Backend.NONE)
        world = World((HostSlots(job.hosts[0], 1),), 0, "127.0.0.1", port)
        # The hosts' `train` read the hang timeout from their environment (the zygote's, so this
        # one's): the command line's value wins over an inherited variable, as everywhere.
        host_environ = dict(environ)
        if args.hang_timeout is not None:
            host_environ["LAUNCHER_HANG_TIMEOUT"] = str(args.hang_timeout)
        if args.max_restarts is not None:
            host_environ["LAUNCHER_MAX_RESTARTS"] = str(chosen.max_restarts)
        if args.backend is not None:
            # The trees say torch or mpi (SageMaker's distribution hyperparameters); horovod
            # over gloo has no hyperparameter of its own, so `train` is told by its variable.
            host_environ["LAUNCHER_BACKEND"] = chosen.backend.value
        launch = LaunchPlan(spec, world, ranks, host_environ)
        options = RunOptions(grace_s=chosen.grace_s, prefix=False, fail_fast=False)
        result = execute(launch, options, scope)
    leader = result.outcome.exits.get(0)
    code = leader.returncode if leader is not None and leader.returncode > 0 else result.exit_code
    print(f"model: {job.model_dir}\nlogs:  {job.log_dir}\njob:   {job.folder}")
    if code:
        log.error("local job failed (exit %d); see %s/*/output/failure", code, job.folder)
    return code
