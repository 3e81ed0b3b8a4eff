"""Kernel records: ctypes mirrors of probes/meshnode.h and the frozen models they become at the edge.

Nothing outside probes/ sees a ctypes object; the loader converts each row into one of the frozen
dataclasses below as soon as it leaves a map or the ring buffer.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Iterable, Sequence

# Ring-buffer record kinds (meshnode.h EV_*).
EV_TCP_END = 1
EV_HALFOPEN_RESET = 2
EV_RETRANS_BURST = 3
EV_RTT_SHIFT = 4
EV_RESET_RX = 5
EV_RESET_TX = 6
EV_UDP_RELEASE = 7
EV_ZERO_WINDOW = 8
EV_ICMP = 9

# EV_ICMP kinds (meshnode.h ICMP_K_*).
ICMP_K_UNREACH = 1
ICMP_K_FRAG = 2
ICMP_K_TTL = 3

# Per-CPU counters (meshnode.h C_*).
COUNTER_NAMES = (
    "ringbuf_full", "tcp_map_full", "udp_map_full", "pending_map_full", "tracked_map_full",
    "drop_map_full", "events", "tcp_opened", "proc_map_full", "icmp_map_full", "refused_map_full",
    "icmp_errors", "refused_attempts",
    "dns_answers", "dns_malformed", "dns_truncated", "dns_txn_map_full", "dns_addrs",
    "dns_name_collisions", "dns_ids_spent",
)

OUTCOME_NAMES = {1: "established", 2: "refused", 3: "timeout", 4: "reset", 7: "in_progress"}
DIRECTION_NAMES = {1: "outbound", 2: "inbound"}

# struct tcp_flow flags (meshnode.h F_*).
F_ZERO_WINDOW = 1
F_CLOSED = 2
F_INET6 = 4
F_INBOUND = 8
F_SYNACK = 16


class CTcpFlow(ct.Structure):
    """struct tcp_flow: the value of tcp_flows (keyed by socket address), 192 bytes."""

    _fields_ = [
        ("cookie", ct.c_uint64), ("netns", ct.c_uint64), ("cgroup_id", ct.c_uint64),
        ("start_ns", ct.c_uint64), ("last_ns", ct.c_uint64),
        ("bytes_tx", ct.c_uint64), ("bytes_rx", ct.c_uint64),
        ("segs_out", ct.c_uint32), ("segs_in", ct.c_uint32), ("total_retrans", ct.c_uint32),
        ("connect_us", ct.c_uint32), ("srtt_us", ct.c_uint32), ("srtt_max_us", ct.c_uint32),
        ("rtt_min_us", ct.c_uint32), ("rtt_ref_us", ct.c_uint32),
        ("cwnd", ct.c_uint32), ("cwnd_min", ct.c_uint32), ("cwnd_max", ct.c_uint32),
        ("pid", ct.c_uint32), ("burst_start_ms", ct.c_uint32),
        ("resets_rx", ct.c_uint16), ("resets_tx", ct.c_uint16), ("sport", ct.c_uint16), ("dport", ct.c_uint16),
        ("burst", ct.c_uint8), ("synack_retrans", ct.c_uint8), ("outcome", ct.c_uint8), ("flags", ct.c_uint8),
        ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16),
        ("xchg_us", ct.c_uint32), ("name_id", ct.c_uint32), ("resp_sum_us", ct.c_uint64),
        ("resp_count", ct.c_uint32), ("resp_max_us", ct.c_uint32), ("first_byte_us", ct.c_uint32),
        ("acked_us", ct.c_uint32), ("answer_sum_us", ct.c_uint64),
    ]


class CUdpKey(ct.Structure):
    _fields_ = [
        ("cookie", ct.c_uint64), ("raddr", ct.c_uint8 * 16), ("rport", ct.c_uint16),
        ("family", ct.c_uint16), ("pad", ct.c_uint32),
    ]


class CUdpFlow(ct.Structure):
    _fields_ = [
        ("sk", ct.c_uint64), ("netns", ct.c_uint64), ("cgroup_id", ct.c_uint64),
        ("first_ns", ct.c_uint64), ("last_ns", ct.c_uint64), ("first_tx_ns", ct.c_uint64),
        ("first_rx_ns", ct.c_uint64), ("bytes_tx", ct.c_uint64), ("bytes_rx", ct.c_uint64),
        ("packets_tx", ct.c_uint32), ("packets_rx", ct.c_uint32), ("pid", ct.c_uint32),
        ("lport", ct.c_uint16), ("direction", ct.c_uint8), ("pad", ct.c_uint8),
        ("laddr", ct.c_uint8 * 16), ("name_id", ct.c_uint32), ("pad2", ct.c_uint32),
    ]


class CPendingKey(ct.Structure):
    _fields_ = [
        ("netns", ct.c_uint64), ("laddr", ct.c_uint8 * 16), ("raddr", ct.c_uint8 * 16),
        ("lport", ct.c_uint16), ("rport", ct.c_uint16), ("family", ct.c_uint16), ("pad", ct.c_uint16),
    ]


class CPendingVal(ct.Structure):
    _fields_ = [("syn_ns", ct.c_uint64), ("cgroup_id", ct.c_uint64)]


class COwner(ct.Structure):
    _fields_ = [("tgid", ct.c_uint32), ("pad", ct.c_uint32), ("comm", ct.c_char * 16)]


class CProcName(ct.Structure):
    """struct proc_name: the value of proc_names (keyed by tgid)."""

    _fields_ = [("comm", ct.c_char * 16)]


class CDropKey(ct.Structure):
    _fields_ = [("sk", ct.c_uint64), ("reason", ct.c_uint32), ("pad", ct.c_uint32)]


class CEvent(ct.Structure):
    _fields_ = [
        ("kind", ct.c_uint32), ("pad", ct.c_uint32), ("ts_ns", ct.c_uint64), ("cookie", ct.c_uint64),
        ("sk", ct.c_uint64), ("value", ct.c_uint64), ("value2", ct.c_uint64), ("flow", CTcpFlow),
        ("comm", ct.c_char * 16),
    ]


class CIcmpKey(ct.Structure):
    """struct icmp_key: a flow as this host sent it, quoted by an ICMP error (icmp_flows' key)."""

    _fields_ = [("laddr", ct.c_uint8 * 16), ("raddr", ct.c_uint8 * 16), ("lport", ct.c_uint16),
                ("rport", ct.c_uint16), ("proto", ct.c_uint8), ("family", ct.c_uint8), ("pad", ct.c_uint16)]


class CIcmpVal(ct.Structure):
    """struct icmp_val: the ICMP errors one flow received."""

    _fields_ = [("first_ns", ct.c_uint64), ("last_ns", ct.c_uint64), ("unreach", ct.c_uint32),
                ("frag", ct.c_uint32), ("ttl", ct.c_uint32), ("mtu", ct.c_uint32), ("code", ct.c_uint32),
                ("pad", ct.c_uint32)]


REFUSED_PORT_WORDS: Final = 16


class CRefusedKey(ct.Structure):
    """struct refused_key: one source refused on one local address (refused's key)."""

    _fields_ = [("laddr", ct.c_uint8 * 16), ("raddr", ct.c_uint8 * 16), ("proto", ct.c_uint8),
                ("family", ct.c_uint8), ("pad", ct.c_uint16)]


class CRefusedVal(ct.Structure):
    """struct refused_val: its attempts and the local ports they went to (bit port % 1024)."""

    _fields_ = [("first_ns", ct.c_uint64), ("last_ns", ct.c_uint64), ("attempts", ct.c_uint32),
                ("lport", ct.c_uint16), ("rport", ct.c_uint16), ("ports", ct.c_uint64 * REFUSED_PORT_WORDS)]


@dataclass(frozen=True, slots=True)
class IcmpRow:
    """The ICMP errors received for one flow (by its 5-tuple), totals since the row was drained last."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    first_ns: int
    last_ns: int
    unreachable: int
    frag_needed: int
    time_exceeded: int
    mtu: int
    code: int

    @classmethod
    def from_c(cls, k: CIcmpKey, v: CIcmpVal) -> IcmpRow:
        return cls(k.proto, addr_text(k.family, k.laddr), k.lport, addr_text(k.family, k.raddr), k.rport,
                   v.first_ns, v.last_ns, v.unreach, v.frag, v.ttl, v.mtu, v.code)


@dataclass(frozen=True, slots=True)
class RefusedRow:
    """Inbound attempts one source made to closed ports of one local address (monotonic times)."""

    proto: int
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    first_ns: int
    last_ns: int
    attempts: int
    ports: int
    port_bits: int

    @classmethod
    def from_c(cls, k: CRefusedKey, v: CRefusedVal) -> RefusedRow:
        bits = 0
        for i, word in enumerate(v.ports):
            bits |= int(word) << (64 * i)
        return cls(k.proto, k.family, addr_text(k.family, k.laddr), v.lport, addr_text(k.family, k.raddr),
                   v.rport, v.first_ns, v.last_ns, v.attempts, ports_from_bits(bits), bits)


def ports_from_bits(bits: int) -> int:
    """Distinct ports behind the kernel's port map (bit port % 1024): the bits set. Exact for a range of up to
    1,024 consecutive ports (a sweep); a lower bound otherwise (ports 1024 apart share a bit). A
    linear-counting estimate would be right for scattered ports but wrong, by a factor of up to ~4, for the
    consecutive ranges sweeps use: the count never claims more ports than were tried."""
    return bits.bit_count()


def addr_text(family: int, raw: ct.Array[ct.c_uint8]) -> str:
    """Textual address from the 16 raw bytes the kernel side fills (IPv4 in the first four)."""
    return _addr(family, bytes(raw))


class TcpFlowRow(NamedTuple):
    """One TCP socket's counters as the kernel holds them (monotonic times).

    A NamedTuple, not a dataclass: one is built per ring-buffer record, and a tuple is built in one step
    where a frozen dataclass sets its 29 fields one call at a time.
    """

    cookie: int
    sk: int
    netns: int
    cgroup_id: int
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    direction: str
    outcome: str
    pid: int
    comm: str
    start_ns: int
    last_ns: int
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    retransmits: int
    connect_us: int
    srtt_us: int
    srtt_max_us: int
    min_rtt_us: int
    cwnd: int
    cwnd_min: int
    cwnd_max: int
    resets_rx: int
    resets_tx: int
    first_byte_us: int
    responses: int
    response_us_sum: int
    response_us_max: int
    answer_us_sum: int
    name_id: int = 0
    """dns_names key of the name the host resolved to the remote address before the flow began (0: none)."""


# struct tcp_flow and struct event as one unpack each: several times cheaper per record than ctypes
# attribute reads, which dominated the sensor's user-space CPU per flow. Checked against ctypes at import.
_TCP_FLOW = "7Q 13I 4H 4B 16s 16s 2I Q 4I Q"
_EVENT = struct.Struct("=2I 5Q " + _TCP_FLOW + " 16s")
_TCP_FLOW_ONLY = struct.Struct("=" + _TCP_FLOW)
_U64 = struct.Struct("=Q")
EVENT_SIZE = _EVENT.size
EVENT_STRUCT = _EVENT
"""struct event as one ``struct.Struct``: ``unpack_from`` gives a raw record, its values in EVENT_FIELDS order."""
EVENT_FIELDS = (
    "kind", "pad", "ts_ns", "cookie", "sk", "value", "value2",
    *(name for name, *_ in CTcpFlow._fields_),
    "comm",
)
"""The names of a raw record's values, in order: struct event with its struct tcp_flow inlined ("flow"'s
fields by their own names, so its ``cookie`` is the second "cookie"). A consumer that unpacks raw records
by position checks its layout against this tuple."""

# Addresses and comms repeat across flows (a service talks to the same peers, a process opens many
# sockets): their text is kept per raw bytes, so a repeat costs one dict lookup instead of inet_ntop /
# ipaddress (~5 us for IPv6) and a decode. Bounded: cleared when full.
_CACHE_MAX = 65536
_ADDR_TEXT: dict[tuple[int, bytes], str] = {}
_COMM_TEXT: dict[bytes, str] = {}


def _tcp_row(sk: int, v: tuple[Any, ...], comm: bytes) -> TcpFlowRow:
    (cookie, netns, cgroup_id, start_ns, last_ns, bytes_tx, bytes_rx,
     segs_out, segs_in, total_retrans, connect_us, srtt_us, srtt_max_us, rtt_min_us, _ref,
     cwnd, cwnd_min, cwnd_max, pid, _burst_start,
     resets_rx, resets_tx, sport, dport, _burst, synack_retrans, outcome, flags, saddr, daddr,
     _xchg, name_id, resp_sum_us, resp_count, resp_max_us, first_byte_us, _acked, answer_sum_us) = v
    family = socket.AF_INET6 if flags & F_INET6 else socket.AF_INET
    if flags & F_SYNACK:  # the SYN-ACKs of a passive child, which its segs_out does not count
        segs_out += 1 + synack_retrans
    src = _ADDR_TEXT.get((family, saddr)) or _addr_cached(family, saddr)
    dst = _ADDR_TEXT.get((family, daddr)) or _addr_cached(family, daddr)
    comm_text = _COMM_TEXT.get(comm)
    if comm_text is None:
        comm_text = _comm_cached(comm)
    return TcpFlowRow(
        cookie, sk, netns, cgroup_id, family, src, sport, dst, dport,
        "inbound" if flags & F_INBOUND else "outbound", OUTCOME_NAMES.get(outcome, "in_progress"),
        pid, comm_text, start_ns, last_ns, bytes_tx, bytes_rx, segs_out, segs_in,
        total_retrans, connect_us, srtt_us, srtt_max_us, rtt_min_us,
        cwnd, cwnd_min, cwnd_max, resets_rx, resets_tx, first_byte_us, resp_count, resp_sum_us, resp_max_us,
        answer_sum_us, name_id,
    )


def addr_of(family: int, data: bytes) -> str:
    """Textual address of 16 raw bytes (as the kernel side fills them), from the bounded cache."""
    return _ADDR_TEXT.get((family, data)) or _addr_cached(family, data)


def comm_of(raw: bytes) -> str:
    """The text of a raw 16-byte comm (up to its first NUL), from the bounded cache."""
    text = _COMM_TEXT.get(raw)
    return _comm_cached(raw) if text is None else text


def _addr_cached(family: int, data: bytes) -> str:
    if len(_ADDR_TEXT) >= _CACHE_MAX:
        _ADDR_TEXT.clear()
    text = _ADDR_TEXT[(family, data)] = _addr(family, data)
    return text


def _comm_cached(raw: bytes) -> str:
    if len(_COMM_TEXT) >= _CACHE_MAX:
        _COMM_TEXT.clear()
    text = _COMM_TEXT[raw] = sys.intern(raw.split(b"\0", 1)[0].decode(errors="replace"))
    return text


def _addr(family: int, data: bytes) -> str:
    """IPv4 from the first four bytes, IPv6 from all sixteen (v4-mapped shown as IPv4)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, data[:4])
    addr = ipaddress.IPv6Address(data)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def _event_dtype() -> np.dtype[Any]:
    fmt: dict[Any, str] = {ct.c_uint64: "<u8", ct.c_uint32: "<u4", ct.c_uint16: "<u2", ct.c_uint8: "u1"}
    names: list[str] = []
    formats: list[str] = []
    offsets: list[int] = []
    for name, ctype, *_ in CEvent._fields_:
        if name == "flow":
            for fname, ftype, *_ in CTcpFlow._fields_:
                names.append("flow_cookie" if fname == "cookie" else fname)
                formats.append(fmt.get(ftype, f"V{ct.sizeof(ftype)}"))
                offsets.append(CEvent.flow.offset + getattr(CTcpFlow, fname).offset)
        else:
            names.append(name)
            formats.append(fmt.get(ctype, f"V{ct.sizeof(ctype)}"))
            offsets.append(getattr(CEvent, name).offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ct.sizeof(CEvent)})


