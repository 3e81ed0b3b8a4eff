"""An ``EbpfSensor`` over fake probes, and ring records built as the kernel lays them out (no root, no kernel).

For the tests and the benchmark that compare the sensor's JSON paths (``poll`` + ``json_line``, ``poll_json``
rendering in Python or in C) over the same records and sensor state.
"""

from __future__ import annotations

import ctypes as ct
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from meshnode.probes import _records as rec
from meshnode.probes._records import COUNTER_NAMES, UdpFlowRow
from meshnode.sensor._capture_cmd import json_line
from meshnode.sensor._ebpf import EbpfSensor
from meshnode.sensor._native import library_state

NO_PID = 4_000_000_000  # no such process: the kernel's comm is what is reported
NAMED_PID = 4_000_000_001  # no such process, but the kernel side names it (FakeProbes.process_names)
NAMED = "leader-proc"
NAME_ID = 0x5EED_0001  # a name id the kernel side holds (FakeProbes.dns_names)
NAME = "web.example.test"
V4, V6 = socket.AF_INET, socket.AF_INET6


def ip16(text: str) -> bytes:
    """An address as the kernel's 16-byte field holds it (IPv4 in the first four bytes)."""
    fam = V6 if ":" in text else V4
    return socket.inet_pton(fam, text).ljust(16, b"\0")


def raw_event(kind: int = rec.EV_TCP_END, *, cookie: int = 1001, src: str = "10.0.0.1", dst: str = "10.0.0.2",
              comm: bytes = b"curl", flags: int = 0, sk: int = 0xFFFF_8880_0000_1000, **flow: int) -> tuple[Any, ...]:
    """One ring record as the loader hands it over (the struct unpacked), built through the ctypes mirror."""
    ev = rec.CEvent()
    ev.kind, ev.ts_ns, ev.cookie, ev.sk, ev.value, ev.value2 = kind, 5_000_000, cookie, sk, 9000, 100
    f = ev.flow
    f.cookie, f.netns, f.cgroup_id, f.start_ns, f.last_ns = cookie, 4026531840, 0, 1_000_000, 9_000_000
    f.sport, f.dport, f.pid, f.outcome, f.segs_out, f.segs_in = 51000, 443, NO_PID, 1, 7, 6
    f.bytes_tx, f.bytes_rx, f.srtt_us, f.rtt_min_us, f.cwnd = 100, 5000, 40, 30, 10
    f.first_byte_us, f.resp_count, f.resp_sum_us, f.resp_max_us = 200_500, 2, 401_000, 200_500
    f.acked_us, f.answer_sum_us = 70, 400_800
    f.flags = flags | (rec.F_INET6 if ":" in src else 0)
    for name, value in flow.items():
        setattr(f, name, value)
    ct.memmove(f.saddr, ip16(src), 16)
    ct.memmove(f.daddr, ip16(dst), 16)
    ev.comm = comm
    return rec.EVENT_STRUCT.unpack(bytes(ev))


