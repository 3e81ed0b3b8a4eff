"""Pure parts of the sensor: kernel record decoding, capture formatting, name resolution, BPF sources."""

from __future__ import annotations

import ctypes as ct
import socket
import struct
import subprocess
import sys

import pytest

from meshnode._model import FlowRecord
from meshnode.probes import _records as rec
from meshnode.probes._errors import ProbeError
from meshnode.probes._loader import ProbeConfig, Probes, drop_reason_names, translation_unit
from meshnode.sensor._capture_cmd import HEADER, endpoint, human_line, human_size
from meshnode.sensor._resolve import proc_cgroup, proc_comm, service_name


def _event(kind: int, family: int, src: bytes, dst: bytes, **fields: int) -> bytes:
    ev = rec.CEvent()
    ev.kind, ev.cookie, ev.ts_ns = kind, 77, 123
    f = ev.flow
    f.flags = rec.F_INBOUND | rec.F_SYNACK | (rec.F_INET6 if family == socket.AF_INET6 else 0)
    f.outcome, f.cookie = 2, 77
    f.sport, f.dport, f.pid = 80, 51000, 4242
    f.bytes_tx, f.bytes_rx, f.segs_out, f.segs_in, f.synack_retrans = 10, 20, 5, 6, 0
    for name, value in fields.items():
        setattr(f, name, value)
    ct.memmove(f.saddr, src, len(src))
    ct.memmove(f.daddr, dst, len(dst))
    ev.comm = b"nginx"
    return ct.string_at(ct.addressof(ev), ct.sizeof(ev))


def test_event_decoding_ipv4_and_ipv6() -> None:
    raw = _event(rec.EV_TCP_END, socket.AF_INET, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"),
                 total_retrans=3, srtt_us=250)
    ev = rec.event_from_bytes(raw)
    assert ev.kind == rec.EV_TCP_END and ev.cookie == 77 and ev.flow is not None
    f = ev.flow
    assert (f.src, f.sport, f.dst, f.dport) == ("10.0.0.1", 80, "10.0.0.2", 51000)
    assert (f.direction, f.outcome, f.pid, f.comm) == ("inbound", "refused", 4242, "nginx")
    assert (f.bytes_tx, f.bytes_rx, f.packets_tx, f.packets_rx) == (10, 20, 6, 6)  # + the SYN-ACK
    assert (f.retransmits, f.srtt_us) == (3, 250)
    raw6 = _event(rec.EV_TCP_END, socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::1"),
                  socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.7"))
    f6 = rec.event_from_bytes(raw6).flow
    assert f6 is not None and (f6.src, f6.dst) == ("fd00::1", "192.0.2.7")


def test_release_event_has_no_flow() -> None:
    ev = rec.event_from_bytes(_event(rec.EV_UDP_RELEASE, socket.AF_INET, b"\0" * 4, b"\0" * 4))
    assert ev.flow is None and ev.cookie == 77


def test_struct_layout_matches_ctypes() -> None:
    assert struct.calcsize("=2I 5Q 7Q 13I 4H 4B 16s 16s 2I Q 4I Q 16s") == ct.sizeof(rec.CEvent)
    # the value of tcp_flows: every byte is kernel memory per flow. A live flow is one kmalloc object of
    # value + 8 B key + 48 B hash element header + 8 B allocator list node (the map is not preallocated):
    # 192 B fills the 256 B class exactly, one byte more takes every flow to the 512 B class
    key, element_header = 8, 48 + 8
    assert ct.sizeof(rec.CTcpFlow) == 192
    assert ct.sizeof(rec.CTcpFlow) + key + element_header <= 256


def test_event_flags_family_direction_and_synacks() -> None:
    """Family and direction are flag bits; a passive child's SYN-ACKs (1 + retransmits) count as sent."""
    v4 = socket.inet_aton("10.0.0.1")
    out = rec.event_from_bytes(_event(rec.EV_TCP_END, socket.AF_INET, v4, v4, flags=0)).flow
    assert out is not None and (out.family, out.direction, out.packets_tx) == (socket.AF_INET, "outbound", 5)
    synack = rec.event_from_bytes(_event(rec.EV_TCP_END, socket.AF_INET, v4, v4, synack_retrans=255)).flow
    assert synack is not None and synack.direction == "inbound" and synack.packets_tx == 5 + 256


def test_capture_line_fits_80_columns() -> None:
    f = FlowRecord(flow_id=1, src="fd6d:6e6c:6162:1::1", sport=51234, dst="fd6d:6e6c:6162:1::22", dport=443,
                   proto="tcp", direction="outbound", pid=4194304, comm="a-very-long-process-name",
                   outcome="established", bytes_tx=1234567, bytes_rx=7654321)
    line = human_line(f)
    assert len(line) <= 80 and len(HEADER) <= 80
    assert line.split() == ["4194304", "a-very-lon", "T", "…6162:1::1]:51234", "…6e6c:6162:1::22]:443", "ok",
                            "1.2M", "7.3M"]
    assert human_line(f.replace(thread="isc-net-0000")) == line + " [isc-net-0000]"  # the thread, past 80


def test_human_size_and_endpoint() -> None:
    assert [human_size(n) for n in (0, 999, 1024, 10 * 1024, 5 << 30)] == ["0", "999", "1.0K", "10K", "5.0G"]
    assert endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert endpoint("::1", 53) == "[::1]:53"
    assert endpoint("fd6d:6e6c:6162:1::1", 51234, 17) == "…6162:1::1]:51234"


def test_service_names() -> None:
    assert service_name(443, "tcp") == "https"
    assert service_name(53, "udp") == "domain"
    assert service_name(61000, "tcp") == ""


def test_translation_unit_inlines_every_concern() -> None:
    text = translation_unit()
    for concern in ("tcp_flows", "udp_flows", "owners", "drops"):
        assert f'#line 1 "{concern}.bpf.c"' in text
    assert '#include "tcp_flows.bpf.c"' not in text


def test_drop_reasons_come_from_tracefs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fmt = tmp_path / "events" / "skb" / "kfree_skb"
    fmt.mkdir(parents=True)
    (fmt / "format").write_text('print fmt: "%s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, '
                                '{ 3, "NO_SOCKET" }, { 77, "NETFILTER_DROP" })')
    assert drop_reason_names(tmp_path) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 77: "NETFILTER_DROP"}
    assert drop_reason_names(tmp_path / "missing") == {}


