"""Small socket helpers: free ports, this host's addresses and interfaces, name resolution, and
the SSH banner probe. The one home for sockets that are not the control channel itself
(`launcher.control` owns that).

Standard library only, no state. Every function either returns its answer or raises `OSError`
(`says_ssh` answers False instead); none retries: the callers own their deadlines.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

BANNER = b"SSH-2.0-"  # how every SSH server greets (RFC 4253 section 4.2)
PROBE_IDENT = b"SSH-2.0-launcher-probe\r\n"
_BANNER_MAX = 256  # an identification line is at most 255 bytes

_SIOCGIFFLAGS, _SIOCGIFADDR, _SIOCGIFNETMASK = 0x8913, 0x8915, 0x891B
_IFF_UP_RUNNING = 0x1 | 0x40


def free_port(addr: str = "") -> int:
    """A TCP port that is free now on `addr` ("": every IPv4 interface; an address with a
    colon: IPv6). Whoever needs it binds it a moment later, so another process may take it
    in between: callers that cannot afford that retry or bind port 0 themselves.

    Raises `OSError` when `addr` is not an address of this host."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def local_address(towards: str, port: int) -> str:
    """This host's address on the route to `towards` (the job interface). Sends nothing: a
    UDP `connect` only asks the kernel for the route. Raises `OSError` when `towards` does not
    resolve or no route leads there."""
    family, _, _, _, sockaddr = socket.getaddrinfo(towards, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        return str(sock.getsockname()[0])


def resolve(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """(family, sockaddr) for `host`, IPv4 and IPv6; raises OSError while it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in infos]


def says_ssh(addr: str, port: int, timeout: float) -> bool:
    """True when something at addr:port accepts a connection and greets with an SSH banner
    within `timeout` (per connect and per read). Any socket error is False."""
    data = b""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as sock:
            while b"\n" not in data and len(data) < _BANNER_MAX:
                chunk = sock.recv(_BANNER_MAX)
                if not chunk:
                    break
                data += chunk
            if data.startswith(BANNER):
                # Say who we are before leaving: sshd logs a probe that hangs up mid-greeting
                # ("kex_exchange_identification: Connection closed") even at LogLevel ERROR.
                sock.sendall(PROBE_IDENT)
    except OSError:
        return False
    return data.startswith(BANNER)


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    up: bool
    addresses: tuple[str, ...]  # "192.0.2.2/24", "fd00::2/64"


def read_interfaces() -> tuple[Interface, ...]:
    """Every interface, its state and addresses, from ioctls and /proc (no process started).

    IPv4: only the primary address of each interface (enough to pick one); IPv6: every
    address /proc lists. A host without IPv6 has only IPv4 addresses; never raises for a
    missing or odd /proc file."""
    ipv6: dict[str, list[str]] = {}
    # One line per address: hex address, index, prefix length, scope, flags, name.
    with contextlib.suppress(OSError, ValueError):  # a host without IPv6
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hexaddr, _, prefix, _, _, name = line.split()
            text = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr))
            ipv6.setdefault(name, []).append(f"{text}/{int(prefix, 16)}")
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            flags = _ioctl(sock, _SIOCGIFFLAGS, name)
            up = flags is not None and struct.unpack_from("H", flags, 16)[0] & _IFF_UP_RUNNING
            addrs = ipv6.get(name, [])
            addr, mask = _ioctl(sock, _SIOCGIFADDR, name), _ioctl(sock, _SIOCGIFNETMASK, name)
            if addr is not None:  # only the primary IPv4 address: enough to pick an interface
                bits = bin(int.from_bytes(mask[20:24], "big")).count("1") if mask else 32
                addrs = [f"{socket.inet_ntoa(addr[20:24])}/{bits}", *addrs]
            found.append(Interface(name, up == _IFF_UP_RUNNING, tuple(addrs)))
    return tuple(found)


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes | None:
    try:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None  # EADDRNOTAVAIL: no IPv4 address on this interface
