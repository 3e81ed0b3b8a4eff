"""The path the node will wire: flows -> privacy filter -> digest with endpoint records -> DigestExchange
(sign, bound, verify) -> on_accept -> TrustMonitor -> evidence, exclusions and robust aggregates."""

from __future__ import annotations

from meshnode._model import FlowRecord
from meshnode.mesh import (
    DigestExchange,
    ManualScheduler,
    NodeKey,
    digest_from_period,
    endpoint_records,
    host_reports,
    rollups_from_flows,
    trusted_aggregate,
)
from meshnode.trust import PrivacyPolicy, TrustMonitor, ValidationConfig

S = 10**9
P = 10 * S
WALL = 1_700_000_000 * S
IPS = {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}
DB = "10.9.0.5"


class Period:
    def __init__(self, flows: list[FlowRecord], start: int) -> None:
        self.period_start_ns, self.period_end_ns = start, start + P
        self.by_destination = rollups_from_flows(flows)


def flow(me: str, peer: str, sport: int, dport: int, direction: str, tx: int, rx: int, start: int) -> FlowRecord:
    return FlowRecord(flow_id=sport, src=IPS[me], sport=sport, dst=IPS.get(peer, peer), dport=dport,
                      proto="tcp", direction=direction, start_ns=start + S, end_ns=start + 2 * S, bytes_tx=tx,
                      bytes_rx=rx, packets_tx=9, packets_rx=9, outcome="established", srtt_us=1000)


def test_a_liar_found_through_signed_gossiped_digests_is_left_out_of_aggregates():
    sched = ManualScheduler(wall_start_ns=WALL)
    policy = PrivacyPolicy.from_config({"keep": ["10.0.0.0/8"], "outside": "hash", "secret": "s" * 20})
    keys = {n: NodeKey.from_seed(n.encode()) for n in IPS}
    ex = {n: DigestExchange(keys[n], sched) for n in IPS}
    me = "a"
    monitor = TrustMonitor(keys[me].node_id, validation=ValidationConfig(period_s=10),
                           normalize=policy.endpoint_address, now_ns=WALL)
    monitor.set_members({ip: keys[n].node_id for n, ip in IPS.items()})
    ex[me].on_accept = lambda digest, _signed: monitor.on_digest(digest, "gossip")
    start = WALL - P
    flows = {
        "a": [flow("a", "b", 40000, 443, "outbound", 5000, 700, start),
              flow("a", "c", 40001, 443, "outbound", 800, 90, start),
              flow("a", DB, 40002, 5432, "outbound", 10, 10, start)],
        # b doubles what it says it sent back to a
        "b": [flow("b", "a", 443, 40000, "inbound", 1400, 5000, start),
              flow("b", DB, 40003, 5432, "outbound", 10, 10, start).replace(outcome="timeout", srtt_us=0)],
        "c": [flow("c", "a", 443, 40001, "inbound", 90, 800, start),
              flow("c", DB, 40004, 5432, "outbound", 10, 10, start)],
    }
    for n in IPS:
        filtered = policy.filter_flows(flows[n])
        members = {policy.endpoint_address(ip) for ip in IPS.values()}
        signed = ex[n].publish(policy.filter_digest(digest_from_period(Period(filtered, start),
                                                                      endpoint_records(filtered, members))))
        assert IPS[n].encode() not in signed.payload
        if n == me:
            monitor.on_digest(ex[me].latest(keys[me].node_id).digest, "self")
        else:
            assert ex[me].ingest(signed, IPS[n] + ":7946")
    report = monitor.close_period(WALL + S)
    assert report.matched == 4 and len(report.evidence) == 1
    liar = keys["b"].node_id
    held = [h.digest for h in ex[me].held().values()]
    assert monitor.excluded(d.node_id for d in held) == {liar}
    got = trusted_aggregate(host_reports(held), excluded=monitor.excluded(d.node_id for d in held),
                            now_ns=WALL + S, destination=f"{DB}:5432")
    [row] = got.rows
    assert got.excluded == (liar,) and row.hosts == 2 and row.useful == 2
