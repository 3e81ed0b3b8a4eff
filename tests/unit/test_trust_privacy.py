"""Privacy filters at the source: keyed hashing, coarsening, comm dropping; validation still matches."""

from __future__ import annotations

import ipaddress

import pytest

from meshnode._exceptions import ConfigError
from meshnode._model import FlowRecord
from meshnode.mesh import NodeKey, digest_from_period, endpoint_records, rollups_from_flows, sign_digest
from meshnode.trust import (
    CrossValidator,
    PrivacyPolicy,
    ValidationConfig,
    claims_from_digest,
)
from meshnode.v1 import flow_pb2, mesh_pb2

S = 10**9
P = 10 * S
T0 = 1_700_000_000 * S
SECRET = b"fleet-secret-0123456789"
# two nodes on public addresses (outside the fleet's 10/8), and a web server outside the fleet
NODE_A, NODE_B, WEB, WEB6 = "198.51.100.7", "203.0.113.9", "192.0.2.80", "2001:db8:aa:bb::5"


def policy(**kw) -> PrivacyPolicy:
    return PrivacyPolicy.from_config({"keep": ["10.0.0.0/8"], "outside": "hash", "secret": SECRET.decode(), **kw})


def flow(src: str, sport: int, dst: str, dport: int, direction: str, tx: int, rx: int, **kw) -> FlowRecord:
    return FlowRecord(flow_id=sport, src=src, sport=sport, dst=dst, dport=dport, proto="tcp", direction=direction,
                      start_ns=T0 + S, end_ns=T0 + 2 * S, bytes_tx=tx, bytes_rx=rx, packets_tx=9, packets_rx=7,
                      outcome="established", comm="curl", cgroup="/user.slice/x", **kw)


@pytest.mark.parametrize(("addr", "kind"), [
    ("10.1.2.3", "keep"), (WEB, "hash"), (WEB6, "hash"), ("anon-0011223344556677", "token"),
])
def test_addresses(addr, kind):
    p = policy()
    out = p.address(addr)
    if kind == "keep":
        assert out == addr
    elif kind == "hash":
        assert out.startswith("anon-") and len(out) == 21 and out == p.address(addr)
        assert p.address(addr) != PrivacyPolicy.from_config(
            {"outside": "hash", "secret": "another-secret-xyz"}).address(addr)
    else:
        assert out == addr  # already filtered: idempotent


def test_same_address_spelled_differently_hashes_the_same():
    p = policy()
    assert p.address("2001:db8:aa:bb::5") == p.address("2001:0db8:00aa:00bb:0000:0000:0000:0005")


@pytest.mark.parametrize(("addr", "coarse"), [("192.0.2.80", "192.0.2.0/24"), (WEB6, "2001:db8:aa::/48")])
def test_coarsen(addr, coarse):
    p = PrivacyPolicy.from_config({"coarsen": ["0.0.0.0/0", "::/0"], "secret": SECRET.decode()})
    assert p.address(addr) == coarse
    # endpoint records must keep naming one host: they are hashed, not coarsened
    assert p.endpoint_address(addr) == p.hash_address(addr) != coarse
    # so a policy that coarsens needs the secret up front (it used to fail per digest, which went out raw)
    with pytest.raises(ConfigError, match="secret"):
        PrivacyPolicy.from_config({"coarsen": ["0.0.0.0/0"]})


def test_comm_dropped_for_listed_cgroups_only():
    p = PrivacyPolicy.from_config({"drop_comm_cgroups": ["/user.slice"]})
    assert p.filter_flow(flow("10.0.0.1", 1, "10.0.0.2", 2, "outbound", 1, 1)).comm == ""
    rec = flow("10.0.0.1", 1, "10.0.0.2", 2, "outbound", 1, 1).replace(cgroup="/system.slice/nginx.service")
    assert p.filter_flow(rec).comm == "curl"


@pytest.mark.parametrize("bad", [
    {"outside": "hash"},  # no secret
    {"outside": "hash", "secret": "short"},
    {"outside": "drop"},
    {"keep": ["10.0.0.0/33"]},
    {"keep": "10.0.0.0/8"},
    {"colour": "blue"},
])
def test_bad_config_is_refused(bad):
    with pytest.raises(ConfigError):
        PrivacyPolicy.from_config(bad)


class Period:
    def __init__(self, flows):
        self.period_start_ns, self.period_end_ns = T0, T0 + P
        self.by_destination = rollups_from_flows(flows)


def published(flows: list[FlowRecord], p: PrivacyPolicy, node: NodeKey, members: set[str]) -> bytes:
    """What a node sends: its signed digest, built from filtered flows (rollups and endpoint records)."""
    filtered = p.filter_flows(flows)
    d = digest_from_period(Period(filtered), endpoint_records(filtered, {p.endpoint_address(m) for m in members}))
    d.node_id, d.version, d.seq = node.node_id, 1, 1
    return sign_digest(node, d).SerializeToString()


