"""The `horovod` backend's rendezvous: the leader hosts Horovod's own HTTP rendezvous server.

Horovod in gloo mode cannot start without the driver-side key-value server that horovodrun
runs (launchers.md §2.3). We import Horovod's `RendezvousServer` lazily (the launcher never
imports Horovod at module level), start it on a free port before the hosts meet so that the
port travels in the PLAN, and initialise it with the slot plan of `contract.horovod_slots`
(Horovod's `get_host_assignments` semantics, uneven slots included) once every host's slot
count is known. Ranks then get `HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT` through `plan.build`. No SSH
and no MPI are involved: every host starts its own ranks, as with the torch backend.

The server listens on every interface, unauthenticated, exactly like horovodrun's; it lives
for the job's duration and `stop()` ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from launcher import contract
from launcher.errors import LauncherError
from launcher.plan import World

log = logging.getLogger("launcher")


class HorovodMissing(LauncherError):
    """The horovod backend was asked for but Horovod is not importable on the leader."""


class RendezvousHost:
    """Horovod's rendezvous server, owned by the leader. Start, init with the slots, stop."""

    def __init__(self) -> None:
        self._server: Any = None
        self.port = 0

    def start(self) -> int:
        """Listen on a free port (all interfaces); returns it. Raises `HorovodMissing`."""
        try:
            from horovod.runner.http.http_server import RendezvousServer  # noqa: PLC0415
        except ImportError as e:
            raise HorovodMissing(
                f"the horovod backend needs Horovod on the leader: {e}",
                hint="install horovod with PyTorch and Gloo (scripts/install-horovod.sh)",
            ) from None
        self._server = RendezvousServer(verbose=0)
        self.port = int(self._server.start())
        return self.port

    def init(self, hosts: Sequence[tuple[str, int]]) -> None:
        """Tell the server each scope's size: `hosts` are (HOROVOD_HOSTNAME, slots) in order."""
        # The server reads only the SlotInfo attributes HorovodSlot has under the same names.
        self._server.init(contract.horovod_slots(list(hosts)))
        log.info("horovod rendezvous on port %d for %d host(s)", self.port, len(hosts))

    def attach(self, world: World) -> World:
        """Initialise the server with the agreed world; on one host also point the ranks at it
        (a multi-host world already carries the address from the PLAN)."""
        self.init([(h.name, h.slots) for h in world.hosts])
        if world.horovod_rendezvous is None:
            return dataclasses.replace(world, horovod_rendezvous=("127.0.0.1", self.port))
        return world

    def stop(self) -> None:
        """Stop serving and close the listening socket; idempotent."""
        if self._server is not None:
            self._server.stop()
            # RendezvousServer.stop() leaves the socket to the garbage collector: close it now.
            with contextlib.suppress(AttributeError, OSError):
                self._server._httpd.server_close()
            self._server = None
