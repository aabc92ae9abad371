"""SSH for the `mpi` backend: a per-job sshd on each follower, a per-job client on the leader.

Nothing here uses the machine's SSH set-up. Per job, in a private 0700 folder:

- the leader generates a client key pair; its public half travels in the PLAN (authenticated
  by the job token) and becomes each follower's only authorized key;
- each follower generates a host key, writes an sshd configuration of ours (key-only, no
  passwords, no PAM, no forwarding, only the current user, listening on its job-interface
  address on a free port unless `LAUNCHER_SSH_PORT` is set), starts `sshd -D` as a supervised
  process (it dies with the launcher), and checks it locally (TCP connect and the SSH banner)
  before reporting `{addr, port, hostkey}` to the leader;
- the leader writes a client configuration (`ssh -F`) and a known_hosts file holding exactly
  the reported host keys (StrictHostKeyChecking yes: host keys are verified, not trusted on
  first use, and nothing is written under the home directory), then proves each follower with a
  real handshake, `ssh -F cfg <host> true`, before mpirun uses the same configuration.

sshd's `SetEnv` gives every session (hence every remote orted and rank) `LAUNCHER_MPI_ENV`, the
path of this host's own rank environment (see `launcher.mpi.rank`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher import procs
from launcher.containment import Containment
from launcher.control.messages import SshdReady
from launcher.errors import LauncherError
from launcher.mpi.rank import ENV_FILE_VAR

HOSTKEY_RE = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+={0,2}$")
SSH_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")
CONNECT_TIMEOUT_S = 10


class SshError(LauncherError):
    """An ssh or sshd step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class SshPeer:
    """A follower's sshd as the leader reaches it."""

    host: str
    addr: str
    port: int
    hostkey: str  # "ssh-ed25519 AAAA..."

    def message(self) -> SshdReady:
        """The control-channel report of this sshd, which a follower sends to the leader.
        Raises ValueError for a value the channel would refuse (see `SshdReady`)."""
        return SshdReady(self.addr, self.port, self.hostkey)


def peer_from_message(host: str, message: SshdReady) -> SshPeer:
    """A follower's report as the leader's ssh reaches it. The report was checked when it was
    decoded (an IP address, a port, one ed25519 key); `host`, the follower's name from its
    HELLO, must also be usable in an ssh configuration: else ValueError."""
    if not SSH_NAME_RE.match(host):
        raise ValueError(f"sshd report from {host!r:.80}: that name cannot be used with ssh")
    return SshPeer(host, message.addr, message.port, message.hostkey)


def check_name(host: str) -> str:
    """`host` if it can be written into an ssh configuration as is, else ValueError."""
    if not SSH_NAME_RE.match(host):
        raise ValueError(f"host name {host!r} cannot be used with ssh")
    return host


def session_env(environ: Mapping[str, str], env_file: Path) -> dict[str, str]:
    """What every session of our sshd gets (`SetEnv`), since sshd passes on none of ours:

    - LAUNCHER_MPI_ENV: this host's rank environment (see `launcher.mpi.rank`);
    - PATH and LD_LIBRARY_PATH of this host's launcher, so that orted and the shim run with the
      container's paths (the toolkit appended all of os.environ to /etc/environment for this);
    - SHLVL=1: bash sources ~/.bashrc for commands run by sshd only at shell level 1, and a
      slow .bashrc (pyenv, conda) would delay every session; orted needs none of it.

    Values sshd's SetEnv cannot carry (whitespace, quotes) are left out."""
    env = {"SHLVL": "1", ENV_FILE_VAR: str(env_file)}
    for name in ("PATH", "LD_LIBRARY_PATH"):
        value = environ.get(name, "")
        if value and not any(c.isspace() or c in "\"'\\" for c in value):
            env[name] = value
    return env


def sshd_config(
    folder: Path, addr: str, port: int, user: str, env: Mapping[str, str] | None = None
) -> str:
    """Our sshd configuration (pure). `folder` holds the host key, authorized_keys, the pid file
    and the host payload; it is private (0700), which is why StrictModes can be off. `env` is
    set in every session (see `session_env`)."""
    env = env or {ENV_FILE_VAR: str(folder / "host-env.json")}
    set_env = " ".join(f"{k}={v}" for k, v in env.items())
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {addr}",
            f"HostKey {folder / 'ssh_host_ed25519_key'}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            f"AllowUsers {user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            "StrictModes no",
            "AllowAgentForwarding no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel ERROR",
            f"SetEnv {set_env}",
            "",
        ]
    )


