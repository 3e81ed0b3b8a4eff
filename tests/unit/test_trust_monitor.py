"""TrustMonitor: digests in (as the mesh delivers them), evidence, scores, exclusions and the Validate answer out."""

from __future__ import annotations

from meshnode.trust import TrustMonitor, ValidationConfig
from meshnode.v1 import flow_pb2, mesh_pb2, trust_pb2

S = 10**9
P = 10 * S
T0 = 1_700_000_000 * S
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def rec(src, sport, dst, dport, direction, tx, rx, kind=flow_pb2.FINAL):
    return flow_pb2.Flow(src=src, sport=sport, dst=dst, dport=dport, proto=flow_pb2.TCP, direction=direction,
                         bytes_tx=tx, bytes_rx=rx, packets_tx=9, packets_rx=9,
                         outcome=flow_pb2.ESTABLISHED, start_ns=T0 + S, end_ns=T0 + 2 * S, kind=kind)


def digest(node, k, *endpoints):
    return mesh_pb2.Digest(version=1, node_id=node, seq=k + 1, period_start_ns=T0 + k * P,
                           period_end_ns=T0 + (k + 1) * P, endpoints=list(endpoints))


def test_liar_is_excluded_and_the_validate_answer_names_the_flow():
    m = TrustMonitor("a", validation=ValidationConfig(period_s=10), now_ns=T0)
    m.set_members({A: "a", B: "b", C: "c"})
    m.on_digest(digest("a", 0, rec(A, 40000, B, 443, flow_pb2.OUTBOUND, 5000, 700),
                       rec(A, 40001, C, 443, flow_pb2.OUTBOUND, 10, 10)), "self")
    m.on_digest(digest("b", 0, rec(B, 443, A, 40000, flow_pb2.INBOUND, 1400, 5000)), "10.0.0.2:7946")  # lies
    m.on_digest(digest("c", 0, rec(C, 443, A, 40001, flow_pb2.INBOUND, 10, 10)), "10.0.0.3:7946")
    m.on_digest(digest("c", 0, rec(C, 443, A, 40001, flow_pb2.INBOUND, 10, 10)), "10.0.0.3:7946")  # again
    rep = m.close_period(T0 + P + S)
    assert len(rep.evidence) == 1 and rep.matched == 4
    assert m.excluded(["a", "b", "c"]) == {"b"}
    resp = m.validate_response()
    assert [(s.node_id, s.flagged) for s in resp.scores] == [("b", True)]
    assert resp.threshold == 0.5
    [e] = resp.evidence
    assert (e.blamed, e.field, e.severity, e.src, e.sport, e.dst, e.dport) == (
        "b", "bytes_rx" if e.reporter == "a" else "bytes_tx", trust_pb2.CONTRADICTION, e.src, e.sport, e.dst,
        e.dport)
    assert {e.src, e.dst} == {A, B} and {e.sport, e.dport} == {40000, 443}
    assert {e.claimed, e.witnessed} == {"700", "1400"}
    assert resp.counters["claims_matched"] == 4 and resp.counters["digests_validated"] == 3
    assert m.validate_response(peer="c").evidence == [] and list(m.validate_response(peer="c").scores) == []


def test_malformed_records_are_counted_and_the_rest_kept():
    m = TrustMonitor("a", now_ns=T0)
    bad = rec(B, 443, A, 40000, flow_pb2.INBOUND, 1, 1)
    bad.proto = 0
    m.on_digest(digest("b", 0, bad, rec(B, 444, A, 40001, flow_pb2.INBOUND, 1, 1)), "10.0.0.2:7946")
    assert m.validate_response().counters["endpoint_records_dropped"] == 1
    assert m.validator.pending() == 1


def test_challenge_passes_count_once_a_period_and_a_flagged_node_is_not_forgotten():
    m = TrustMonitor("a", validation=ValidationConfig(period_s=10), now_ns=T0)
    m.trust.challenged("liar", False, T0)  # flagged: 0.4
    assert m.trust.is_flagged("liar")
    m.challenged("liar", True, T0 + 1)
    m.challenged("liar", True, T0 + 5 * 10**9)  # within the same period: not scored
    assert m.trust.is_flagged("liar") and m.counters["challenges_passed_not_scored"] == 1
    m.forget(["liar", "gone"])  # reaped from the membership, but still flagged: kept
    assert m.trust.is_flagged("liar")
    m.challenged("liar", True, T0 + 11 * 10**9)
    assert not m.trust.is_flagged("liar") and m.counters["challenges_passed"] == 2
