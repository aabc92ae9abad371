"""Hang detection for one run of this host's ranks: the wiring of the building blocks.

`JobWatch.prepare` runs before the ranks start: it creates every rank's progress and stack
file in `<run dir>/progress/` (the run dir is the job's private folder: the log dir when one
is given, else a temporary folder its command removes), the flight-recorder folder, and the
entry that lets `launcher stacks` find the job (`registry_dir()/<launcher pid>`, a link to
the progress folder, removed by `close`). `rank_env` is what each rank gets on top of its
environment (never a variable the user set). `start` starts the `Monitor`, whose verdict
goes to the supervisor's queue as a `HangDeclared` event; the supervisor then calls `judge`
(stacks, suspects, the culprit line) before it stops anything, or `remote` when another host
declared the hang, so that every host keeps its own ranks' stacks.

Each host judges its own ranks. With several hosts, a host whose ranks show no culprit (they
all wait in the same collective, as the healthy hosts' ranks do) defers its verdict by one
window, so that the host holding the culprit names it first and its line reaches every host
through the control channel (`judge(..., final=False)` returns None).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.events import HangReport
from launcher.hangs import flightrec, progress
from launcher.hangs.progress import ProgressReader, RankFiles
from launcher.hangs.verdict import NS, Hung, Policy, RankProgress, Suspect, Tracker, suspects
from launcher.hangs.watch import Monitor

# Taking, writing and serving stacks happens after a verdict or on request: every launch
# would pay their import (some 3 ms of CPU) for nothing. Each use imports them.
if TYPE_CHECKING:
    from launcher.hangs import ondemand, stacks

log = logging.getLogger("launcher")

STACKS = "stacks"
PROGRESS = "progress"
JOB_FILE = "job.json"
REGISTRY = "launcher-running"
STACK_TIMEOUT_S = 5.0  # per method; py-spy answers in well under a second when it can
_ONLY = "the only rank"


def registry_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where running launchers announce their jobs to `launcher stacks`: `$TMPDIR/launcher-
    running` (one entry per launcher pid)."""
    env = os.environ if environ is None else environ
    return Path(env.get("TMPDIR") or "/tmp") / REGISTRY  # noqa: S108 - 0700, checked owner


