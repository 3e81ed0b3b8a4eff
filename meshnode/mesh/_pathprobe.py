"""Active tasks' socket work (seed 003's round-trip delay and trace route), unprivileged.

RTT: after each connect of a connect task, the kernel's own handshake RTT (``TCP_INFO``'s ``tcpi_rtt`` right
after the SYN-ACK: the SYN to SYN-ACK time the kernel measured, without this process's scheduling delay,
which the connect time includes).

Path: TCP SYNs to the target with TTL 1, 2, ... (a ``tcptraceroute`` with ``connect``). Each probe is a
non-blocking TCP socket with ``IP_RECVERR`` (``IPV6_RECVERR``) set: when a router answers the SYN with an
ICMP time exceeded, the kernel ends the connect with ``EHOSTUNREACH`` and queues the ICMP error on the
socket's error queue with the router's address (``SO_EE_OFFENDER``), which ``recvmsg(MSG_ERRQUEUE)`` reads.
No raw socket, hence no CAP_NET_RAW: the probes are ordinary connects, each bounded by a timeout. The
target answers the last probe: a SYN-ACK (``open``, the connection is closed at once) or a RST
(``closed``). A hop that stays silent is ``*`` as in traceroute; the probe goes on to the next TTL.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from meshnode.probes._sockdiag import TCP_INFO_LEN_6_1, parse_tcp_info

IP_RECVERR: Final = 11
"""``<linux/in.h>``: queue ICMP errors on the socket (Python's socket module does not name it)."""
IPV6_RECVERR: Final = 25
"""``<linux/in6.h>``."""
MSG_ERRQUEUE: Final = 0x2000
"""``<linux/socket.h>``: read the socket's error queue."""
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
_ICMP_TIME_EXCEEDED: Final = 11
_ICMP6_TIME_EXCEEDED: Final = 3
_EXTENDED_ERR: Final = struct.Struct("=IBBBBII")
"""``struct sock_extended_err``: ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data; the
offender's ``sockaddr_in``/``sockaddr_in6`` follows it."""

MAX_HOPS: Final = 30
"""The highest TTL a path probe sends."""
DEFAULT_HOPS: Final = 16


@dataclass(frozen=True, slots=True)
class Hop:
    """One TTL of a path probe.

    Attributes:
        ttl: the SYN's TTL (hop limit).
        addr: who answered: the router that sent time exceeded, the target, or '' (no answer).
        rtt_us: from the SYN to its answer; 0 without one.
        status: ``time_exceeded``, ``open`` (SYN-ACK), ``closed`` (RST), ``unreachable`` (an ICMP
            destination unreachable, with ``addr`` the sender), ``timeout`` (no answer).
    """

    ttl: int
    addr: str
    rtt_us: int
    status: str

    @property
    def reached(self) -> bool:
        """The target itself answered (the path ends here)."""
        return self.status in ("open", "closed")


def parse_icmp_error(level: int, kind: int, data: bytes) -> tuple[str, str] | None:
    """(sender address, status) of one ``IP_RECVERR``/``IPV6_RECVERR`` control message; None for any other
    message or an error that did not come from an ICMP packet."""
    if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
        return None
    if len(data) < _EXTENDED_ERR.size + 8:
        return None
    _errno, origin, icmp_type, _code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(data)
    offender = data[_EXTENDED_ERR.size:]
    family = struct.unpack_from("=H", offender)[0]
    if origin == SO_EE_ORIGIN_ICMP and family == socket.AF_INET:
        addr = str(ipaddress.IPv4Address(offender[4:8]))
        status = "time_exceeded" if icmp_type == _ICMP_TIME_EXCEEDED else "unreachable"
    elif origin == SO_EE_ORIGIN_ICMP6 and family == socket.AF_INET6 and len(offender) >= 24:
        addr = str(ipaddress.IPv6Address(offender[8:24]))
        status = "time_exceeded" if icmp_type == _ICMP6_TIME_EXCEEDED else "unreachable"
    else:
        return None
    return addr, status


def handshake_rtt_us(sock: socket.socket) -> int:
    """The kernel's RTT of a just-connected TCP socket (``tcpi_rtt``: the SYN to SYN-ACK time), 0 if unknown."""
    return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN_6_1)).rtt or 0


def error_name(exc: OSError) -> str:
    """A failed connect's error as results name it: ``refused``, ``unreachable``, else the errno's name."""
    name = errno_mod.errorcode.get(exc.errno or 0, type(exc).__name__).lower()
    return {"econnrefused": "refused", "ehostunreach": "unreachable", "enetunreach": "unreachable"}.get(name, name)


async def resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """The address family and socket address to connect to; raises OSError when ``host`` does not resolve."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(errno_mod.EHOSTUNREACH, f"{host} has no address")
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


async def probe_hop(family: int, addr: tuple[str, int], ttl: int, timeout_s: float) -> Hop:
    """One SYN with TTL ``ttl`` to ``addr``; who answered it, and when."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout_s)
        except TimeoutError:
            return Hop(ttl, "", 0, "timeout")
        except ConnectionRefusedError:
            return Hop(ttl, addr[0], int((time.perf_counter() - t0) * 1e6), "closed")
        except OSError:
            rtt = int((time.perf_counter() - t0) * 1e6)
            answer = _read_errqueue(sock)
            if answer is None:
                return Hop(ttl, "", rtt, "unreachable")
            return Hop(ttl, answer[0], rtt, answer[1])
        return Hop(ttl, addr[0], int((time.perf_counter() - t0) * 1e6), "open")
    finally:
        sock.close()


def _read_errqueue(sock: socket.socket) -> tuple[str, str] | None:
    """The ICMP error queued on ``sock`` (sender, status), None when none is."""
    try:
        _, ancdata, _, _ = sock.recvmsg(512, 512, MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancdata:
        found = parse_icmp_error(level, kind, data)
        if found is not None:
            return found
    return None


async def trace_path(host: str, port: int, max_hops: int = DEFAULT_HOPS, timeout_s: float = 1.0,
                     tries: int = 2) -> list[Hop]:
    """Probe TTL 1, 2, ... up to ``max_hops``; stop at the first hop the target answered (or that said
    unreachable). A hop that stays silent is probed up to ``tries`` times, as traceroute sends several
    queries a hop: one lost ICMP error (a router resolving its way back, or rate-limiting its errors) is
    not a silent hop. Raises OSError when ``host`` does not resolve."""
    family, addr = await resolve(host, port)
    hops: list[Hop] = []
    for ttl in range(1, max_hops + 1):
        hop = await probe_hop(family, addr, ttl, timeout_s)
        for _ in range(tries - 1):
            if hop.status != "timeout":
                break
            hop = await probe_hop(family, addr, ttl, timeout_s)
        hops.append(hop)
        if hop.reached or hop.status == "unreachable":
            break
    return hops
