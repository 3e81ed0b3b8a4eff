"""The sensor's per-flow hot path gives the same results as the plain code it replaced.

Ring buffer read in place (probes._ringbuf, over a file laid out like the kernel's mapping), positional
FlowRecord construction, the JSON text of ``meshnode capture --json``, and the TcpFlowRow → FlowRecord
conversion of the eBPF adapter.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from meshnode._model import FlowRecord
from meshnode.probes import _records as rec
from meshnode.probes._ringbuf import BUSY_BIT, DISCARD_BIT, RingReader
from meshnode.sensor._capture_cmd import json_line
from meshnode.sensor._resolve import service_name
from tests._support.ring import FakeRing

FIELDS = tuple(f.name for f in dataclasses.fields(FlowRecord))


def _payloads(reader: RingReader) -> list[bytes]:
    return reader.drain(lambda buf, off, size: bytes(buf[off:off + size]))


def test_ring_reader_in_order_skips_discarded_stops_at_busy(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring")
    reader = RingReader(ring.fd, ring.size)
    try:
        assert _payloads(reader) == [] and ring.consumer == 0
        ring.put(b"first")
        ring.put(b"dropped", DISCARD_BIT)
        ring.put(b"third-record")
        assert _payloads(reader) == [b"first", b"third-record"]
        assert ring.consumer == ring.prod == 16 + 16 + 24
        busy_at = ring.prod
        ring.put(b"in-flight", BUSY_BIT)
        ring.put(b"after")
        assert _payloads(reader) == [] and ring.consumer == busy_at  # nothing past a record being written
        ring.set_flags(busy_at, len(b"in-flight"), 0)  # committed
        assert _payloads(reader) == [b"in-flight", b"after"] and ring.consumer == ring.prod
    finally:
        reader.close()
        os.close(ring.fd)


def test_ring_reader_record_wrapping_the_end(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring", size=4096)
    reader = RingReader(ring.fd, ring.size)
    try:
        blob = bytes(range(256)) * 3  # 768 B: the sixth record crosses the 4096-byte boundary
        got = []
        for i in range(12):
            ring.put(blob[i:] + blob[:i])
            got += _payloads(reader)
        assert got == [blob[i:] + blob[:i] for i in range(12)]
        assert ring.prod > ring.size and ring.consumer == ring.prod
    finally:
        reader.close()
        os.close(ring.fd)


def test_ring_reader_rejects_a_size_that_is_not_a_power_of_two(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring")
    try:
        with pytest.raises(ValueError):
            RingReader(ring.fd, 3000)
    finally:
        os.close(ring.fd)


def test_event_decoded_in_place_equals_decoded_from_a_copy() -> None:
    ev = rec.CEvent()
    ev.kind, ev.cookie, ev.ts_ns, ev.value = rec.EV_TCP_END, 9, 10, 11
    ev.flow.flags, ev.flow.sport, ev.flow.dport, ev.flow.bytes_tx = rec.F_INET6, 1, 2, 3
    ev.flow.saddr[15] = 1
    raw = bytes(ev)
    buf = b"\xff" * 24 + raw + b"\xff" * 8
    assert rec.event_at(buf, 24) == rec.event_from_bytes(raw)
    assert rec.event_at(buf, 24).flow.src == "::1"  # type: ignore[union-attr]


def _records() -> list[FlowRecord]:
    return [
        FlowRecord(1, "10.0.0.1", 80, "10.0.0.2", 51000, "tcp", "inbound"),
        FlowRecord(2**62 + 5, "fd00::1", 40000, "fd00::2", 443, "tcp", "outbound", pid=42, comm='we"ird\\é☃\n',
                   cgroup="/lab/ä", start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_123_456_789,
                   bytes_tx=1_234_567, bytes_rx=7_654_321, outcome="established", service="https",
                   drop_reasons={"NETFILTER_DROP": 3, "TCP_INVALID_SEQUENCE": 1}, drops=4),
        FlowRecord(3, "1.2.3.4", 1, "5.6.7.8", 53, "udp", "outbound", pid=True),  # bool: json says true
        FlowRecord(4, "1.2.3.4", 1, "5.6.7.8", 53, "udp", "outbound", srtt_us=1.5),  # type: ignore[arg-type]
        FlowRecord(5, "1.2.3.4", 1, "5.6.7.8", 53, "udp", "outbound", comm=None),  # type: ignore[arg-type]
        FlowRecord(-6, "", 0, "", 0, "", "", kind="interim", fidelity="polled", node_id="n1"),
    ]


@pytest.mark.parametrize("flow", _records())
def test_json_text_is_exactly_json_dumps(flow: FlowRecord) -> None:
    assert flow.to_json_text() == json.dumps(flow.to_json())
    assert json_line(flow) == json.dumps(flow.to_json()) + "\n"


@pytest.mark.parametrize("flow", _records())
def test_from_fields_equals_init(flow: FlowRecord) -> None:
    made = FlowRecord.from_fields(*operator.attrgetter(*FIELDS)(flow))
    assert type(made) is FlowRecord and made == flow and hash(made) == hash(flow) and repr(made) == repr(flow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.src = "x"  # type: ignore[misc]
    assert made.replace(sport=9).sport == 9


def _row(**changes: Any) -> rec.TcpFlowRow:
    base = dict(
        cookie=77, sk=0xFFFF0001, netns=4026531840, cgroup_id=0, family=socket.AF_INET, src="10.0.0.1",
        sport=8080, dst="10.0.0.2", dport=51000, direction="inbound", outcome="established", pid=os.getpid(),
        comm="kernel-comm", start_ns=1_000, last_ns=5_000_000, bytes_tx=10, bytes_rx=20, packets_tx=5,
        packets_rx=6, retransmits=2, connect_us=30, srtt_us=250, srtt_max_us=300,
        min_rtt_us=0, cwnd=10, cwnd_min=8, cwnd_max=12, resets_rx=1, resets_tx=0,
        first_byte_us=210_000, responses=3, response_us_sum=630_500, response_us_max=220_100,
        answer_us_sum=630_100,
    )
    base.update(changes)
    return rec.TcpFlowRow(**base)  # type: ignore[arg-type]


def _expected(sensor: Any, r: rec.TcpFlowRow, final: bool, reasons: dict[str, int], limit: str,
              info: Any = None) -> FlowRecord:
    """The conversion as it was written with keyword arguments (the reference for the positional one)."""
    comm, thread = sensor._owner(r.pid, r.comm)
    out = FlowRecord(
        flow_id=r.cookie, src=r.src, sport=r.sport, dst=r.dst, dport=r.dport, proto="tcp", direction=r.direction,
        pid=r.pid, comm=comm, thread=thread, cgroup=sensor._cgroup(r.cgroup_id, r.pid),
        cgroup_id=r.cgroup_id, netns=r.netns, start_ns=r.start_ns + sensor._clock_offset,
        end_ns=r.last_ns + sensor._clock_offset, bytes_tx=r.bytes_tx, bytes_rx=r.bytes_rx,
        packets_tx=r.packets_tx, packets_rx=r.packets_rx, outcome=r.outcome, retransmits=r.retransmits,
        srtt_us=r.srtt_us, min_rtt_us=r.min_rtt_us, max_rtt_us=r.srtt_max_us, cwnd=r.cwnd,
        cwnd_min=r.cwnd_min, cwnd_max=r.cwnd_max, connect_us=r.connect_us, resets_tx=r.resets_tx,
        resets_rx=r.resets_rx, drops=sum(reasons.values()), drop_reasons=reasons,
        kind="final" if final else "interim", fidelity="exact", limited_by=limit,
        service=service_name(r.sport if r.direction == "inbound" else r.dport, "tcp"),
        first_byte_us=r.first_byte_us, responses=r.responses, response_us_sum=r.response_us_sum,
        response_us_max=r.response_us_max, answer_us_sum=r.answer_us_sum,
    )
    if info is not None:
        out = out.replace(rttvar_us=info.rttvar, delivery_rate=info.delivery_rate, lost=info.lost,
                          reordering=info.reordering, min_rtt_us=info.min_rtt or out.min_rtt_us)
    return out


def test_tcp_record_positional_equals_keyword_construction() -> None:
    from collections import Counter

    from meshnode.sensor._ebpf import EbpfSensor

    sensor = EbpfSensor()  # not started: only the conversion is exercised
    sensor._clock_offset = 1_700_000_000_000_000_000
    r = _row()
    first = sensor._tcp_record(r, final=True)
    assert first == _expected(sensor, r, True, {}, "unknown")
    # named as /proc names this process (the probes are not open); the kernel's comm is another thread's
    assert (first.comm, first.thread) == (Path("/proc/self/comm").read_text().strip(), "kernel-comm")
    sensor._drops_by_sk[r.sk] = Counter({"NETFILTER_DROP": 2, "NO_SOCKET": 1})
    sensor._limits[r.cookie] = "receiver_window"
    got = sensor._tcp_record(r, final=True)
    assert got == _expected(sensor, r, True, {"NETFILTER_DROP": 2, "NO_SOCKET": 1}, "receiver_window")
    assert got.drops == 3 and r.sk not in sensor._drops_by_sk and r.cookie not in sensor._limits

    class Info:
        rttvar, delivery_rate, lost, reordering, min_rtt = 17, 123456, 2, 3, 150

    out = _row(direction="outbound", min_rtt_us=90, sport=51000, dport=443)
    live = sensor._tcp_record(out, final=False, info=Info())
    want = _expected(sensor, out, False, {}, "unknown", Info())
    assert live.replace(end_ns=0) == want.replace(end_ns=0) and live.service == "https"
    assert live.min_rtt_us == 150 and live.kind == "interim"