EVENT_DTYPE: Final = _event_dtype()
"""struct event as a numpy record, struct tcp_flow inlined (its ``cookie`` as ``flow_cookie``), offsets from
the ctypes mirror: the columns of a poll's records, read in place."""


def event_array(data: bytes, count: int, stride: int, skip: int) -> np.ndarray[Any, Any]:
    """The ``count`` records of ``Probes.poll_records`` as one structured array of ``EVENT_DTYPE`` (a view
    of ``data``; record i's struct event at ``i * stride + skip``)."""
    fields: dict[str, Any] = dict(EVENT_DTYPE.fields or {})
    view = np.dtype({"names": list(fields), "formats": [f[0] for f in fields.values()],
                     "offsets": [skip + f[1] for f in fields.values()], "itemsize": stride})
    return np.frombuffer(data, dtype=view, count=count)


def event_at(buf: bytes | mmap.mmap, offset: int = 0, _size: int = 0) -> KernelEvent:
    """The ring-buffer record (struct event) at ``offset`` of ``buf`` as a KernelEvent, unpacked in place
    (``buf`` may be the ring buffer's own mapping: nothing is copied but the fields)."""
    return event_from_raw(_EVENT.unpack_from(buf, offset))


def event_from_raw(v: tuple[Any, ...]) -> KernelEvent:
    """A raw record (``EVENT_STRUCT`` unpacked, values in EVENT_FIELDS order) as a KernelEvent."""
    kind, cookie = v[0], v[3]
    flow = None if kind == EV_UDP_RELEASE else _tcp_row(v[4], v[7:-1], v[-1])
    return KernelEvent(kind, v[2], cookie, v[5], v[6], flow)


