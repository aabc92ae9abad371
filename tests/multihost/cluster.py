"""A simulated cluster for tests: N hosts as network namespaces on one bridge.

Topology (machine-notes.md sections 4, 5 and 7): a switch namespace ``mlt-<pid>-<o>-sw`` holds
bridge ``br0``; each host namespace ``mlt-<pid>-<o>-h<i>`` has an ``eth0`` veth into it with
address ``10.200.<o>.<i>/24``. ``<pid>`` is the creating process and ``<o>`` an octet not used by
any other cluster on the machine, so concurrent runs never collide and leftovers of dead runs
can be recognised (``sweep_stale``). Each host gets ``/etc/netns/<ns>/hosts`` mapping every
simulated host name (``algo-1`` .. ``algo-N``) to its address, and every command runs with its
own UTS hostname set to the host's name.

Everything the cluster starts carries ``MLT_CLUSTER_ID=<prefix>`` in its environment. ``close``
kills every process it started, everything else inside its namespaces (what ``ip netns pids``
lists, found by namespace identity so that it works after deletion too) and anything carrying
that variable; then deletes the namespaces and ``/etc/netns`` entries and raises
``ClusterLeakError`` if anything is left. Requires root, iproute2 and util-linux (unshare).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from tests.helpers.procwatch import is_alive, pids_with_env, signal_all, wait_gone
from tests.helpers.waiting import poll_until

ID_VAR = "MLT_CLUSTER_ID"
NETNS_ETC = Path("/etc/netns")
_RUN_NETNS = Path("/run/netns")
_NAME_RE = re.compile(r"^mlt-(\d+)-(\d+)-(sw|h\d+)$")
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Sets the UTS hostname from $1, then execs the real argv: nothing is pasted into the script.
_IN_HOST_SH = 'hostname "$1" && shift && exec "$@"'


class ClusterError(RuntimeError):
    """Setting up or driving the simulated cluster failed; the message names the step."""


class ClusterLeakError(ClusterError):
    """Teardown finished but namespaces, files or processes were left behind."""


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: ``name`` resolves to ``address`` on every host of the cluster."""

    index: int
    name: str
    netns: str
    address: str


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """Names and addresses of a cluster, computed before anything is created."""

    prefix: str
    switch_netns: str
    hosts: tuple[Host, ...]

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.switch_netns, *(h.netns for h in self.hosts))

    def hosts_file(self) -> str:
        """The ``/etc/hosts`` every host sees: localhost plus every simulated host."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{h.address} {h.name}" for h in self.hosts]
        return "\n".join(lines) + "\n"


def plan_cluster(
    n_hosts: int, owner_pid: int, octet: int, names: Sequence[str] = ()
) -> ClusterPlan:
    """Pure: the plan for ``n_hosts`` hosts on ``10.200.<octet>.0/24``.

    Raises ValueError for a host count outside 1..250, an octet outside 0..255, or names that
    are not valid host names or do not match the host count.
    """
    if not 1 <= n_hosts <= 250 or not 0 <= octet <= 255:
        raise ValueError(f"need 1..250 hosts and an octet in 0..255, got {n_hosts}, {octet}")
    names = tuple(names) or tuple(f"algo-{i}" for i in range(1, n_hosts + 1))
    bad = [n for n in names if not _HOSTNAME_RE.match(n)]
    if len(names) != n_hosts or bad or len(set(names)) != n_hosts:
        raise ValueError(f"need {n_hosts} distinct valid host names, got {names!r}")
    prefix = f"mlt-{owner_pid}-{octet}"
    hosts = tuple(
        Host(i, name, f"{prefix}-h{i}", f"10.200.{octet}.{i}")
        for i, name in enumerate(names, start=1)
    )
    return ClusterPlan(prefix, f"{prefix}-sw", hosts)


def list_netns() -> list[str]:
    """Names of the existing network namespaces."""
    out = _ip("netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed (rc {proc.returncode}): {proc.stderr}")
    return proc.stdout


def netns_key(netns: str) -> tuple[int, int] | None:
    """Identity (device, inode) of a named namespace, or None if there is no such name."""
    return _ns_key(_RUN_NETNS / netns)


def _ns_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(keys: Collection[tuple[int, int]]) -> set[int]:
    """Live pids whose network namespace is one of ``keys`` (what ``ip netns pids`` reports).

    Works from the namespace's identity, so it still finds processes after the name was deleted.
    """
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ns_key(entry / "ns" / "net") in keys:
            found.add(int(entry.name))
    return {p for p in found if is_alive(p)}


def _remove_namespaces(names: Collection[str]) -> None:
    """Kill everything inside ``names``, delete them and their /etc/netns entries."""
    keys = {k for ns in names if (k := netns_key(ns))}
    pids = pids_in_netns(keys)
    signal_all(pids, signal.SIGKILL)
    wait_gone(pids, 5.0)
    existing = set(list_netns())
    for ns in names:
        if ns in existing:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Delete clusters whose creating process is gone (a crashed run); return their names."""
    stale = [
        ns
        for ns in list_netns()
        if (m := _NAME_RE.match(ns)) and not psutil.pid_exists(int(m.group(1)))
    ]
    _remove_namespaces(stale)
    return stale