def test_create_sensor_diag_twice() -> None:
    """Regression: a helper named like the _diag submodule was shadowed after the first import."""
    from meshnode.sensor import create_sensor

    for _ in range(2):
        s = create_sensor("diag")
        assert (s.mode, s.fidelity) == ("diag", "polled")
        s.close()


def test_rtt_shift_events_skip_loopback_and_repeat_at_most_every_10s() -> None:
    from meshnode.sensor._ebpf import EbpfSensor

    sensor = EbpfSensor()  # not started: only the event filter is exercised

    def shift(cookie: int, dst: str, ts_s: float) -> rec.KernelEvent:
        raw = _event(rec.EV_RTT_SHIFT, socket.AF_INET, socket.inet_aton("10.0.0.1"), socket.inet_aton(dst))
        ev = rec.event_from_bytes(raw)
        return rec.KernelEvent(kind=ev.kind, ts_ns=int(ts_s * 1e9), cookie=cookie, value=9000, value2=1000,
                               flow=ev.flow)

    ok = sensor._rtt_shift_worth_reporting
    assert not ok(shift(1, "127.0.0.1", 0))
    assert ok(shift(2, "10.0.0.2", 0))
    assert not ok(shift(2, "10.0.0.2", 5))
    assert ok(shift(2, "10.0.0.2", 10.5))
    assert ok(shift(3, "10.0.0.2", 5))


def test_probe_config_flags_for_the_tcp_map() -> None:
    """tcp_flows is not preallocated unless asked; the burst counter is a u8, so its threshold is too."""
    assert "-DTCP_FLOWS_FLAGS=BPF_F_NO_PREALLOC" in Probes(ProbeConfig()).cflags()
    assert "-DTCP_FLOWS_FLAGS=0" in Probes(ProbeConfig(tcp_prealloc=True)).cflags()
    with pytest.raises(ProbeError, match="burst_threshold"):
        Probes(ProbeConfig(burst_threshold=256)).cflags()


def test_a_process_named_with_bytes_that_are_not_utf8_is_read_not_raised() -> None:
    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'py\\xffthon', 0, 0, 0); "
            "print('ready', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert proc_comm(child.pid) == "py\ufffdthon"
        assert proc_cgroup(child.pid).startswith("/")
    finally:
        child.kill()
        child.wait()
    assert proc_comm(child.pid) == ""


def test_udp_scan_reads_the_walks_rows_as_from_c_does() -> None:
    """``UdpScan.of_c`` (the arrays a UDP map walk is judged on, rows made on demand) against ``from_c``."""
    import ctypes as ct

    from meshnode.probes._records import CUdpFlow, CUdpKey, UdpFlowRow, UdpScan

    keys = (CUdpKey * 3)()
    vals = (CUdpFlow * 3)()
    for i in range(3):
        keys[i].cookie, keys[i].rport, keys[i].family = 2**64 - 1 - i, 53 + i, 2
        keys[i].raddr[:4] = [10, 0, 0, i]
        vals[i].sk, vals[i].last_ns, vals[i].first_ns = 0xFFFF_8000_0000_0000 + i, 10**18 + i, 5
        vals[i].bytes_tx, vals[i].lport, vals[i].pid = 100 * i, 40000 + i, 7
        vals[i].laddr[:4] = [127, 0, 0, 1]
    scan = UdpScan.of_c(ct.string_at(keys, ct.sizeof(keys)), ct.string_at(vals, ct.sizeof(vals)), 3)
    assert len(scan) == 3
    assert scan.cookie.tolist() == [2**64 - 1, 2**64 - 2, 2**64 - 3]
    assert scan.sk.tolist() == [0xFFFF_8000_0000_0000 + i for i in range(3)]
    assert scan.last_ns.tolist() == [10**18 + i for i in range(3)]
    assert scan.rows([2, 0]) == [UdpFlowRow.from_c(keys[2], vals[2]), UdpFlowRow.from_c(keys[0], vals[0])]
