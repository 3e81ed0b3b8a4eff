"""A pure-Python NETLINK_SOCK_DIAG client: TCP and UDP sockets of this network namespace, with tcp_info.

Why this exists: the eBPF sensor needs kernel TCP state (RTT, cwnd, the chrono "limited" timers) that its
tracepoints do not carry, and the ``diag`` sensor (the fallback when eBPF is not possible) is built on it
entirely. ``ss`` gets the same data from the same interface; we speak it directly so that no third-party
package and no subprocess is involved.

Wire format (all host byte order except where the uapi says ``__be``)::

    nlmsghdr          u32 len, u16 type, u16 flags, u32 seq, u32 pid              16 bytes
    inet_diag_req_v2  u8 family, u8 protocol, u8 ext, u8 pad, u32 states, sockid   56 bytes
    inet_diag_sockid  be16 sport, be16 dport, be32 src[4], be32 dst[4], u32 if, u32 cookie[2]  48 bytes
    inet_diag_msg     u8 family, state, timer, retrans, sockid, u32 expires, rqueue, wqueue, uid, inode
                      (72 bytes) followed by rtattrs (u16 len, u16 type, payload, 4-byte aligned)

``INET_DIAG_INFO`` carries ``struct tcp_info`` (``include/uapi/linux/tcp.h``). It is a stable ABI that only
grows at the end, and the kernel copies ``min(sizeof(kernel tcp_info), attribute room)``; we parse every
field the returned length covers, up to the 6.1 layout (``tcpi_snd_wnd``), and leave later ones ``None``.

Everything here works in the network namespace of the calling thread at the time the netlink socket is
opened; :func:`call_in_netns` runs a function in another one.

Limits worth knowing:

* Getting one socket (:meth:`SockDiag.get`) needs its full 4-tuple as well as its cookie: the kernel looks
  the socket up by address and only then checks the cookie. With a cookie alone, :func:`tcp_info_by_cookie`
  dumps the namespace and filters (one dump beats N lookups anyway once there are more than a few).
* UDP sockets have no ``tcp_info`` and no byte counters in sock_diag, only addresses, queues and owner.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

# --- netlink / sock_diag constants (include/uapi/linux/{netlink,sock_diag,inet_diag}.h) -------------------

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH

INET_DIAG_NONE: Final = 0
INET_DIAG_MEMINFO: Final = 1
INET_DIAG_INFO: Final = 2
INET_DIAG_CONG: Final = 4
INET_DIAG_NOCOOKIE: Final = 0xFFFFFFFF

SO_COOKIE: Final = 57
SO_NETNS_COOKIE: Final = 71
CLONE_NEWNET: Final = 0x40000000

# TCP states (include/net/tcp_states.h); the diag state mask is 1 << state.
TCP_ESTABLISHED: Final = 1
TCP_SYN_SENT: Final = 2
TCP_SYN_RECV: Final = 3
TCP_FIN_WAIT1: Final = 4
TCP_FIN_WAIT2: Final = 5
TCP_TIME_WAIT: Final = 6
TCP_CLOSE: Final = 7
TCP_CLOSE_WAIT: Final = 8
TCP_LAST_ACK: Final = 9
TCP_LISTEN: Final = 10
TCP_CLOSING: Final = 11
TCP_NEW_SYN_RECV: Final = 12

TCP_STATE_NAMES: Final = {
    TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT", TCP_SYN_RECV: "SYN_RECV",
    TCP_FIN_WAIT1: "FIN_WAIT1", TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT", TCP_CLOSE: "CLOSE",
    TCP_CLOSE_WAIT: "CLOSE_WAIT", TCP_LAST_ACK: "LAST_ACK", TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING",
    TCP_NEW_SYN_RECV: "NEW_SYN_RECV",
}
ALL_STATES: Final = 0xFFFFFFFF
"""State mask selecting every state (what ``ss -a`` asks for)."""


def state_mask(*states: int) -> int:
    """The ``idiag_states`` bit mask for the given TCP states."""
    mask = 0
    for s in states:
        mask |= 1 << s
    return mask


# --- struct layouts -------------------------------------------------------------------------------------

_NLMSGHDR: Final = struct.Struct("=IHHII")
_SOCKID: Final = struct.Struct(">HH16s16s")  # ports, addresses: big-endian; if, cookie: host order
_SOCKID_TAIL: Final = struct.Struct("=III")
_REQ_V2_HEAD: Final = struct.Struct("=BBBBI")
_MSG_HEAD: Final = struct.Struct("=BBBB")
_MSG_TAIL: Final = struct.Struct("=IIIII")
_RTATTR: Final = struct.Struct("=HH")
_NLMSGERR: Final = struct.Struct("=i")

SOCKID_LEN: Final = _SOCKID.size + _SOCKID_TAIL.size  # 48
REQ_V2_LEN: Final = _REQ_V2_HEAD.size + SOCKID_LEN  # 56
DIAG_MSG_LEN: Final = _MSG_HEAD.size + SOCKID_LEN + _MSG_TAIL.size  # 72

_RECV_BUF: Final = 1 << 16


def _align4(n: int) -> int:
    return (n + 3) & ~3


# struct tcp_info as of Linux 6.1, in order: (name, struct code). ``_bitfield`` bytes are split below.
_TCP_INFO_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"), ("backoff", "B"),
    ("options", "B"), ("_wscale", "B"), ("_app_limited_byte", "B"),
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"), ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"), ("snd_ssthresh", "I"),
    ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"), ("bytes_received", "Q"),
    ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"),
)


def _tcp_info_offsets() -> tuple[tuple[str, int, struct.Struct], ...]:
    """Field offsets computed with C alignment (``@`` without native size surprises: explicit ``=`` + pad)."""
    out = []
    off = 0
    for name, code in _TCP_INFO_FIELDS:
        size = struct.calcsize("=" + code)
        off = (off + size - 1) // size * size  # natural alignment, as the C compiler lays it out
        out.append((name, off, struct.Struct("=" + code)))
        off += size
    return tuple(out)


_TCP_INFO_LAYOUT: Final = _tcp_info_offsets()
TCP_INFO_LEN_6_1: Final = 232
"""``sizeof(struct tcp_info)`` on Linux 6.1 (ends with ``tcpi_snd_wnd``)."""


# --- models ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """``struct tcp_info`` as far as the kernel returned it; fields beyond the returned length are ``None``.

    Units are the kernel's: times in microseconds except ``last_*`` (milliseconds) and ``rto``/``ato``
    (microseconds); ``snd_cwnd``/``snd_ssthresh`` in segments; rates in bytes per second;
    ``busy_time``/``rwnd_limited``/``sndbuf_limited`` in microseconds at jiffy resolution, where
    ``busy_time`` already includes the two ``*_limited`` times.
    """

    state: int | None = None
    ca_state: int | None = None
    retransmits: int | None = None
    probes: int | None = None
    backoff: int | None = None
    options: int | None = None
    snd_wscale: int | None = None
    rcv_wscale: int | None = None
    delivery_rate_app_limited: bool | None = None
    fastopen_client_fail: int | None = None
    rto: int | None = None
    ato: int | None = None
    snd_mss: int | None = None
    rcv_mss: int | None = None
    unacked: int | None = None
    sacked: int | None = None
    lost: int | None = None
    retrans: int | None = None
    fackets: int | None = None
    last_data_sent: int | None = None
    last_ack_sent: int | None = None
    last_data_recv: int | None = None
    last_ack_recv: int | None = None
    pmtu: int | None = None
    rcv_ssthresh: int | None = None
    rtt: int | None = None
    rttvar: int | None = None
    snd_ssthresh: int | None = None
    snd_cwnd: int | None = None
    advmss: int | None = None
    reordering: int | None = None
    rcv_rtt: int | None = None
    rcv_space: int | None = None
    total_retrans: int | None = None
    pacing_rate: int | None = None
    max_pacing_rate: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    notsent_bytes: int | None = None
    min_rtt: int | None = None
    data_segs_in: int | None = None
    data_segs_out: int | None = None
    delivery_rate: int | None = None
    busy_time: int | None = None
    rwnd_limited: int | None = None
    sndbuf_limited: int | None = None
    delivered: int | None = None
    delivered_ce: int | None = None
    bytes_sent: int | None = None
    bytes_retrans: int | None = None
    dsack_dups: int | None = None
    reord_seen: int | None = None
    rcv_ooopack: int | None = None
    snd_wnd: int | None = None
    length: int = 0
    """How many bytes of ``tcp_info`` the kernel returned (232 on 6.1; more on newer kernels)."""


@dataclass(frozen=True, slots=True)
class DiagSocket:
    """One socket from a sock_diag dump (``struct inet_diag_msg`` plus the attributes we asked for).

    ``src``/``sport`` are the local end. ``cookie`` is the kernel's socket cookie (``SO_COOKIE``), the key
    both sensors use for a flow; it survives into TIME_WAIT.
    """

    family: int
    proto: int
    state: int
    timer: int
    retrans: int
    src: str
    sport: int
    dst: str
    dport: int
    ifindex: int
    cookie: int
    expires: int
    rqueue: int
    wqueue: int
    uid: int
    inode: int
    tcp_info: TcpInfo | None = None
    cong: str | None = None

    @property
    def state_name(self) -> str:
        """The TCP state as ``ss`` prints it (UDP sockets are ``ESTABLISHED`` when connected)."""
        return TCP_STATE_NAMES.get(self.state, str(self.state))


class SockDiagError(OSError):
    """The kernel answered a sock_diag request with an error (``errno`` is set), or spoke nonsense."""


# --- parsing (pure; unit-tested with hand-built bytes) -------------------------------------------------


def parse_tcp_info(data: bytes) -> TcpInfo:
    """``struct tcp_info`` from an ``INET_DIAG_INFO`` payload of any length.

    Why lenient: the kernel only appends fields, so an older kernel returns a prefix (later fields stay
    ``None``) and a newer one returns more than we know (ignored, ``length`` tells how much there was).
    """
    values: dict[str, int | bool | None] = {"length": len(data)}
    for name, off, st in _TCP_INFO_LAYOUT:
        if off + st.size > len(data):
            break
        (v,) = st.unpack_from(data, off)
        if name == "_wscale":
            # tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4 -- little-endian bitfields fill from the low bit.
            values["snd_wscale"] = v & 0x0F
            values["rcv_wscale"] = v >> 4
        elif name == "_app_limited_byte":
            values["delivery_rate_app_limited"] = bool(v & 0x01)
            values["fastopen_client_fail"] = (v >> 1) & 0x03
        else:
            values[name] = v
    return TcpInfo(**values)  # type: ignore[arg-type]


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_diag_msg(payload: bytes, proto: int) -> DiagSocket:
    """One ``inet_diag_msg`` and its attributes (the payload after the nlmsghdr)."""
    if len(payload) < DIAG_MSG_LEN:
        raise SockDiagError(errno.EPROTO, f"inet_diag_msg too short ({len(payload)} < {DIAG_MSG_LEN} bytes)")
    family, state, timer, retrans = _MSG_HEAD.unpack_from(payload, 0)
    sport, dport, src, dst = _SOCKID.unpack_from(payload, 4)
    ifindex, c0, c1 = _SOCKID_TAIL.unpack_from(payload, 4 + _SOCKID.size)
    expires, rqueue, wqueue, uid, inode = _MSG_TAIL.unpack_from(payload, 4 + SOCKID_LEN)
    tcp_info: TcpInfo | None = None
    cong: str | None = None
    for atype, data in iter_rtattrs(payload, DIAG_MSG_LEN):
        if atype == INET_DIAG_INFO and proto == socket.IPPROTO_TCP:
            tcp_info = parse_tcp_info(data)
        elif atype == INET_DIAG_CONG:
            cong = data.split(b"\0", 1)[0].decode("ascii", "replace")
    return DiagSocket(
        family=family, proto=proto, state=state, timer=timer, retrans=retrans,
        src=_addr(family, src), sport=sport, dst=_addr(family, dst), dport=dport, ifindex=ifindex,
        cookie=(c1 << 32) | c0, expires=expires, rqueue=rqueue, wqueue=wqueue, uid=uid, inode=inode,
        tcp_info=tcp_info, cong=cong,
    )


def iter_rtattrs(buf: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """``(type, payload)`` of each rtattr from ``offset`` to the end; stops at a malformed one."""
    end = len(buf)
    while offset + _RTATTR.size <= end:
        alen, atype = _RTATTR.unpack_from(buf, offset)
        if alen < _RTATTR.size or offset + alen > end:
            return
        yield atype & 0x3FFF, bytes(buf[offset + _RTATTR.size: offset + alen])  # strip NLA_F_* flags
        offset += _align4(alen)


@dataclass(frozen=True, slots=True)
class NlMessage:
    """One netlink message: header fields and payload."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def iter_nlmsgs(buf: bytes) -> Iterator[NlMessage]:
    """Split one ``recv`` buffer into netlink messages (a buffer may hold many; NLMSG_ALIGN between)."""
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        mlen, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(buf, off)
        if mlen < _NLMSGHDR.size or off + mlen > len(buf):
            raise SockDiagError(errno.EPROTO, f"truncated netlink message (len {mlen} at offset {off})")
        yield NlMessage(mtype, flags, seq, pid, bytes(buf[off + _NLMSGHDR.size: off + mlen]))
        off += _align4(mlen)