class JobWatch:
    """Hang detection for one run; `close` always (idempotent)."""

    def __init__(
        self,
        folder: Path,
        files: Mapping[int, RankFiles],
        hosts: Mapping[int, str],
        policy: Policy,
        *,
        stacks_dir: Path,
        flight_dir: Path,
        multi: bool,
        registered: Path | None,
        flight_kept: bool = True,
        leader: bool = False,
    ) -> None:
        self.folder = folder
        self.files = dict(files)
        self.hosts = dict(hosts)
        self.policy = policy
        self.stacks_dir = stacks_dir
        self.flight_dir = flight_dir
        self.multi = multi
        self._registered = registered
        self._flight_kept = flight_kept  # False: in the run dir, which its command removes
        self.leader = leader  # of a multi-host job: `serve` answers `launcher stacks` for all
        self._server: ondemand.StacksServer | None = None
        self._monitor: Monitor | None = None
        self._taken: dict[int, stacks.RankStack] | None = None
        self._started = time.time()

    @classmethod
    def prepare(
        cls,
        run_dir: Path,
        hosts: Mapping[int, str],
        policy: Policy,
        *,
        log_dir: Path | None,
        keep_dir: Path | None,
        multi: bool,
        run_id: str = "",
        leader: bool = False,
    ) -> JobWatch:
        """Create the files of every rank in `hosts` (rank -> host name) under `run_dir`.

        Stacks go to `<log dir>/stacks`, else `<keep_dir>/stacks` (the output folder), else a
        `stacks` folder beside the run dir that is kept. Raises `OSError` when a file cannot
        be created (the caller runs the job without hang detection then)."""
        host = next(iter(hosts.values()), "")
        # One folder per host: the simulated hosts of `launcher local` share one log dir.
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in host) or "host"
        folder = run_dir / PROGRESS / safe
        files = progress.prepare(folder, sorted(hosts))
        base = log_dir if log_dir is not None else keep_dir
        if base is None:
            base = run_dir.parent / f"{run_dir.name}-{STACKS}"
            stacks_dir = base
        else:
            stacks_dir = base / STACKS
        flight = flightrec.folder(log_dir if log_dir is not None else run_dir)
        flight.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / JOB_FILE).write_text(
            json.dumps(
                {
                    "launcher_pid": os.getpid(),
                    "host": host,
                    "hosts": hosts,
                    "run_id": run_id,
                    "leader": leader,  # of a multi-host job: answers for every host
                }
            )
        )
        registered = _register(folder)
        return cls(
            folder,
            files,
            hosts,
            policy,
            stacks_dir=stacks_dir,
            flight_dir=flight,
            multi=multi,
            registered=registered,
            flight_kept=log_dir is not None,
            leader=leader,
        )

    def rank_env(self, rank: int, user: Mapping[str, str]) -> dict[str, str]:
        """The variables rank `rank` gets on top of `user` (what it would get without them):
        its progress and stack files, and the flight recorder's, none the user set."""
        ours = {**self.files[rank].env(), **flightrec.environment(user, self.flight_dir.parent)}
        return {k: v for k, v in ours.items() if k not in user}

    def start(self, post: Callable[[Hung], None]) -> None:
        """Start watching; `post` gets the verdict once, from the monitor's thread."""
        self._monitor = Monitor({r: f.progress for r, f in self.files.items()}, self.policy, post)
        self._monitor.start()

    def judge(self, hung: Hung, pids: Mapping[int, int], *, final: bool) -> HangReport | None:
        """Take every rank's stack (once), name the suspects, write the stacks: the report.

        None when this host should defer (several hosts, not `final`, and nothing here
        singles a rank out: the culprit is likely elsewhere)."""
        taken = self._stacks(hung.ranks, pids)
        found = self._suspects(hung, taken)
        if self.multi and not final and not found:
            log.warning(
                "no progress for %.0f s, but no rank of this host singles itself out: "
                "waiting one more window for the other hosts' verdict",
                hung.quiet_s,
            )
            return None
        from launcher.hangs import summary  # noqa: PLC0415 - after a verdict only

        line = summary.culprit_line(hung, found, taken, self.hosts)
        return HangReport(line, self._details(hung, found, taken))

    def _suspects(self, hung: Hung, taken: Mapping[int, stacks.RankStack]) -> tuple[Suspect, ...]:
        """`verdict.suspects` of this host's ranks. With several hosts, "the only rank" says
        nothing (this host's ranks are not the job's), but a rank whose stack is outside any
        collective does, even when every rank of this host is: the other hosts' wait."""
        found = suspects(hung, taken)
        if not self.multi or any(r != _ONLY for s in found for r in s.reasons):
            return found
        outside = [r for r, s in sorted(taken.items()) if s.ok and not s.in_collective]
        return tuple(Suspect(r, ("stack outside any collective",)) for r in outside)

    def remote(self, pids: Mapping[int, int]) -> str:
        """Another host declared the hang: take this host's stacks before its ranks are
        stopped; the details for the report (this host's ranks, where the stacks are)."""
        with ProgressReader({r: f.progress for r, f in self.files.items()}) as reader:
            samples = reader.read()
        now = time.monotonic_ns()
        state = Tracker(self.policy).observe(samples, now)
        alive = state.alive_ns or now
        hung = Hung((now - alive) / NS, state.window_s(), self.policy.automatic, now, samples)
        taken = self._stacks(samples, pids)
        return self._details(hung, (), taken)

    def serve(self, provide: Callable[[], str]) -> None:
        """Answer `launcher stacks` with `provide()` (every host's stacks) on this job's
        socket beside its registry entry, until `close`. Without a registry entry: nothing."""
        if self._registered is None:
            return
        from launcher.hangs import ondemand  # noqa: PLC0415 - the leader of a watched job

        server = ondemand.StacksServer(
            ondemand.socket_path(self._registered.parent, os.getpid()), provide
        )
        if server.start():
            self._server = server

    def progress_count(self) -> int:
        """Progress events this host's ranks reported so far, all ranks together (whole-job
        restarts: did the attempt make progress?). Files that cannot be read count 0."""
        with ProgressReader({r: f.progress for r, f in self.files.items()}) as reader:
            return sum(sample.count for sample in reader.read())

    def close(self) -> None:
        """Stop the monitor and withdraw the job from `launcher stacks`. Idempotent."""
        if self._monitor is not None:
            self._monitor.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._registered is not None:
            with contextlib.suppress(OSError):
                self._registered.unlink()
            self._registered = None

    def _stacks(
        self, samples: Sequence[RankProgress], pids: Mapping[int, int]
    ) -> dict[int, stacks.RankStack]:
        if self._taken is None:
            from launcher.hangs import stacks  # noqa: PLC0415 - after a verdict only

            targets = [
                stacks.Target(
                    s.rank,
                    s.pid or pids.get(s.rank, 0),
                    self.files[s.rank].stacks,
                    s.stack_signal,
                )
                for s in samples
                if s.pid or pids.get(s.rank)
            ]
            self._taken = stacks.collect(targets, timeout_s=STACK_TIMEOUT_S)
        return self._taken

    def _details(
        self, hung: Hung, found: Sequence[Suspect], taken: Mapping[int, stacks.RankStack]
    ) -> str:
        from launcher.hangs import stacks, summary  # noqa: PLC0415 - after a verdict only

        written: Path | None = None
        try:
            stacks.write(self.stacks_dir, taken, self.hosts)
            written = self.stacks_dir
        except OSError as e:
            log.error("cannot write the stacks into %s: %s", self.stacks_dir, e.strerror)
        dumps = self._dumps()
        return summary.details(hung, found, taken, self.hosts, stacks_dir=written, dumps=dumps)

    def _dumps(self) -> tuple[Path, ...]:
        """The flight-recorder dumps of this run; those in a folder its command removes are
        copied beside the stacks first."""
        found = flightrec.find_dumps([str(self.flight_dir / flightrec.PREFIX)], since=self._started)
        if not found or self._flight_kept:
            return found
        import shutil  # noqa: PLC0415 - only after a hang with dumps: every launch skips it

        kept = []
        for dump in found:
            target = self.stacks_dir.parent / flightrec.FOLDER / dump.name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dump, target)
                kept.append(target)
            except OSError:
                kept.append(dump)
        return tuple(kept)