def event_from_bytes(data: bytes) -> KernelEvent:
    """One ring-buffer record (struct event) as a KernelEvent."""
    return event_at(data)


def tcp_row_from_c(sk: int, f: CTcpFlow) -> TcpFlowRow:
    """A map row (socket address, struct tcp_flow) as a TcpFlowRow."""
    return _tcp_row(sk, _TCP_FLOW_ONLY.unpack(bytes(f)), b"")


def tcp_rows_from_c_arrays(keys: memoryview, values: memoryview) -> list[TcpFlowRow]:
    """Rows of a batch map read: the keys' bytes (socket addresses, u64) and the values' (struct
    tcp_flow), row i of each side by side."""
    sks = (sk for (sk,) in _U64.iter_unpack(keys))
    return [_tcp_row(sk, v, b"") for sk, v in zip(sks, _TCP_FLOW_ONLY.iter_unpack(values), strict=True)]


@dataclass(frozen=True, slots=True)
class UdpFlowRow:
    """One UDP socket's traffic with one remote endpoint (monotonic times)."""

    cookie: int
    sk: int
    netns: int
    cgroup_id: int
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    direction: str
    pid: int
    first_ns: int
    last_ns: int
    first_tx_ns: int
    first_rx_ns: int
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    name_id: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        """The flow's identity inside the sensor: socket cookie and remote endpoint."""
        return (self.cookie, self.dst, self.dport)

    @classmethod
    def from_c(cls, k: CUdpKey, v: CUdpFlow) -> UdpFlowRow:
        return cls(
            cookie=k.cookie, sk=v.sk, netns=v.netns, cgroup_id=v.cgroup_id, family=k.family,
            src=addr_text(k.family, v.laddr), sport=v.lport, dst=addr_text(k.family, k.raddr), dport=k.rport,
            direction=DIRECTION_NAMES.get(v.direction, "outbound"), pid=v.pid, first_ns=v.first_ns,
            last_ns=v.last_ns, first_tx_ns=v.first_tx_ns, first_rx_ns=v.first_rx_ns, bytes_tx=v.bytes_tx,
            bytes_rx=v.bytes_rx, packets_tx=v.packets_tx, packets_rx=v.packets_rx, name_id=v.name_id,
        )