def pack_sockid(
    family: int, src: str = "", sport: int = 0, dst: str = "", dport: int = 0,
    ifindex: int = 0, cookie: int | None = None,
) -> bytes:
    """``struct inet_diag_sockid``; ``cookie=None`` means INET_DIAG_NOCOOKIE (match any)."""

    def raw(a: str) -> bytes:
        if not a:
            return b"\0" * 16
        return socket.inet_pton(family, a).ljust(16, b"\0")

    c0 = c1 = INET_DIAG_NOCOOKIE
    if cookie is not None:
        c0, c1 = cookie & 0xFFFFFFFF, cookie >> 32
    return _SOCKID.pack(sport, dport, raw(src), raw(dst)) + _SOCKID_TAIL.pack(ifindex, c0, c1)


def pack_request(
    seq: int, family: int, proto: int, states: int, ext: int, sockid: bytes, dump: bool,
) -> bytes:
    """A complete ``SOCK_DIAG_BY_FAMILY`` request: nlmsghdr + inet_diag_req_v2."""
    body = _REQ_V2_HEAD.pack(family, proto, ext, 0, states) + sockid
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


class _Collector:
    """Feeds ``recv`` buffers of one request and says when the answer is complete.

    Why a class: a dump spans many buffers (``NLM_F_MULTI`` parts, then ``NLMSG_DONE``), a single get is one
    message; errors arrive as ``NLMSG_ERROR``. Kept apart from the socket so tests can feed it bytes.
    """

    def __init__(self, seq: int, proto: int, dump: bool) -> None:
        self.seq = seq
        self.proto = proto
        self.dump = dump
        self.sockets: list[DiagSocket] = []
        self.done = False

    def feed(self, buf: bytes) -> None:
        """Consume one buffer; raises :class:`SockDiagError` on an ``NLMSG_ERROR`` with a nonzero code."""
        for msg in iter_nlmsgs(buf):
            if msg.seq != self.seq:
                continue  # a stale answer to an earlier, abandoned request
            if msg.type == NLMSG_ERROR:
                (code,) = _NLMSGERR.unpack_from(msg.payload, 0) if len(msg.payload) >= 4 else (-errno.EPROTO,)
                if code == 0:  # an ACK
                    self.done = True
                    continue
                raise SockDiagError(-code, f"sock_diag: {os.strerror(-code)}")
            if msg.type == NLMSG_DONE:
                # inet_diag puts an int in DONE; negative means the dump was cut short (e.g. -EINTR).
                if len(msg.payload) >= 4:
                    (code,) = _NLMSGERR.unpack_from(msg.payload, 0)
                    if code < 0:
                        raise SockDiagError(-code, f"sock_diag dump ended with {os.strerror(-code)}")
                self.done = True
                continue
            if msg.type == NLMSG_OVERRUN:
                raise SockDiagError(errno.ENOBUFS, "sock_diag: netlink overrun")
            if msg.type == NLMSG_NOOP:
                continue
            if msg.type == SOCK_DIAG_BY_FAMILY:
                self.sockets.append(parse_diag_msg(msg.payload, self.proto))
                if not self.dump:
                    self.done = True  # a get answers with exactly one message, no DONE
                continue
            raise SockDiagError(errno.EPROTO, f"unexpected netlink message type {msg.type}")


