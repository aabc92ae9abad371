"""The leader's side of the `mpi` backend's SSH: await every follower's sshd and prove it.

Each follower reports `{addr, port, hostkey}` over the control channel (`messages.SshdReady`,
posted here as a `PeerMessage`). For each report the leader adds the host to its per-job `ssh
-F` configuration and known_hosts (`sshd.client_config`, `sshd.known_hosts`), starts one SSH
master connection to it (`sshd.master_argv`, supervised like a rank) and logs in once over that
connection (`ssh host true`). mpirun's own ssh connections later multiplex over the same
masters, so each follower costs one SSH handshake. Transient network errors are retried with
backoff until the deadline; a refused key or host key fails at once. Everything waits on the
events queue: no sleep loops, and an ABORT from elsewhere ends the wait.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from launcher import procs
from launcher.containment import Containment
from launcher.control.messages import SshdReady
from launcher.errors import EXIT_PEERS, JobAborted, LauncherError, SpawnError
from launcher.events import Events, PeerMessage, RemoteAbort, SshdChecked
from launcher.mpi import ssh as sshd
from launcher.plan import World

log = logging.getLogger("launcher")

STOP_GRACE_S = 2.0


class SshdUnreachable(LauncherError):
    """A follower's sshd never became usable; names the host and why. Exit 3 (peers)."""

    exit_code = EXIT_PEERS


def await_sshd(
    events: Events,
    world: World,
    folder: Path,
    masters: dict[str, procs.Helper],
    *,
    deadline: float,
    scope: Containment,
    environ: dict[str, str],
) -> list[sshd.SshPeer]:
    """Every follower's sshd, reported and proven with a login, before the peer deadline.

    For each report an ssh master connection is started (`sshd.master_argv`); the login check
    and later mpirun multiplex over it, so each follower costs one SSH handshake, not two.
    Each master goes into `masters` before it starts: the caller closes every one of them
    (`procs.Helper.close`) when the job ends, by any path."""
    waiting = {h.name for h in world.hosts[1:]}
    started = time.monotonic()
    peers: dict[str, sshd.SshPeer] = {}
    ready: set[str] = set()
    while ready != waiting:
        try:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            missing = sorted(waiting - ready)
            what = "; ".join(
                f"{h}: {'no login yet' if h in peers else 'no sshd report'}" for h in missing
            )
            raise SshdUnreachable(
                f"sshd on {', '.join(missing)} never became reachable within "
                f"{time.monotonic() - started:.0f} s ({what})",
                hint="check that sshd (openssh-server) runs on every host and that the leader "
                "reaches the followers' job interface; raise LAUNCHER_PEER_TIMEOUT if slow",
            ) from None
        match event:
            case RemoteAbort(reason=reason, exit_code=code):
                raise JobAborted(reason, exit_code=code)
            case PeerMessage(host=host, message=SshdReady() as report):
                if host not in waiting or host in peers:
                    continue
                try:
                    peer = sshd.peer_from_message(host, report)
                except ValueError as e:
                    raise SshdUnreachable(
                        str(e), hint="run the same ml-launcher version on every host"
                    ) from None
                peers[host] = peer
                write_client(folder, list(peers.values()))
                label = f"{world.host.name} ssh {peer.host}"
                argv = sshd.master_argv(folder / "ssh_config", peer.host)
                # Its exit matters only to `check` (through `running`): a queue nobody reads.
                masters[peer.host] = procs.Helper(
                    label, argv, folder, environ, queue.SimpleQueue(), scope=scope
                )
                threading.Thread(
                    target=check,
                    args=(events, folder, peer.host, masters[peer.host]),
                    kwargs={"deadline": deadline, "environ": environ},
                    daemon=True,
                    name=f"ssh-check-{peer.host}",
                ).start()
            case SshdChecked(host=host, ok=ok, detail=detail):
                if not ok:
                    raise SshdUnreachable(
                        f"cannot log in to {host} over ssh: {detail}",
                        hint="the host's sshd answered but refused our per-job key or host key",
                    )
                ready.add(host)
    log.info(
        "ssh to %d host(s) verified %.3f s after the plan", len(ready), time.monotonic() - started
    )
    return [peers[h.name] for h in world.hosts[1:]]


def write_client(folder: Path, peers: list[sshd.SshPeer]) -> None:
    """The leader's ssh configuration and known_hosts for the peers reported so far."""
    # known_hosts first: a config naming a host is only ever read with its key in place.
    sshd.write_private(folder / "known_hosts", sshd.known_hosts(peers))
    sshd.write_private(folder / "ssh_config", sshd.client_config(folder, peers))


_FATAL_SSH = ("Permission denied", "Host key verification failed", "IDENTIFICATION HAS CHANGED")


def check(
    events: Events,
    folder: Path,
    host: str,
    master: procs.Helper,
    *,
    deadline: float,
    environ: dict[str, str],
) -> None:
    """Bring up the master connection to `host` (retrying transient network errors until the
    deadline), then log in over it once: the result goes to the events queue as `SshdChecked`,
    also when ssh cannot be started at all or the master was closed meanwhile."""
    config = folder / "ssh_config"
    socket_path = sshd.control_path(folder, host)
    delay = 0.05
    while True:
        try:
            master.start()
        except SpawnError as e:
            events.put(SshdChecked(host, False, str(e)))
            return
        if sshd.poll_until(socket_path.exists, deadline, alive=master.running):
            code, tail = sshd.check_login(config, host, environ, master.scope)
            detail = last_line(tail) or f"ssh exited with {code}"
            events.put(SshdChecked(host, code == 0, detail))
            return
        tail = master.log_tail()
        detail = last_line(tail) or "no answer"
        master.stop(STOP_GRACE_S)
        if any(marker in tail for marker in _FATAL_SSH) or time.monotonic() + delay >= deadline:
            events.put(SshdChecked(host, False, detail))
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def last_line(text: str) -> str:
    """The last non-blank line of `text` (ssh's error is its last line), or ""."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
