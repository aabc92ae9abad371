"""`launcher stacks`: the current stack of every rank of the jobs running on this host (every
host's, through the leader of a multi-host job), taken without stopping anything."""

from __future__ import annotations

import argparse
import logging
import sys

from launcher.hangs import job as hangjob
from launcher.hangs import ondemand

log = logging.getLogger("launcher")


def stacks(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """`launcher stacks`: print the current stack of every rank of every job running on this
    host (or of the launcher `--pid`), found through the folder where running launchers
    announce their jobs (`launcher.hangs.job.registry_dir`). Stops nothing: py-spy where
    ptrace is allowed, else the ranks' stack signal. Returns 0, or 1 when no job runs here.

    The leader of a multi-host job answers for every host (`launcher.hangs.ondemand`: each
    follower takes its own ranks' stacks when asked over the control channel); a follower's
    launcher found beside its leader (`launcher local`) is then not printed twice. `--local`:
    this host's ranks only."""
    jobs = [(pid, f) for pid, f in hangjob.running_jobs(environ) if args.pid in (None, pid)]
    if not jobs:
        where = f" with launcher pid {args.pid}" if args.pid is not None else ""
        log.error(
            "no running job%s on this host (looked in %s)", where, hangjob.registry_dir(environ)
        )
        return 1
    infos = {pid: hangjob.job_info(folder) for pid, folder in jobs}
    led = {info.get("run_id") for info in infos.values() if info.get("leader")}
    for pid, folder in jobs:
        info = infos[pid]
        everyone = None
        if not args.local and info.get("leader"):
            path = ondemand.socket_path(hangjob.registry_dir(environ), pid)
            everyone = ondemand.ask(path, ondemand.ASK_TIMEOUT_S)
        elif not args.local and info.get("run_id") in led and info.get("run_id"):
            continue  # its leader, running here too, prints this host's ranks
        if everyone is not None:
            print(f"# job of launcher {pid} (every host, through the leader)")
            print(everyone.rstrip())
        else:
            text = hangjob.stacks_text(folder)
            ranks = sum(line.startswith("# rank ") for line in text.splitlines())
            print(f"# job of launcher {pid}: {ranks} rank(s)")
            if text:
                print(text)
        sys.stdout.flush()
    return 0