# --- the client -----------------------------------------------------------------------------------------


class SockDiag:
    """A NETLINK_SOCK_DIAG socket bound to the network namespace it was opened in.

    Use as a context manager or call :meth:`close`. Not thread-safe: one request at a time.
    """

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise SockDiagError(exc.errno or errno.EPERM, f"cannot open NETLINK_SOCK_DIAG: {exc}") from exc
        self._seq = 0

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket; safe to call twice."""
        self._sock.close()

    def _request(self, req_family: int, proto: int, states: int, ext: int, sockid: bytes,
                 dump: bool) -> list[DiagSocket]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        col = _Collector(self._seq, proto, dump)
        msg = pack_request(self._seq, req_family, proto, states, ext, sockid, dump)
        self._sock.sendto(msg, (0, 0))
        while not col.done:
            try:
                buf, _, flags, _ = self._sock.recvmsg(_RECV_BUF)
            except InterruptedError:  # PEP 475 retries, but a signal handler raising EINTR-like is possible
                continue
            if not buf:
                raise SockDiagError(errno.EPROTO, "sock_diag: netlink socket closed mid-answer")
            if flags & socket.MSG_TRUNC:  # the kernel caps dump buffers at 32 KiB; this cannot happen quietly
                raise SockDiagError(errno.EMSGSIZE, f"sock_diag: answer larger than {_RECV_BUF} bytes")
            col.feed(buf)
        return col.sockets

    def dump(
        self, family: int, proto: int = socket.IPPROTO_TCP, states: int = ALL_STATES,
        info: bool = True,
    ) -> list[DiagSocket]:
        """Every socket of one family and protocol in the given states.

        Args:
            family: ``AF_INET`` or ``AF_INET6`` (a dual-stack socket is listed under ``AF_INET6``).
            proto: ``IPPROTO_TCP`` or ``IPPROTO_UDP``.
            states: a mask from :func:`state_mask`, or ``ALL_STATES``.
            info: ask for ``tcp_info`` and the congestion control name (TCP only).
        """
        ext = ((1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))) if info else 0
        return self._request(family, proto, states, ext, pack_sockid(family), dump=True)

    def dump_tcp(self, states: int = ALL_STATES, info: bool = True) -> list[DiagSocket]:
        """TCP sockets of both families."""
        return [s for fam in (socket.AF_INET, socket.AF_INET6) for s in self.dump(fam, socket.IPPROTO_TCP,
                                                                                  states, info)]

    def dump_udp(self) -> list[DiagSocket]:
        """UDP sockets of both families (addresses, queues and owner only: sock_diag has no counters)."""
        return [s for fam in (socket.AF_INET, socket.AF_INET6)
                for s in self.dump(fam, socket.IPPROTO_UDP, ALL_STATES, info=False)]

    def get(
        self, family: int, src: str, sport: int, dst: str, dport: int, cookie: int | None = None,
        proto: int = socket.IPPROTO_TCP, info: bool = True,
    ) -> DiagSocket | None:
        """One socket by its 4-tuple (and cookie, when given); ``None`` when it is gone.

        The kernel finds the socket by address and then compares the cookie, so a reused 4-tuple with a
        different cookie answers ``None`` instead of the wrong socket.
        """
        ext = ((1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))) if info else 0
        sockid = pack_sockid(family, src, sport, dst, dport, cookie=cookie)
        try:
            found = self._request(family, proto, ALL_STATES, ext, sockid, dump=False)
        except SockDiagError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return None
            raise
        return found[0] if found else None


    def find(self, cookie: int, families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
             info: bool = True) -> DiagSocket | None:
        """One TCP socket by its cookie alone (a dump filtered here: the kernel needs the 4-tuple to get
        one socket directly, see :meth:`get`). TIME_WAIT sockets are included, without ``tcp_info``."""
        for fam in families:
            for s in self.dump(fam, socket.IPPROTO_TCP, ALL_STATES, info):
                if s.cookie == cookie:
                    return s
        return None


def tcp_info_by_cookie(cookies: Iterable[int], diag: SockDiag | None = None) -> dict[int, TcpInfo]:
    """``tcp_info`` of the live TCP sockets among ``cookies``, from one dump per family.

    The eBPF sensor calls this once per export period to enrich its flows; cookies of sockets that are gone
    (or in TIME_WAIT, which has no tcp_info) are simply missing from the answer.

    Args:
        cookies: socket cookies (``SO_COOKIE`` / ``bpf_get_socket_cookie``).
        diag: an open client to reuse; one is opened (in the calling thread's netns) and closed otherwise.
    """
    wanted = set(cookies)
    if not wanted:
        return {}
    own = diag is None
    client = SockDiag() if diag is None else diag
    try:
        states = ALL_STATES & ~state_mask(TCP_LISTEN, TCP_TIME_WAIT, TCP_NEW_SYN_RECV)
        return {s.cookie: s.tcp_info for s in client.dump_tcp(states)
                if s.cookie in wanted and s.tcp_info is not None}
    finally:
        if own:
            client.close()


# --- namespaces and cookies -----------------------------------------------------------------------------


def socket_cookie(sock: socket.socket) -> int:
    """The kernel cookie of a socket (``SO_COOKIE``), as sock_diag and BPF report it."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little" if _LE else "big")


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace (``SO_NETNS_COOKIE``, Linux 5.14+)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, "little" if _LE else "big")


_LE: Final = struct.pack("=H", 1) == b"\x01\x00"
_T = TypeVar("_T")


def call_in_netns(netns_path: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on a fresh thread that entered the network namespace at ``netns_path``.

    Why a thread: ``setns`` changes only the calling thread, and doing it on the caller's thread would
    leave it in the other namespace if anything failed on the way back. A :class:`SockDiag` opened inside
    ``fn`` stays bound to that namespace and can be used from any thread afterwards.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({netns_path}): {os.strerror(e)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=run, name=f"netns:{netns_path}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
