"""``EbpfSensor.poll_json`` (the fast path of ``meshnode capture --json``) writes exactly what ``poll`` and
``json_line`` write for the same kernel records and sensor state, and moves the counters the same way.

Each case builds two sensors in the same state over a fake ``Probes`` that serves the same raw ring records
(packed as the kernel lays out ``struct event``, then unpacked with the loader's struct): one is polled the
old way (``poll`` then ``json_line`` per ended flow), the other through ``poll_json``.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshnode._exceptions import SensorError
from meshnode.probes import _records as rec
from meshnode.probes._errors import ProbeError
from meshnode.probes._records import UdpFlowRow
from meshnode.sensor._capture_cmd import json_line
from meshnode.sensor._ebpf import EbpfSensor
from tests._support.sensor import NAMED, NAMED_PID, NO_PID, fake_sensor, ip16, poll_both_ways, raw_event

U64 = 2**64 - 1
U32 = 2**32 - 1
U16 = 2**16 - 1
V4 = socket.AF_INET


def _udp(cookie: int, released: bool = False) -> UdpFlowRow:
    return UdpFlowRow(cookie=cookie, sk=0xFFFF_0000_0000 + cookie, netns=1, cgroup_id=0, family=V4,
                      src="10.0.0.1", sport=40000 + cookie, dst="10.0.0.53", dport=53, direction="outbound",
                      pid=NO_PID, first_ns=1_000, last_ns=2_000 if released else 10**18, first_tx_ns=1_000,
                      first_rx_ns=1_500, bytes_tx=40, bytes_rx=80, packets_tx=1, packets_rx=1)


def _cgroup_dir(tmp_path: Path) -> int:
    d = tmp_path / "lab" / 'we"ird ä'
    d.mkdir(parents=True, exist_ok=True)
    return os.stat(d).st_ino


def _varied(cg: int) -> list[tuple[Any, ...]]:
    """Records covering what the JSON line depends on."""
    out = [
        raw_event(),
        raw_event(cookie=U64 >> 1, src="fd00::1", dst="fd00::2", sport=443, dport=60000, flags=rec.F_INBOUND),
        raw_event(cookie=7, src="::ffff:192.0.2.7", dst="::1", comm=b"py\xffthon\x01"),  # v4-mapped, bad UTF-8
        raw_event(cookie=8, comm=b'a"b\\c\nd\te/\xc3\xa9\xe2\x98\x83'),  # quotes, escapes, non-ASCII
        raw_event(cookie=9, comm=b"sixteen-chars-xx"),  # no NUL in the 16 bytes
        raw_event(cookie=10, comm=b""),  # no comm from the kernel: from the comms map
        raw_event(cookie=11, pid=31337, comm=b""),
        raw_event(cookie=12, pid=os.getpid(), comm=b"kernel-name", cgroup_id=cg),  # /proc comm, known cgroup
        raw_event(cookie=13, pid=U32, cgroup_id=U64),  # unknown cgroup id, no such pid
        # times are monotonic ns (u64 in the kernel; wall-clock u64 on the wire): the largest one that stays a
        # wall-clock u64 after the offset is added, not 2**64-1, which no clock reaches
        raw_event(cookie=U64, netns=U64, start_ns=U64 >> 2, last_ns=U64 >> 2, bytes_tx=U64, bytes_rx=U64, segs_out=U32,
                  segs_in=U32, total_retrans=U32, connect_us=U32, srtt_us=U32, srtt_max_us=U32, rtt_min_us=U32,
                  cwnd=U32, cwnd_min=U32, cwnd_max=U32, resets_rx=U16, resets_tx=U16, sport=U16, dport=U16,
                  synack_retrans=255, flags=rec.F_SYNACK | rec.F_INBOUND, pid=0),
        raw_event(cookie=14, sport=0, dport=0, flags=rec.F_SYNACK, synack_retrans=2),
        raw_event(cookie=15, dport=22),
        raw_event(cookie=16, dport=48000),  # unnamed port
        raw_event(cookie=17, pid=os.getpid(), comm=b"kernel-name", cgroup_id=0),  # same owner, other cgroup
        raw_event(cookie=18, pid=NAMED_PID, comm=b"worker-xyz"),  # named by the kernel side: a worker's flow
        raw_event(cookie=19, pid=NAMED_PID, comm=NAMED.encode()),  # the leader's own: no thread
        raw_event(cookie=20, pid=NAMED_PID, comm=b""),
    ]
    for i, outcome in enumerate((0, 1, 2, 3, 4, 5, 7, 255)):  # every outcome, and values no name is for
        out.append(raw_event(cookie=100 + i, outcome=outcome, src=f"10.1.0.{i}"))
    return out


@pytest.mark.parametrize("native", [False, True], ids=["python", "c"])
def test_json_fast_path_equals_poll_and_json_line(tmp_path: Path, native: bool) -> None:
    cg = _cgroup_dir(tmp_path)
    raws = _varied(cg)
    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, native)
    assert new == old
    assert new.count("\n") == len(raws) and c_new == c_old and c_new.flows_recorded == len(raws)
    lines = [json.loads(ln) for ln in new.splitlines()]
    assert lines[9]["flow_id"] == U64 and lines[9]["bytes_tx"] == U64 and lines[9]["packets_tx"] == U32 + 256
    assert lines[3]["comm"] == 'a"b\\c\nd\te/é☃' and lines[2]["src"] == "192.0.2.7"
    assert lines[6]["comm"] == "from-map" and lines[7]["cgroup"].endswith('/lab/we"ird ä')
    proc_name = Path("/proc/self/comm").read_text().strip()
    assert [(ln["comm"], ln["thread"]) for ln in (lines[0], lines[7], *lines[14:17])] == [
        ("curl", ""), (proc_name, "kernel-name"), (NAMED, "worker-xyz"), (NAMED, ""), (NAMED, "")]
    assert [ln["outcome"] for ln in lines[-8:]] == ["in_progress", "established", "refused", "timeout", "reset",
                                                     "in_progress", "in_progress", "in_progress"]


@pytest.mark.parametrize("native", [False, True], ids=["python", "c"])
def test_json_fast_path_lines_carry_icmp_errors(tmp_path: Path, native: bool) -> None:
    """A flow with ICMP errors leaves the template (whose ICMP fields are zeros), as a named flow does; the
    flows around it stay on it, in ring order."""
    raws = [raw_event(cookie=c, sport=51000 + c, src=src, dst=dst) for c, src, dst in
            ((1, "10.0.0.1", "10.0.0.2"), (2, "10.0.0.1", "10.0.0.2"), (3, "10.0.0.1", "10.0.0.3"),
             (4, "fd00::1", "fd00::2"))]
    errors = [rec.IcmpRow(6, "10.0.0.1", 51002, "10.0.0.2", 443, 1, 2, 0, 2, 0, 1280, 0),
              rec.IcmpRow(6, "10.0.0.1", 51003, "10.0.0.2", 443, 1, 2, 1, 0, 0, 0, 1),  # not flow 3's: its dst
              rec.IcmpRow(17, "fd00::1", 51004, "fd00::2", 443, 1, 2, 1, 0, 0, 0, 3),  # UDP: not flow 4's
              rec.IcmpRow(6, "fd00::1", 51004, "fd00::2", 443, 1, 2, 0, 0, 3, 0, 0)]

    def held(sensor: EbpfSensor) -> None:
        sensor._probes.icmp_rows = list(errors)  # type: ignore[attr-defined]

    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, native, state=held)
    assert new == old and c_new == c_old
    assert [(ln["flow_id"], ln["icmp_frag_needed"], ln["path_mtu"], ln["icmp_unreachable"], ln["icmp_time_exceeded"])
            for ln in map(json.loads, new.splitlines())] == [(1, 0, 0, 0, 0), (2, 2, 1280, 0, 0), (3, 0, 0, 0, 0),
                                                            (4, 0, 0, 0, 3)]


def test_json_fast_path_with_drops_limits_tcp_info_and_other_records(tmp_path: Path) -> None:
    """Drop reasons and limits the sensor holds for flows, tcp_info to forget, events, UDP releases and
    scans, half-open resets (no cookie: the general path), in one poll, in ring order."""
    raws = [
        raw_event(cookie=1, sk=0x10),
        raw_event(rec.EV_RTT_SHIFT, cookie=2, sk=0x20, dst="10.9.9.9"),
        raw_event(rec.EV_RETRANS_BURST, cookie=2, sk=0x20),
        raw_event(cookie=2, sk=0x20, outcome=2),
        raw_event(rec.EV_UDP_RELEASE, cookie=3),
        raw_event(rec.EV_HALFOPEN_RESET, cookie=0, flags=rec.F_INBOUND, outcome=4, sport=8080),
        raw_event(rec.EV_HALFOPEN_RESET, cookie=0, flags=rec.F_INBOUND, outcome=4, sport=8080),  # SYN again
        raw_event(rec.EV_RESET_RX, cookie=4),
        raw_event(rec.EV_ZERO_WINDOW, cookie=4),
        raw_event(99, cookie=5),  # unknown kind: dropped with a warning
        raw_event(cookie=4, sk=0x40, src="fd00::9", dst="fd00::10"),
        raw_event(cookie=6, sk=0x60),
    ]

    def state(s: EbpfSensor) -> None:
        s._drops_by_sk[0x10] = Counter({"NETFILTER_DROP": 3, "TCP_INVALID_SEQUENCE": 1, 'od"d': 2})
        s._drops_by_sk[0x40] = Counter()  # popped, but no reasons
        s._drops_by_sk[0x99] = Counter({"NO_SOCKET": 1})  # another socket's: kept
        s._limits[2] = "receiver_window"
        s._limits[4] = "congestion"
        s._tcpinfo[1] = (0, None)  # type: ignore[assignment]
        s._released.add(3)

    udp = [_udp(3), _udp(8)]  # 3 released above, 8 live
    drops = {(0x99, 5): 2, (0, 2): 4}
    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, udp=udp, drops=drops, state=state)
    assert new == old
    got = [json.loads(ln) for ln in new.splitlines()]
    assert [(g["proto"], g["flow_id"] if g["proto"] == "tcp" else g["sport"]) for g in got][:3] == \
        [("tcp", 1), ("tcp", 2), ("tcp", got[2]["flow_id"])]
    assert got[0]["drops"] == 6 and got[0]["drop_reasons"]['od"d'] == 2
    assert got[1]["limited_by"] == "receiver_window" and got[1]["outcome"] == "refused"
    assert got[2]["outcome"] == "reset" and got[2]["direction"] == "inbound"  # the half-open one, once
    assert got[3]["limited_by"] == "congestion" and got[3]["drops"] == 0 and got[3]["src"] == "fd00::9"
    assert got[-1]["proto"] == "udp" and got[-1]["sport"] == 40003 and len(got) == 6
    assert c_new == c_old and c_new.flows_recorded == 6 and c_new.lost_events == 5 and c_new.map_evictions == 5
    assert c_new.drained_rows == c_old.drained_rows > 0 and c_new.unattributed_drops == 4


def test_json_fast_path_state_after_poll_matches(tmp_path: Path) -> None:
    """What a poll leaves in the sensor (drops, limits, tcp_info, releases) is the same either way."""
    raws = [raw_event(cookie=1, sk=0x10), raw_event(cookie=2, sk=0x20)]

    def state(s: EbpfSensor) -> None:
        s._drops_by_sk[0x10] = Counter({"X": 1})
        s._drops_by_sk[0x30] = Counter({"Y": 1})
        s._limits.update({1: "app", 3: "app"})
        s._tcpinfo.update({1: (0, None), 3: (0, None)})  # type: ignore[dict-item]

    a, b = fake_sensor(tmp_path, raws, state=state), fake_sensor(tmp_path, raws, state=state)
    a.poll()
    b.poll_json()
    for name in ("_drops_by_sk", "_limits", "_tcpinfo", "_released", "_udp_sks"):
        assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize(("src", "dst"), [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")])
def test_json_fast_path_address_caches_stay_right_when_full(tmp_path: Path, src: str, dst: str) -> None:
    """The per-sensor address text caches are bounded (cleared when full) and kept per family: the same
    16 raw bytes are another address in the other family."""
    raws = [raw_event(cookie=1, src=src, dst=dst), raw_event(cookie=2, src=src, dst=dst)]
    s = fake_sensor(tmp_path, raws)
    other = ip16("10.0.0.1" if ":" in src else "fd00::1")
    s._json_addr4.update({bytes([i % 256, i // 256]) + bytes(14): '"x"' for i in range(65536)})
    s._json_addr6.update({bytes([i % 256, i // 256]) + bytes(14): '"y"' for i in range(65536)})
    (s._json_addr6 if ":" in src else s._json_addr4)[other] = '"wrong family"'
    old = fake_sensor(tmp_path, raws)
    assert s.poll_json().text == "".join(map(json_line, old.poll().ended))
    used, unused = (s._json_addr6, s._json_addr4) if ":" in src else (s._json_addr4, s._json_addr6)
    assert len(used) == 2 and len(unused) == 65536


def test_drain_unpacked_equals_drain_with_the_event_decoder(tmp_path: Path) -> None:
    from meshnode.probes._ringbuf import DISCARD_BIT, RingReader
    from tests._support.ring import FakeRing

    ring = FakeRing(tmp_path / "ring", size=4096)
    reader = RingReader(ring.fd, ring.size)
    try:
        records = [rec.EVENT_STRUCT.pack(*raw_event(cookie=i, bytes_tx=i * 1000)) for i in range(40)]
        got: list[tuple[Any, ...]] = []
        for i, payload in enumerate(records):  # 224 B each: several wrap the 4096-byte area
            ring.put(payload, DISCARD_BIT if i % 7 == 3 else 0)
            if i % 5 == 4:
                got += reader.drain_unpacked(rec.EVENT_STRUCT)
        ring.put(b"short record")  # not an event: skipped, its space released
        got += reader.drain_unpacked(rec.EVENT_STRUCT)
        want = [rec.EVENT_STRUCT.unpack(p) for i, p in enumerate(records) if i % 7 != 3]
        assert got == want and ring.consumer == ring.prod
        assert [rec.event_from_raw(v) for v in got] == [rec.event_from_bytes(p) for i, p in enumerate(records)
                                                         if i % 7 != 3]
    finally:
        reader.close()
        os.close(ring.fd)


def test_drain_unpacked_stops_at_a_record_being_written(tmp_path: Path) -> None:
    """The bulk pass takes the committed run before a busy record, and nothing past it until it commits."""
    from meshnode.probes._ringbuf import BUSY_BIT, RingReader
    from tests._support.ring import FakeRing

    ring = FakeRing(tmp_path / "ring", size=8192)
    reader = RingReader(ring.fd, ring.size)
    try:
        records = [rec.EVENT_STRUCT.pack(*raw_event(cookie=i, sport=i)) for i in range(8)]
        busy_at = 0
        for i, payload in enumerate(records):
            if i == 5:
                busy_at = ring.prod
            ring.put(payload, BUSY_BIT if i == 5 else 0)
        got = reader.drain_unpacked(rec.EVENT_STRUCT)
        assert [v[3] for v in got] == [0, 1, 2, 3, 4] and ring.consumer == busy_at
        assert reader.drain_unpacked(rec.EVENT_STRUCT) == []
        ring.set_flags(busy_at, rec.EVENT_SIZE, 0)
        got = reader.drain_unpacked(rec.EVENT_STRUCT)
        assert got == [rec.EVENT_STRUCT.unpack(p) for p in records[5:]] and ring.consumer == ring.prod
    finally:
        reader.close()
        os.close(ring.fd)


@pytest.mark.parametrize("native", [False, True], ids=["python", "c"])
def test_capture_json_output_is_the_same_through_either_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              native: bool) -> None:
    """``meshnode capture --json`` end to end (flows, then the completeness line) over the same records:
    through the sensor's poll_json (rendering in Python or in C), and through poll + json_line (the path
    of sensors without one)."""
    import argparse

    import meshnode.sensor
    from meshnode.sensor import _capture_cmd

    cg = _cgroup_dir(tmp_path)
    outputs = []
    for fast in (True, False):
        sensor = fake_sensor(tmp_path, [*_varied(cg), raw_event(rec.EV_UDP_RELEASE, cookie=3)], udp=[_udp(3)],
                         drops={(0, 2): 1}, native=native and fast)
        sensor.active = list  # type: ignore[method-assign]  # no live flows to add at exit
        sensor._probes.close = lambda: None  # type: ignore[attr-defined]
        if not fast:
            sensor.poll_json = None  # type: ignore[assignment,method-assign]
        monkeypatch.setattr(meshnode.sensor, "create_sensor", lambda *a, s=sensor: s)
        args = argparse.Namespace(sensor="ebpf", cgroup="/", idle_timeout=90.0, duration=0.05, interval=0.01,
                                  json=True)
        assert _capture_cmd.run(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert len(lines) == len(_varied(cg)) + 2 and json.loads(lines[-2])["proto"] == "udp"
    assert json.loads(lines[-1])["completeness"]["flows_recorded"] == len(lines) - 1


def test_a_probe_failure_in_poll_or_active_is_a_sensor_error_the_node_survives(tmp_path: Path) -> None:
    """The node's loop retries a ``MeshnodeError`` (bounded); a bare ProbeError used to stop it."""

    def fail(*_: Any) -> list[Any]:
        raise ProbeError("batch lookup-and-delete on BPF map 7 failed: No space left on device")

    sensor = fake_sensor(tmp_path, [])
    sensor._probes.drain_drops = fail  # type: ignore[method-assign]
    with pytest.raises(SensorError, match="sensor poll failed: batch lookup-and-delete"):
        sensor.poll()
    sensor._probes.tcp_flows = fail  # type: ignore[attr-defined]
    with pytest.raises(SensorError, match="reading the active flows failed"):
        sensor.active()