class FakeProbes:
    """What EbpfSensor asks of probes._loader.Probes, serving fixed rows (one poll's worth)."""

    def __init__(self, raws: list[tuple[Any, ...]], udp: list[UdpFlowRow], drops: dict[tuple[int, int], int],
                 counters: dict[str, int]) -> None:
        self.raws, self.udp, self.drops, self.ctr = list(raws), list(udp), dict(drops), counters

    def poll_raw(self) -> list[tuple[Any, ...]]:
        out, self.raws = self.raws, []
        return out

    def poll_records(self) -> tuple[bytes, int, int, int]:
        """``poll_raw`` as the ring lays records out: an 8-byte header before each one."""
        raws = self.poll_raw()
        return b"".join(bytes(8) + rec.EVENT_STRUCT.pack(*v) for v in raws), len(raws), rec.EVENT_SIZE + 8, 8

    def poll_array(self) -> Any:
        return rec.event_array(*self.poll_records())

    def poll_events(self) -> list[rec.KernelEvent]:
        return list(map(rec.event_from_raw, self.poll_raw()))

    def drain_drops(self) -> dict[tuple[int, int], int]:
        out, self.drops = self.drops, {}
        return out

    def tcp_flow_of(self, sk: int) -> None:
        return None

    def udp_flows(self) -> list[UdpFlowRow]:
        return list(self.udp)

    def udp_scan(self) -> rec.UdpScan:
        return rec.UdpScan.of_rows(self.udp_flows())

    def take_udp(self, rows: list[UdpFlowRow]) -> list[UdpFlowRow]:
        taken = [r for r in rows if r in self.udp]
        self.udp = [r for r in self.udp if r not in taken]
        return taken

    def pending(self) -> list[rec.PendingRow]:
        return []

    def take_pending(self, rows: list[rec.PendingRow]) -> list[rec.PendingRow]:
        return []

    icmp_rows: list[rec.IcmpRow] = []

    def drain_icmp(self) -> list[rec.IcmpRow]:
        out, self.icmp_rows = self.icmp_rows, []
        return out

    def refused(self) -> list[rec.RefusedRow]:
        return []

    def take_refused(self, rows: list[rec.RefusedRow]) -> list[rec.RefusedRow]:
        return []

    def counters(self) -> dict[str, int]:
        return dict(self.ctr)

    def comm(self, pid: int) -> str:
        return "from-map" if pid in (31337, NAMED_PID) else ""

    def process_names(self, tgids: Iterable[int]) -> dict[int, str]:
        return {NAMED_PID: NAMED} if NAMED_PID in set(tgids) else {}

    dns_rows: list[rec.DnsTxnRow] = []

    def drain_dns(self) -> list[rec.DnsTxnRow]:
        out, self.dns_rows = self.dns_rows, []
        return out

    def dns_names(self, ids: Iterable[int]) -> dict[int, str]:
        return {NAME_ID: NAME} if NAME_ID in set(ids) else {}


def fake_sensor(tmp_path: Path, raws: list[tuple[Any, ...]], *, udp: list[UdpFlowRow] | None = None,
                drops: dict[tuple[int, int], int] | None = None, state: Callable[[EbpfSensor], None] | None = None,
                native: bool = False) -> EbpfSensor:
    """A sensor over FakeProbes; poll_json renders in Python unless ``native`` (then in C: it must be built)."""
    sensor = EbpfSensor(cgroup_root=tmp_path)  # not opened: the fake stands in for the kernel
    if native:
        assert sensor._native_json() is not None, f"the C renderer does not load: {library_state()}"
    else:
        sensor._native = None
    sensor._probes = FakeProbes(raws, udp or [], drops or {},  # type: ignore[assignment]
                                {n: 5 if n in ("ringbuf_full", "udp_map_full") else 0 for n in COUNTER_NAMES})
    sensor._counters = {n: 0 for n in COUNTER_NAMES}
    sensor._clock_offset = 1_764_000_000_000_000_000
    sensor._reasons = {2: "NOT_SPECIFIED", 5: "NETFILTER_DROP"}
    sensor._last_udp_scan = -(10**30)
    sensor._started = True  # as if start() had opened the fake
    if state is not None:
        state(sensor)
    return sensor


def poll_both_ways(tmp_path: Path, raws: list[tuple[Any, ...]], native: bool = False,
                   **kw: Any) -> tuple[str, str, Any, Any]:
    """The same records through ``poll`` + ``json_line`` and through ``poll_json``: both texts, both
    completeness records."""
    old = fake_sensor(tmp_path, raws, **kw)
    batch = old.poll()
    old_text = "".join(map(json_line, batch.ended))
    new = fake_sensor(tmp_path, raws, native=native, **kw)
    jb = new.poll_json()
    return old_text, jb.text, batch.completeness, jb.completeness