def client_config(folder: Path, peers: list[SshPeer]) -> str:
    """The leader's `ssh -F` configuration (pure): one block per follower, then defaults."""
    lines = []
    for peer in peers:
        lines += [
            f"Host {peer.host}",
            f"  HostName {peer.addr}",
            f"  Port {peer.port}",
            f"  HostKeyAlias {peer.host}",
        ]
    lines += [
        "Host *",
        f"  IdentityFile {folder / 'id_ed25519'}",
        f"  ControlPath {folder / 'cm-%n'}",
        "  ControlMaster no",
        "  IdentitiesOnly yes",
        "  IdentityAgent none",
        "  PubkeyAuthentication yes",
        "  PasswordAuthentication no",
        "  KbdInteractiveAuthentication no",
        "  BatchMode yes",
        "  StrictHostKeyChecking yes",
        f"  UserKnownHostsFile {folder / 'known_hosts'}",
        "  GlobalKnownHostsFile /dev/null",
        "  UpdateHostKeys no",
        "  ForwardAgent no",
        "  ForwardX11 no",
        f"  ConnectTimeout {CONNECT_TIMEOUT_S}",
        "  ServerAliveInterval 5",
        "  ServerAliveCountMax 6",
        "  LogLevel ERROR",
        "",
    ]
    return "\n".join(lines)


def known_hosts(peers: list[SshPeer]) -> str:
    return "".join(f"{peer.host} {peer.hostkey}\n" for peer in peers)


# --- I/O --------------------------------------------------------------------------------------


def private_dir(prefix: str) -> Path:
    """A fresh 0700 folder whose path has no whitespace (Open MPI splits `plm_rsh_args`)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if any(c.isspace() for c in str(folder)):
        shutil.rmtree(folder, ignore_errors=True)
        raise SshError(f"the temporary folder {folder} has whitespace in its path; set TMPDIR")
    return folder


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


def keygen(path: Path, comment: str, environ: dict[str, str]) -> str:
    """Generate an ed25519 key pair at `path`; returns the public key "ssh-ed25519 AAAA..."."""
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    returncode, tail = procs.run_once(argv, path.parent, environ)
    if returncode != 0:
        raise SshError(
            f"ssh-keygen failed (exit {returncode}): {tail.strip()[-300:]}",
            hint="install openssh-client (apt-get install openssh-client)",
        )
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def sshd_binary(setting: str) -> str:
    """The sshd to run: the setting, else sshd on PATH, else /usr/sbin/sshd (absolute: sshd
    refuses to re-exec itself from a relative path)."""
    found = shutil.which(setting) if setting else shutil.which("sshd") or "/usr/sbin/sshd"
    if not found or not Path(found).is_file():
        raise SshError(
            f"sshd not found ({setting or 'sshd'}): the mpi backend needs OpenSSH's server on "
            "every host (apt-get install openssh-server)"
        )
    return str(Path(found).absolute())


def privsep_dir() -> None:
    """Make /run/sshd, sshd's privilege-separation directory, which it refuses to start
    without (a container rarely has it). Best effort: an error shows up as sshd's own."""
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def check_login(
    config: Path, host: str, environ: dict[str, str], scope: Containment | None = None
) -> tuple[int, str]:
    """One real SSH handshake and login (`ssh -F config host true`): (exit code, output tail).
    The ssh client runs in `scope`'s care like every helper."""
    argv = ["ssh", "-F", str(config), "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", host, "true"]
    return procs.run_once(argv, config.parent, environ, scope)


def poll_until(
    test: Callable[[], bool],
    deadline: float,
    *,
    alive: Callable[[], bool] | None = None,
    first: float = 0.005,
    most: float = 0.1,
) -> bool:
    """Call `test()` with exponential backoff until it is true (True), `alive()` turns false
    or the deadline passes (False)."""
    delay = first
    while True:
        if test():
            return True
        if (alive is not None and not alive()) or time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, most)


def sshd_argv(binary: str, config: Path) -> tuple[str, ...]:
    """sshd in the foreground (it stays in our process group), logging to stderr. Call
    `privsep_dir` before running it."""
    return (binary, "-D", "-e", "-f", str(config))


def master_argv(config: Path, host: str) -> tuple[str, ...]:
    """A foreground ssh connection that other ssh clients (the check, mpirun) multiplex over:
    one handshake per follower instead of one per use. Never `ControlPersist`, which would
    detach it from our process group and watchdog."""
    return ("ssh", "-F", str(config), "-M", "-N", "-o", "ControlPersist=no", host)


def control_path(folder: Path, host: str) -> Path:
    return folder / f"cm-{host}"