def _register(folder: Path) -> Path | None:
    """Announce the job to `launcher stacks`: `registry_dir()/<pid>` -> `folder`. None when
    the registry is not ours or not writable (the job runs on; only `stacks` cannot find it)."""
    root = registry_dir()
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        if root.stat().st_uid != os.getuid():
            return None
        link = root / str(os.getpid())
        with contextlib.suppress(FileNotFoundError):
            link.unlink()  # a launcher of the same pid that was killed before it cleaned up
        link.symlink_to(folder.resolve())
    except OSError as e:
        log.debug("launcher stacks will not find this job: %s", e)
        return None
    return link


def running_jobs(environ: Mapping[str, str] | None = None) -> list[tuple[int, Path]]:
    """(launcher pid, progress folder) of every job announced on this host whose launcher is
    alive, by pid."""
    root = registry_dir(environ)
    jobs = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            with contextlib.suppress(OSError):
                jobs.append((pid, entry.resolve(strict=True)))
    return sorted(jobs)


def job_info(folder: Path) -> dict[str, object]:
    """The job's announcement in progress folder `folder` (`JOB_FILE`); {} when unreadable."""
    try:
        info = json.loads((folder / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def stacks_text(folder: Path) -> str:
    """Every attached rank's stack in `folder`, taken now without stopping anything, as
    `launcher stacks` prints it: a header line per rank, then its stack."""
    hosts, taken = current_stacks(folder)
    lines = []
    for rank, stack in taken.items():
        on = f" on {hosts[rank]}" if hosts.get(rank) else ""
        how = f"taken with {stack.method}" if stack.ok else f"no stack: {stack.error}"
        lines.append(f"# rank {rank}{on}, pid {stack.pid}: {how}")
        if stack.text:
            lines.append(stack.text.rstrip())
    return "\n".join(lines)


def current_stacks(folder: Path) -> tuple[dict[int, str], dict[int, stacks.RankStack]]:
    """Every attached rank's stack in the progress folder `folder`, taken now without
    stopping anything: (rank -> host, rank -> stack). Ranks not attached yet are left out."""
    try:
        announced = job_info(folder).get("hosts", {})
        hosts = {int(r): str(h) for r, h in announced.items()}  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        hosts = {}
    paths = {}
    for path in folder.glob("rank-*.progress"):
        with contextlib.suppress(ValueError):
            paths[int(path.stem.split("-", 1)[1])] = path
    with ProgressReader(paths) as reader:
        samples = reader.read()
    from launcher.hangs import stacks  # noqa: PLC0415 - `launcher stacks` and its server only

    targets = [
        stacks.Target(s.rank, s.pid, folder / f"rank-{s.rank}.stacks", s.stack_signal)
        for s in samples
        if s.pid
    ]
    return hosts, stacks.collect(targets, timeout_s=STACK_TIMEOUT_S)