def test_no_raw_external_address_leaves_and_validation_still_matches():
    p = policy()
    ka, kb = NodeKey.from_seed(b"a"), NodeKey.from_seed(b"b")
    # a talks to b (a fleet member on a public address) and to an outside web server; b sees the other end
    a_flows = [flow(NODE_A, 40000, NODE_B, 443, "outbound", 5000, 700),
               flow(NODE_A, 40001, WEB, 443, "outbound", 100, 20_000),
               flow(NODE_A, 40002, WEB6, 443, "outbound", 100, 20_000),
               flow(NODE_A, 40003, "10.1.2.3", 80, "outbound", 1, 1)]
    b_flows = [flow(NODE_B, 443, NODE_A, 40000, "inbound", 700, 5000)]
    members = {NODE_A, NODE_B}
    wire_a, wire_b = published(a_flows, p, ka, members), published(b_flows, p, kb, members)
    for wire in (wire_a, wire_b):
        for raw in (NODE_A, NODE_B, WEB, WEB6, "2001:db8:aa:bb"):
            assert raw.encode() not in wire
            if ":" not in raw:
                assert ipaddress.ip_address(raw).packed not in wire
    assert b"10.1.2.3" in wire_a  # the fleet's own network is kept as is
    assert b"curl" not in wire_a  # digests never carried comm anyway
    # both ends hashed the same way: the flow between them matches, with no evidence
    v = CrossValidator(ValidationConfig(), owners={NODE_A: ka.node_id, NODE_B: kb.node_id}, normalize=p.address)
    for wire in (wire_a, wire_b):
        signed = mesh_pb2.SignedDigest.FromString(wire)
        pc, dropped = claims_from_digest(mesh_pb2.Digest.FromString(signed.payload), "test")
        assert dropped == 0
        v.add(pc)
    rep = v.evaluate(T0 + P + S)
    assert rep.evidence == [] and rep.matched == 2


def test_filter_digest_rewrites_rollups_and_endpoints_and_merges_coarsened_rollups():
    p = PrivacyPolicy.from_config({"keep": ["10.0.0.0/8"], "coarsen": ["192.0.2.0/24"], "outside": "hash",
                                   "secret": SECRET.decode()})
    d = mesh_pb2.Digest(node_id="n", by_destination=[
        flow_pb2.Rollup(key="192.0.2.10:443", flows=2, useful=2, bytes_tx=10, rtt_p50_us=100, rtt_p95_us=300,
                        failures={"timeout": 1}, throughput_p50_bps=8_000_000, throughput_p05_bps=1_000_000),
        flow_pb2.Rollup(key="192.0.2.11:443", flows=6, useful=5, bytes_tx=20, rtt_p50_us=200, rtt_p95_us=250,
                        failures={"timeout": 2, "refused": 1}, throughput_p50_bps=4_000_000,
                        throughput_p05_bps=2_000_000),
        flow_pb2.Rollup(key="[2001:db8::1]:53", flows=1),
        flow_pb2.Rollup(key="10.0.0.2:5432", flows=1),
    ], endpoints=[flow_pb2.Flow(src="10.0.0.1", dst="192.0.2.10", sport=1, dport=443)])
    out = p.filter_digest(d)
    keys = [r.key for r in out.by_destination]
    assert keys == ["192.0.2.0/24:443", p.address("2001:db8::1") + ":53", "10.0.0.2:5432"]
    merged = out.by_destination[0]
    assert (merged.flows, merged.useful, merged.bytes_tx, merged.rtt_p50_us, merged.rtt_p95_us) == (8, 7, 30, 175,
                                                                                                     300)
    assert dict(merged.failures) == {"timeout": 3, "refused": 1}
    assert (merged.throughput_p50_bps, merged.throughput_p05_bps) == (5_000_000, 1_000_000)
    # endpoint records are hashed, not coarsened
    assert out.endpoints[0].dst == p.hash_address("192.0.2.10") and out.endpoints[0].src == "10.0.0.1"
    assert len(d.by_destination) == 4  # the input is untouched


def test_path_probe_hops_leave_the_node_filtered_like_any_address():
    from meshnode.trust._wiring import filter_published

    p = PrivacyPolicy.from_config({"keep": ["10.0.0.0/8"], "coarsen": ["192.0.2.0/24"], "outside": "hash",
                                   "secret": SECRET.decode()})
    d = mesh_pb2.Digest(node_id="n", measurements=[mesh_pb2.MeasureResponse(
        target="198.51.100.7:443", kind=mesh_pb2.MEASURE_PATH,
        hops=[mesh_pb2.MeasureHop(ttl=1, addr="10.0.0.254", status="time_exceeded"),
              mesh_pb2.MeasureHop(ttl=2, addr="192.0.2.1", status="time_exceeded"),
              mesh_pb2.MeasureHop(ttl=3, addr="", status="timeout"),
              mesh_pb2.MeasureHop(ttl=4, addr="198.51.100.7", status="open")])])
    filter_published(p, d)
    [m] = d.measurements
    assert [h.addr for h in m.hops] == ["10.0.0.254", "192.0.2.0/24", "", p.hash_address("198.51.100.7")]
    assert m.target == p.address("198.51.100.7") + ":443"