class UdpScan:
    """One walk of the UDP flow map: every row's cookie, socket address and last packet time as arrays; a
    row's ``UdpFlowRow`` made only when asked for (a scan finds a few flows ended among many live ones)."""

    __slots__ = ("_make", "cookie", "last_ns", "sk")

    def __init__(self, cookie: np.ndarray[Any, Any], sk: np.ndarray[Any, Any], last_ns: np.ndarray[Any, Any],
                 make: Callable[[int], UdpFlowRow]) -> None:
        self.cookie, self.sk, self.last_ns, self._make = cookie, sk, last_ns, make

    def __len__(self) -> int:
        return len(self.cookie)

    def rows(self, index: Iterable[int]) -> list[UdpFlowRow]:
        """The rows at ``index``, made now."""
        return [self._make(i) for i in index]

    @classmethod
    def of_rows(cls, rows: Sequence[UdpFlowRow]) -> UdpScan:
        """A scan of rows already made (map walks without batch support; tests)."""
        return cls(np.array([r.cookie for r in rows], dtype=np.uint64), np.array([r.sk for r in rows], dtype=np.uint64),
                   np.array([r.last_ns for r in rows], dtype=np.uint64), list(rows).__getitem__)

    @classmethod
    def of_c(cls, keys: bytes, vals: bytes, n: int) -> UdpScan:
        """A scan of ``n`` rows laid out as ``CUdpKey`` and ``CUdpFlow`` arrays (copied out of the walk's
        buffers, which the next walk overwrites)."""
        ksize, vsize = ct.sizeof(CUdpKey), ct.sizeof(CUdpFlow)

        def field(buf: bytes, struct: Any, name: str, size: int) -> np.ndarray[Any, Any]:
            dtype = np.dtype({"names": [name], "formats": ["<u8"], "offsets": [getattr(struct, name).offset],
                              "itemsize": size})
            return np.frombuffer(buf, dtype=dtype, count=n)[name].copy()

        def make(i: int) -> UdpFlowRow:
            return UdpFlowRow.from_c(CUdpKey.from_buffer_copy(keys, i * ksize),
                                     CUdpFlow.from_buffer_copy(vals, i * vsize))

        return cls(field(keys, CUdpKey, "cookie", ksize), field(vals, CUdpFlow, "sk", vsize),
                   field(vals, CUdpFlow, "last_ns", vsize), make)

