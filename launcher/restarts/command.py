"""Whole-job restarts as steps of the commands: the attempt loop's `Job` for `train` and
`launcher run` (`attempt_job`), each command's meeting per attempt (`train_attempts`,
`run_attempts`; `platforms.launch` has its own), and the backend's rendezvous per attempt
(`AttemptRendezvous`: Horovod's server). `commands` imports this module only for a
job that asked for restarts or a checkpoint folder (`commands._restarting`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import plan
from launcher.app import RunOptions
from launcher.commands import (
    Prepared,
    _options,
    _single_host,
    backend_setup,
    preflight_extra,
    world_for,
)
from launcher.containment import Containment
from launcher.events import Events
from launcher.plan import JobSpec, World
from launcher.restarts import attempts
from launcher.sagemaker import config
from launcher.settings import Backend, Settings

if TYPE_CHECKING:
    from launcher.horovod import RendezvousHost


class AttemptRendezvous:
    """A backend's own rendezvous, afresh for every attempt: Horovod's server (the leader's;
    nothing for the torch and none backends, whose rendezvous is the attempt's fresh master
    port).

    Every attempt after the first gets a new server on a new port, carried by that attempt's
    PLAN, so that no rank of attempt k+1 can meet attempt k's keys; the previous attempt's
    server is stopped then (`restarts.attempts` meets again only once every rank of the
    previous attempt is gone) and the last one by `close`. `first` is a server the caller
    already started, attached and announced for attempt 0.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        multi: bool,
        leads: bool,
        environ: dict[str, str],
        first: RendezvousHost | None = None,
    ) -> None:
        self._backend = backend
        self._multi = multi
        self._leads = leads
        self._environ = environ
        self._server = first
        self._fresh = False  # whether the server was started by `begin` (and needs attaching)

    def begin(self, attempt: int) -> Mapping[str, Any]:
        """Start `attempt`'s server (the previous one stopped); what the leader's PLAN adds.
        Raises `LauncherError` when the server cannot start."""
        if attempt == 0 and self._server is not None:
            self._fresh = False
            return {}
        self.close()
        setup = backend_setup(
            self._backend, multi=self._multi, leads=self._leads, environ=self._environ
        )
        self._server, self._fresh = setup.horovod, setup.horovod is not None
        return setup.plan_extra

    def attach(self, world: World) -> World:
        """`world` with this attempt's server initialised (and, on one host, its address)."""
        if self._server is None or not self._fresh:
            return world
        return self._server.attach(world)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def attempt_job(
    spec: JobSpec,
    chosen: Settings,
    options: RunOptions,
    base: Path,
    host: str,
    *,
    output_dir: Path | None,
    environ: Mapping[str, str],
) -> attempts.Job:
    """The `restarts.attempts.Job` of `train` or `run`: what every attempt shares."""
    from launcher.restarts import checkpoints  # noqa: PLC0415 - its tree reader is lazy

    # A follower hears the leader's word once the leader's ranks are gone (at most the grace
    # period and the kill wait), or learns that the leader is lost (the heartbeat timeout).
    timeout = chosen.grace_s + 15.0 + 2 * chosen.heartbeat_timeout_s
    return attempts.Job(
        spec=spec,
        options=options,
        max_restarts=chosen.max_restarts,
        checkpoint_dir=checkpoints.folder(chosen.checkpoint_dir, base),
        host=host,
        verdict_timeout_s=timeout,
        output_dir=output_dir,
        environ=environ,
    )


def train_attempts(prepared: Prepared, environ: dict[str, str], scope: Containment) -> int:
    """`train` with restarts: every attempt meets the hosts again (`restarts.attempts`)."""
    output_dir = prepared.cfg.paths.output_dir
    options = _options(
        prepared.chosen, prefix=prepared.backend is not Backend.NONE, keep_dir=output_dir
    )
    job = attempt_job(
        prepared.spec,
        prepared.chosen,
        options,
        prepared.cfg.paths.base,
        prepared.host,
        output_dir=output_dir,
        environ=environ,
    )

    rendezvous = AttemptRendezvous(
        prepared.backend, multi=prepared.multi, leads=prepared.leads, environ=environ
    )

    def meet(attempt: int, events: Events) -> attempts.Met:
        checked = attempt == 0 and prepared.chosen.preflight != "off"
        extra = {**rendezvous.begin(attempt), **(preflight_extra(prepared) if checked else {})}
        world, member = world_for(prepared, events=events, plan_extra=extra, attempt=attempt)
        world = rendezvous.attach(world)
        if checked:  # once, before the first attempt's user code; its failure is not retried
            launch = plan.build(prepared.spec, world, environ, os.cpu_count() or 1)
            from launcher.preflight import command as preflight  # noqa: PLC0415 - --preflight

            preflight.run_preflight(launch, prepared, member, extra, events=events, scope=scope)
        return attempts.Met.of(world, member, attempt)

    try:
        return attempts.run(job, meet, scope)
    finally:
        rendezvous.close()


def run_attempts(
    spec: JobSpec,
    world: World,
    chosen: Settings,
    environ: dict[str, str],
    *,
    scope: Containment,
    out: Path | None,
    first: RendezvousHost | None = None,
) -> int:
    """`launcher run` with restarts: each attempt on a fresh free port (unless one is set),
    with a fresh Horovod server for the horovod backend (`first`: attempt 0's, already in
    `world`)."""
    base = config.base_dir_from(environ)
    options = _options(chosen, keep_dir=out)
    job = attempt_job(spec, chosen, options, base, world.host.name, output_dir=out, environ=environ)
    host, slots = world.host.name, world.host.slots

    rendezvous = AttemptRendezvous(
        chosen.backend, multi=False, leads=True, environ=environ, first=first
    )

    def meet(attempt: int, events: Events) -> attempts.Met:
        rendezvous.begin(attempt)
        fresh = world if not attempt else _single_host(host, slots, chosen.master_port, False)
        return attempts.Met(rendezvous.attach(fresh), None, attempt)

    try:
        return attempts.run(job, meet, scope)
    finally:
        rendezvous.close()