class Cluster:
    """A live simulated cluster; use as a context manager or call ``close``.

    ``create`` builds it (rolling back on failure). Commands run through ``popen``/``run`` as
    argv lists, inside a host's namespace with its hostname set; they start in their own session
    with stdin closed. Not thread-safe.
    """

    def __init__(self, plan: ClusterPlan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._sshd: dict[str, subprocess.Popen[bytes]] = {}
        self._netns_keys: set[tuple[int, int]] = set()
        self._closed = False

    # --- creation -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, n_hosts: int, names: Sequence[str] = (), workdir: Path | None = None
    ) -> Cluster:
        """Build an ``n_hosts`` cluster on a free /24 of 10.200.0.0/16.

        Raises ClusterError (after removing whatever was created) if a step fails, e.g. when
        not running as root.
        """
        used = {int(m.group(2)) for ns in list_netns() if (m := _NAME_RE.match(ns))}
        free = [o for o in range(256) if o not in used]
        if not free:
            raise ClusterError("all 256 subnets of 10.200.0.0/16 are taken by other clusters")
        plan = plan_cluster(n_hosts, os.getpid(), random.choice(free), names)
        workdir = Path(tempfile.mkdtemp(prefix=f"{plan.prefix}-", dir=workdir))
        cluster = cls(plan, workdir)
        try:
            cluster._build()
        except BaseException:
            # The build error being raised is the one worth reporting, not a leak it caused.
            with contextlib.suppress(ClusterError):
                cluster.close()
            raise
        return cluster

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        key = netns_key(name)
        if key is None:
            raise ClusterError(f"namespace {name} was added but {_RUN_NETNS / name} is missing")
        self._netns_keys.add(key)

    def _build(self) -> None:
        sw = self.plan.switch_netns
        self._add_netns(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for h in self.plan.hosts:
            port = f"p{h.index}"
            self._add_netns(h.netns)
            # Both veth ends are created directly in their namespaces: no name in the root
            # namespace, so concurrent clusters cannot clash there.
            peer = ("peer", "name", port, "netns", sw)
            _ip("link", "add", "eth0", "netns", h.netns, "type", "veth", *peer)
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _ip("-n", h.netns, "link", "set", "eth0", "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            etc = NETNS_ETC / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self.plan.hosts_file())

    # --- running commands ---------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.plan.hosts

    def host(self, key: int | str) -> Host:
        """A host by 1-based index or by name; KeyError if there is none."""
        for h in self.plan.hosts:
            if key in (h.index, h.name):
                return h
        raise KeyError(f"no host {key!r} in cluster {self.plan.prefix}")

    def wrap(self, host: Host, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``host`` with its UTS hostname set."""
        enter = ["ip", "netns", "exec", host.netns, "unshare", "--uts"]
        return [*enter, "sh", "-c", _IN_HOST_SH, "sh", host.name, *argv]

    def popen(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host``; ``env`` is added to this process's environment.

        The handle is tracked: ``close`` kills its process group if it is still running.
        """
        full_env = {**os.environ, **(env or {}), ID_VAR: self.plan.prefix}
        proc = subprocess.Popen(
            self.wrap(host, argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def run(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to completion, capturing text output.

        Raises subprocess.TimeoutExpired after killing the process group if it runs past
        ``timeout`` seconds. A non-zero exit is returned, not raised.
        """
        proc = self.popen(
            host, argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    def link_down(self, host: Host) -> None:
        """Take ``host``'s eth0 down: connects to it time out (no refusal is sent)."""
        _ip("-n", host.netns, "link", "set", "eth0", "down")

    def link_up(self, host: Host) -> None:
        _ip("-n", host.netns, "link", "set", "eth0", "up")

    # --- ssh ----------------------------------------------------------------------------------

    @property
    def ssh_dir(self) -> Path:
        """Per-run keys and configs: host key, client key, authorized_keys, ssh_config."""
        d = self.workdir / "ssh"
        if not (d / "ssh_config").exists():
            d.mkdir(exist_ok=True)
            for key in ("hostkey_ed25519", "clientkey"):
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(d / key)],
                    check=True,
                )
            shutil.copyfile(d / "clientkey.pub", d / "authorized_keys")
            (d / "ssh_config").write_text(
                "Host *\n"
                f"  IdentityFile {d / 'clientkey'}\n  IdentitiesOnly yes\n  User root\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                "  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n"
            )
        return d

    @property
    def ssh_config(self) -> Path:
        """An ssh client config (``ssh -F``) that logs in as root with the per-run key."""
        return self.ssh_dir / "ssh_config"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "clientkey"

    def ssh_argv(self, target: Host, argv: Sequence[str]) -> list[str]:
        """ssh argv running ``argv`` on ``target``; the remote shell gets it shlex-quoted."""
        return ["ssh", "-F", str(self.ssh_config), target.name, shlex.join(argv)]

    def start_sshd(self, host: Host, timeout: float = 5.0) -> subprocess.Popen[bytes]:
        """Start sshd on ``host`` (key-only, our config) and wait until it listens.

        sshd writes its PidFile after binding its listening socket, so the file appearing is the
        readiness event (a stale one from an earlier start is removed first).
        Raises ClusterError with sshd's log if it exits or is not ready within ``timeout``.
        """
        d = self.ssh_dir
        conf, pidfile, log = (d / f"sshd-{host.name}.{ext}" for ext in ("conf", "pid", "log"))
        conf.write_text(
            f"Port 22\nListenAddress {host.address}\nHostKey {d / 'hostkey_ed25519'}\n"
            f"PidFile {pidfile}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PrintMotd no\nPrintLastLog no\nX11Forwarding no\nLogLevel ERROR\n"
        )
        pidfile.unlink(missing_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        with log.open("wb") as log_f:
            proc = self.popen(
                host,
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                stdout=log_f,
                stderr=subprocess.STDOUT,
            )

        def written() -> bool:
            return pidfile.exists() and bool(pidfile.read_text().strip())

        if not poll_until(written, timeout, stop_if=lambda: proc.poll() is not None):
            _killpg(proc)
            raise ClusterError(f"sshd on {host.name} did not start: {log.read_text()!r}")
        self._sshd[host.name] = proc
        return proc

    def stop_sshd(self, host: Host) -> None:
        """Stop ``host``'s sshd and its sessions (SIGTERM, then SIGKILL after 2 s).

        Session processes call setsid, so they are found as sshd's descendants, not its group.
        """
        proc = self._sshd.pop(host.name)
        try:
            sessions = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.Error:
            sessions = set()
        _killpg(proc, grace_s=2.0)
        signal_all(sessions, signal.SIGKILL)
        wait_gone(sessions, 5.0)

    # --- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill, delete, verify (see module docstring). Idempotent; raises ClusterLeakError."""
        if self._closed:
            return
        self._closed = True
        targets = self._live_pids()
        signal_all(targets, signal.SIGTERM)
        for proc in self._procs:
            _signal_group(proc, signal.SIGTERM)
        left = wait_gone(targets, 1.0)
        signal_all(left | self._live_pids(), signal.SIGKILL)
        for proc in self._procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        wait_gone(targets, 5.0)
        _remove_namespaces(self.plan.namespaces)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._verify_clean()

    def _live_pids(self) -> set[int]:
        """Everything to stop: our handles, whatever is in our namespaces, whatever is tagged."""
        pids = {p.pid for p in self._procs if p.poll() is None}
        pids |= pids_in_netns(self._netns_keys)
        return pids | {p for p in pids_with_env(ID_VAR, self.plan.prefix) if is_alive(p)}

    def _verify_clean(self) -> None:
        problems = [f"namespace {ns}" for ns in set(list_netns()) & set(self.plan.namespaces)]
        problems += [str(NETNS_ETC / h.netns) for h in self.hosts if (NETNS_ETC / h.netns).exists()]
        problems += [f"process {pid}" for pid in sorted(self._live_pids())]
        if problems:
            raise ClusterLeakError(f"cluster {self.plan.prefix} left behind: {', '.join(problems)}")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each process was started in its own session, so its pid is its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _killpg(proc: subprocess.Popen[bytes], grace_s: float = 0.0) -> None:
    """Stop ``proc``'s process group: SIGTERM and up to ``grace_s`` to exit, then SIGKILL."""
    if grace_s > 0:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _signal_group(proc, signal.SIGKILL)
    proc.wait(timeout=5.0)
