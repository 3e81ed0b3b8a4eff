"""Kernel records: ctypes mirrors of probes/meshnode.h and the frozen models they become at the edge.

Nothing outside probes/ sees a ctypes object; the loader converts each row into one of the frozen
dataclasses below as soon as it leaves a map or the ring buffer.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

# Ring-buffer record kinds (meshnode.h EV_*).
EV_TCP_END = 1
EV_HALFOPEN_RESET = 2
EV_RETRANS_BURST = 3
EV_RTT_SHIFT = 4
EV_RESET_RX = 5
EV_RESET_TX = 6
EV_UDP_RELEASE = 7
EV_ZERO_WINDOW = 8

# Per-CPU counters (meshnode.h C_*).
COUNTER_NAMES = (
    "ringbuf_full", "tcp_map_full", "udp_map_full", "pending_map_full", "tracked_map_full",
    "drop_map_full", "events", "tcp_opened",
)

OUTCOME_NAMES = {1: "established", 2: "refused", 3: "timeout", 4: "reset", 7: "in_progress"}
DIRECTION_NAMES = {1: "outbound", 2: "inbound"}


class CTcpFlow(ct.Structure):
    _fields_ = [
        ("sk", ct.c_uint64), ("netns", ct.c_uint64), ("cgroup_id", ct.c_uint64),
        ("start_ns", ct.c_uint64), ("last_ns", ct.c_uint64),
        ("bytes_tx", ct.c_uint64), ("bytes_rx", ct.c_uint64),
        ("bytes_acked", ct.c_uint64), ("bytes_received", ct.c_uint64),
        ("segs_out", ct.c_uint32), ("segs_in", ct.c_uint32), ("total_retrans", ct.c_uint32),
        ("connect_us", ct.c_uint32), ("srtt_us", ct.c_uint32), ("srtt_min_us", ct.c_uint32),
        ("srtt_max_us", ct.c_uint32), ("rtt_min_us", ct.c_uint32), ("rtt_ref_us", ct.c_uint32),
        ("cwnd", ct.c_uint32), ("cwnd_min", ct.c_uint32), ("cwnd_max", ct.c_uint32),
        ("pid", ct.c_uint32), ("burst_start_ms", ct.c_uint32),
        ("burst", ct.c_uint16), ("resets_rx", ct.c_uint16), ("resets_tx", ct.c_uint16),
        ("sport", ct.c_uint16), ("dport", ct.c_uint16), ("synack_segs", ct.c_uint16),
        ("family", ct.c_uint8), ("direction", ct.c_uint8), ("outcome", ct.c_uint8), ("flags", ct.c_uint8),
        ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16),
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
        ("laddr", ct.c_uint8 * 16),
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


class CDropKey(ct.Structure):
    _fields_ = [("sk", ct.c_uint64), ("reason", ct.c_uint32), ("pad", ct.c_uint32)]


class CEvent(ct.Structure):
    _fields_ = [
        ("kind", ct.c_uint32), ("pad", ct.c_uint32), ("ts_ns", ct.c_uint64), ("cookie", ct.c_uint64),
        ("value", ct.c_uint64), ("value2", ct.c_uint64), ("flow", CTcpFlow), ("comm", ct.c_char * 16),
    ]


def addr_text(family: int, raw: ct.Array[ct.c_uint8]) -> str:
    """Textual address from the 16 raw bytes the kernel side fills (IPv4 in the first four)."""
    data = bytes(raw)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, data[:4])
    addr = ipaddress.IPv6Address(data)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


@dataclass(frozen=True, slots=True)
class TcpFlowRow:
    """One TCP socket's counters as the kernel holds them (monotonic times)."""

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
    srtt_min_us: int
    srtt_max_us: int
    min_rtt_us: int
    cwnd: int
    cwnd_min: int
    cwnd_max: int
    resets_rx: int
    resets_tx: int

    @classmethod
    def from_c(cls, cookie: int, f: CTcpFlow, comm: bytes = b"") -> TcpFlowRow:
        return cls(
            cookie=cookie, sk=f.sk, netns=f.netns, cgroup_id=f.cgroup_id, family=f.family,
            src=addr_text(f.family, f.saddr), sport=f.sport, dst=addr_text(f.family, f.daddr), dport=f.dport,
            direction=DIRECTION_NAMES.get(f.direction, "outbound"),
            outcome=OUTCOME_NAMES.get(f.outcome, "in_progress"), pid=f.pid,
            comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
            start_ns=f.start_ns, last_ns=f.last_ns, bytes_tx=f.bytes_tx, bytes_rx=f.bytes_rx,
            packets_tx=f.segs_out + f.synack_segs, packets_rx=f.segs_in, retransmits=f.total_retrans,
            connect_us=f.connect_us,
            srtt_us=f.srtt_us, srtt_min_us=f.srtt_min_us, srtt_max_us=f.srtt_max_us, min_rtt_us=f.rtt_min_us,
            cwnd=f.cwnd, cwnd_min=f.cwnd_min, cwnd_max=f.cwnd_max, resets_rx=f.resets_rx, resets_tx=f.resets_tx,
        )


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
            bytes_rx=v.bytes_rx, packets_tx=v.packets_tx, packets_rx=v.packets_rx,
        )


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


@dataclass(frozen=True, slots=True)
class KernelEvent:
    """One ring-buffer record; ``flow`` is the flow's state when it was emitted (None for releases)."""

    kind: int
    ts_ns: int
    cookie: int
    value: int
    value2: int
    flow: TcpFlowRow | None
