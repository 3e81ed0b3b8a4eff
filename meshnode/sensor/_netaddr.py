"""The addresses of one network namespace, read through a netlink socket opened in it.

The socket belongs to the namespace it was opened in for its whole life, so a sensor that opened it at start
keeps asking the namespace it watches even from a thread that has left it (a test harness, a setns caller);
/proc/self/net would follow the reading thread instead.
"""

from __future__ import annotations

import socket
import struct

NETLINK_ROUTE = 0
RTM_GETADDR = 22
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
_NLMSG = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")


class NamespaceAddresses:
    """The addresses assigned in the network namespace this object was made in."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._seq = 0

    def read(self) -> set[str]:
        """Every address of every interface (IFA_LOCAL for IPv4 where given, else IFA_ADDRESS), as text."""
        self._seq += 1
        req = _NLMSG.pack(_NLMSG.size + _IFADDR.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self._sock.send(req + _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        out: set[str] = set()
        while True:
            data = self._sock.recv(65536)
            at = 0
            while at + _NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(data, at)
                if length < _NLMSG.size:
                    return out
                if seq == self._seq:
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        return out
                    addr = _address(data[at + _NLMSG.size:at + length])
                    if addr:
                        out.add(addr)
                at += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()


def _address(msg: bytes) -> str:
    """The address of one RTM_NEWADDR message body ('' if it has none)."""
    if len(msg) < _IFADDR.size:
        return ""
    family = msg[0]
    at = _IFADDR.size
    found: dict[int, bytes] = {}
    while at + _RTA.size <= len(msg):
        length, kind = _RTA.unpack_from(msg, at)
        if length < _RTA.size:
            break
        if kind in (IFA_ADDRESS, IFA_LOCAL):
            found[kind] = msg[at + _RTA.size:at + length]
        at += (length + 3) & ~3
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    if not raw or family not in (socket.AF_INET, socket.AF_INET6):
        return ""
    return socket.inet_ntop(family, raw)
