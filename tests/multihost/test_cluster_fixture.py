"""The simulated cluster does what multi-host tests rely on, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.multihost.cluster import NETNS_ETC, Cluster, list_netns, plan_cluster
from tests.multihost.conftest import ClusterFactory

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(30)]

PY = sys.executable
PORT = "5050"

# Listens on argv[1]:argv[2], says "ready", then answers argv[3] connections with its hostname.
SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    conn, _ = srv.accept()
    with conn:
        conn.sendall(socket.gethostname().encode())
"""

# Connects to each name in argv[3:] on port argv[1] with timeout argv[2]; prints one line per
# name: "<name> <resolved address> <peer's hostname>" or "<name> - <error class>".
CLIENT = """
import socket, sys
port, timeout = int(sys.argv[1]), float(sys.argv[2])
for name in sys.argv[3:]:
    try:
        with socket.create_connection((name, port), timeout=timeout) as c:
            print(name, c.getpeername()[0], c.recv(256).decode(), flush=True)
    except OSError as exc:
        print(name, "-", type(exc).__name__, flush=True)
"""


def start_server(cluster: Cluster, host_index: int, connections: int) -> subprocess.Popen[bytes]:
    host = cluster.host(host_index)
    argv = [PY, "-c", SERVER, host.address, PORT, str(connections)]
    proc = cluster.popen(host, argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # pytest-timeout bounds this wait
    return proc


def connect(cluster: Cluster, host_index: int, names: list[str], timeout: float) -> list[str]:
    argv = [PY, "-c", CLIENT, PORT, str(timeout), *names]
    result = cluster.run(cluster.host(host_index), argv, timeout=timeout * len(names) + 10)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_plan_names_addresses_and_hosts_file() -> None:
    plan = plan_cluster(3, owner_pid=42, octet=7)
    assert [h.name for h in plan.hosts] == ["algo-1", "algo-2", "algo-3"]
    assert [h.address for h in plan.hosts] == ["10.200.7.1", "10.200.7.2", "10.200.7.3"]
    assert plan.namespaces == ("mlt-42-7-sw", "mlt-42-7-h1", "mlt-42-7-h2", "mlt-42-7-h3")
    assert "10.200.7.3 algo-3\n" in plan.hosts_file()
    with pytest.raises(ValueError, match="host names"):
        plan_cluster(2, 42, 7, names=["a", "b; rm -rf /"])
    with pytest.raises(ValueError, match="host names"):
        plan_cluster(2, 42, 7, names=["a", "a"])


def test_hosts_reach_each_other_by_name_with_distinct_hostnames(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(3)
    servers = [start_server(cluster, i, connections=2) for i in (1, 2, 3)]
    for h in cluster.hosts:
        peers = [p for p in cluster.hosts if p != h]
        lines = connect(cluster, h.index, [p.name for p in peers], timeout=5)
        # The peer answered with its own UTS hostname, at the address its name maps to.
        assert lines == [f"{p.name} {p.address} {p.name}" for p in peers]
    for proc in servers:
        assert proc.wait(timeout=5) == 0


def test_link_down_makes_connects_time_out(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(2)
    server = start_server(cluster, 2, connections=2)
    reachable = [f"algo-2 {cluster.host(2).address} algo-2"]
    assert connect(cluster, 1, ["algo-2"], timeout=5) == reachable
    cluster.link_down(cluster.host(2))
    # A dead link drops packets silently: a timeout, not a refusal.
    assert connect(cluster, 1, ["algo-2"], timeout=0.5) == ["algo-2 - TimeoutError"]
    cluster.link_up(cluster.host(2))
    assert connect(cluster, 1, ["algo-2"], timeout=5) == reachable
    assert server.wait(timeout=5) == 0


def test_sshd_accepts_our_key_and_nothing_else(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    h1, h2 = cluster.hosts
    cluster.start_sshd(h2)

    ok = cluster.run(
        h1, cluster.ssh_argv(h2, ["sh", "-c", 'echo "$(hostname) $SSH_CLIENT"']), timeout=10
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[:2] == ["algo-2", h1.address]

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    base = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
    ]
    wrong_key = cluster.run(
        h1, [*base, "-i", str(tmp_path / "other"), "root@algo-2", "true"], timeout=10
    )
    no_key = cluster.run(
        h1, [*base, "-o", "PubkeyAuthentication=no", "root@algo-2", "true"], timeout=10
    )
    for denied in (wrong_key, no_key):
        assert denied.returncode == 255
        # Only public-key authentication is offered: no password or keyboard-interactive.
        assert "Permission denied (publickey)" in denied.stderr

    cluster.stop_sshd(h2)
    gone = cluster.run(h1, cluster.ssh_argv(h2, ["true"]), timeout=10)
    assert gone.returncode == 255
    assert "Connection refused" in gone.stderr


def test_teardown_kills_everything_and_removes_namespaces(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(2)
    h1, h2 = cluster.hosts
    cluster.start_sshd(h1)
    tracked = cluster.popen(h1, ["sleep", "300"])
    # A daemonised process (own session, reparented to init) that carries our environment...
    escaped = cluster.run(
        h2, ["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 & echo $!"], timeout=10
    )
    # ...and one started through sshd, which carries nothing of ours but its namespace.
    remote = cluster.run(
        h2,
        cluster.ssh_argv(h1, ["sh", "-c", "sleep 302 </dev/null >/dev/null 2>&1 & echo $!"]),
        timeout=10,
    )
    pids = [tracked.pid, int(escaped.stdout), int(remote.stdout)]
    assert all(psutil.pid_exists(p) for p in pids)

    cluster.close()

    assert not set(cluster.plan.namespaces) & set(list_netns())
    assert not any((NETNS_ETC / h.netns).exists() for h in cluster.hosts)
    assert not cluster.workdir.exists()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_concurrent_clusters_get_distinct_subnets(cluster_factory: ClusterFactory) -> None:
    a, b = cluster_factory(1), cluster_factory(1)
    assert a.plan.prefix != b.plan.prefix
    assert a.host(1).address != b.host(1).address
