"""Scan classification (seed 004) over kernel-aggregated refused flows, scans left out of the host's
fraction and of blame, path MTU problems, and the port map's distinct-port count."""

from __future__ import annotations

from meshnode import health as h
from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.diagnosis._source import _without_scans
from meshnode.probes._records import ports_from_bits


def _refused(src: str, sport: int, attempts: int = 1, ports: int = 1) -> FlowRecord:
    return FlowRecord(flow_id=hash((src, sport)) & 0xFFFF, src="10.0.0.2", sport=sport, dst=src, dport=40000,
                      proto="tcp", direction="inbound", outcome="refused", attempts=attempts, ports_probed=ports)


def _ok(dst: str = "10.0.0.9") -> FlowRecord:
    return FlowRecord(flow_id=1, src="10.0.0.2", sport=50000, dst=dst, dport=443, proto="tcp",
                      direction="outbound", outcome="established")


def test_one_aggregated_sweep_is_a_scan_with_its_ports_and_attempts() -> None:
    scans = h.scan_patterns([_refused("10.9.9.9", 1023, attempts=700, ports=500)])
    assert [(s.src, s.ports, s.failures) for s in scans] == [("10.9.9.9", 500, 700)]


def test_single_port_refusals_are_counted_by_distinct_port() -> None:
    recs = [_refused("10.9.9.8", p) for p in (22, 23, 23, 25)]
    assert h.scan_patterns(recs) == []  # 3 distinct ports < MIN_SCAN_PORTS
    recs += [_refused("10.9.9.8", p) for p in (79, 113)]
    assert [(s.src, s.ports, s.failures) for s in h.scan_patterns(recs)] == [("10.9.9.8", 5, 6)]


def test_a_client_refused_on_one_port_again_and_again_is_not_a_scan() -> None:
    assert h.scan_patterns([_refused("10.1.1.1", 8080, attempts=40, ports=1)]) == []


def test_aggregates_and_single_records_of_one_source_add_up() -> None:
    recs = [_refused("10.9.9.7", 22), _refused("10.9.9.7", 23), _refused("10.9.9.7", 3000, attempts=3, ports=3)]
    assert [(s.ports, s.failures) for s in h.scan_patterns(recs)] == [(5, 5)]


def test_scan_flows_leave_the_hosts_fraction() -> None:
    recs = [_ok(), _ok(), _refused("10.9.9.9", 1023, attempts=500, ports=500), _refused("10.1.1.1", 8080)]
    host = h.host_health(recs)
    assert (host.attempts, host.useful, host.failures) == (4, 2, {"refused": 2})
    scans = h.scan_patterns(recs)
    left_out = h.scan_flow_outcomes(recs, scans)
    assert left_out == {"refused": 1}
    for outcome, n in left_out.items():
        host.remove_count(outcome, n)
    assert (host.attempts, host.useful, host.failures, host.useful_fraction) == (3, 2, {"refused": 1}, 2 / 3)


def test_blame_leaves_a_periods_scans_out_and_keeps_them() -> None:
    batch = FlowBatch.from_records([_ok(), _refused("10.9.9.9", 1023, attempts=9, ports=9), _refused("10.1.1.1", 80)])
    kept, scans = _without_scans(batch)
    assert sorted(kept["dst"].tolist()) == ["10.0.0.9", "10.1.1.1"]
    assert [(s.src, s.ports, s.failures) for s in scans] == [("10.9.9.9", 9, 9)]


def test_path_mtu_problems_smallest_mtu_per_destination() -> None:
    recs = [
        _ok("10.0.0.5").replace(icmp_frag_needed=2, path_mtu=1400),
        _ok("10.0.0.5").replace(icmp_frag_needed=1, path_mtu=1280),
        _ok("10.0.0.6").replace(icmp_frag_needed=1, path_mtu=1492),
        _ok("10.0.0.7"),
    ]
    got = [(p.destination, p.mtu, p.flows, p.errors) for p in h.path_mtu_problems(recs)]
    assert got == [("10.0.0.5:443", 1280, 2, 3), ("10.0.0.6:443", 1492, 1, 1)]


def test_port_map_counts() -> None:
    consecutive = sum(1 << (p % 1024) for p in range(20000, 20500))
    assert ports_from_bits(consecutive) == 500
    assert ports_from_bits(0) == 0
    assert ports_from_bits((1 << 1024) - 1) == 1024
    bits = 0
    for p in (22, 1046, 2070):  # 1024 apart: one bit, so "at least 1"
        bits |= 1 << (p % 1024)
    assert ports_from_bits(bits) == 1


def test_icmp_fields_cross_the_wire() -> None:
    rec = _ok().replace(icmp_unreachable=2, icmp_unreachable_code=13, icmp_frag_needed=1, path_mtu=1280,
                        icmp_time_exceeded=3, attempts=0)
    assert FlowRecord.from_proto(rec.to_proto()) == rec
    agg = _refused("10.9.9.9", 1023, attempts=500, ports=500)
    assert FlowRecord.from_proto(agg.to_proto()) == agg
    assert FlowRecord.from_json(agg.to_json()) == agg