class CDnsName(ct.Structure):
    """struct dns_name: the value of dns_names (keyed by name id)."""

    _fields_ = [("name", ct.c_char * 256)]


class CDnsTxnKey(ct.Structure):
    """struct dns_txn_key."""

    _fields_ = [
        ("netns", ct.c_uint64), ("name_id", ct.c_uint32), ("pad", ct.c_uint32), ("server", ct.c_uint8 * 16),
        ("family", ct.c_uint16),
        ("qtype", ct.c_uint16), ("rcode", ct.c_uint16), ("tcp", ct.c_uint16),
    ]


class CDnsTxnVal(ct.Structure):
    """struct dns_txn_val."""

    _fields_ = [
        ("first_ns", ct.c_uint64), ("last_ns", ct.c_uint64), ("latency_sum_ns", ct.c_uint64),
        ("latency_max_ns", ct.c_uint64), ("answers", ct.c_uint32), ("timed", ct.c_uint32), ("pid", ct.c_uint32),
        ("addrs", ct.c_uint32),
    ]


@dataclass(frozen=True, slots=True)
class DnsTxnRow:
    """DNS answers of one question from one resolver with one answer code, summed in the kernel between two
    drains (monotonic times)."""

    netns: int
    name_id: int
    server: str
    family: int
    qtype: int
    rcode: int
    tcp: bool
    first_ns: int
    last_ns: int
    answers: int
    timed: int
    latency_sum_ns: int
    latency_max_ns: int
    pid: int
    addrs: int

    @classmethod
    def from_c(cls, k: CDnsTxnKey, v: CDnsTxnVal) -> DnsTxnRow:
        return cls(
            netns=k.netns, name_id=k.name_id, server=addr_text(k.family, k.server), family=k.family,
            qtype=k.qtype, rcode=k.rcode, tcp=bool(k.tcp), first_ns=v.first_ns, last_ns=v.last_ns,
            answers=v.answers, timed=v.timed, latency_sum_ns=v.latency_sum_ns, latency_max_ns=v.latency_max_ns,
            pid=v.pid, addrs=v.addrs,
        )


def dns_name_text(raw: bytes) -> str:
    """A dns_names value's text (up to its first NUL; the kernel writes lower-case printable ASCII)."""
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


@dataclass(frozen=True, slots=True)
class PendingRow:
    """An inbound SYN seen on a listener whose handshake has not completed."""

    netns: int
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    syn_ns: int
    cgroup_id: int


class KernelEvent(NamedTuple):
    """One ring-buffer record; ``flow`` is the flow's state when it was emitted (None for releases)."""

    kind: int
    ts_ns: int
    cookie: int
    value: int
    value2: int
    flow: TcpFlowRow | None


assert _EVENT.size == ct.sizeof(CEvent), (_EVENT.size, ct.sizeof(CEvent))
assert _TCP_FLOW_ONLY.size == ct.sizeof(CTcpFlow), (_TCP_FLOW_ONLY.size, ct.sizeof(CTcpFlow))
assert len(EVENT_FIELDS) == len(_EVENT.unpack(bytes(_EVENT.size))), EVENT_FIELDS
