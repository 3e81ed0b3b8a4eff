"""``NodeSource`` (the node's own periods and held peer digests) and its wiring into a running node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshnode.daemon import Node, NodeConfig
from meshnode.daemon._services import DiagnosisRunner
from meshnode.diagnosis import DIAGNOSIS_SERVICE, NodeSource, Place, blame
from meshnode.sensor._fake import FakeSensor
from meshnode.summary import PeriodBuilder
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, flow_pb2, mesh_pb2, observer_pb2, observer_pb2_grpc
from tests.unit._flows import T0, S, flow

ME = {"host": "app-1", "site": "s1", "region": "eu"}


def digest(node: str, seq: int, end_ns: int, site: str, addresses: list[str],
           rollups: list[flow_pb2.Rollup]) -> mesh_pb2.Digest:
    return mesh_pb2.Digest(node_id=f"id-{node}", seq=seq, period_end_ns=end_ns, period_start_ns=end_ns - 2 * S,
                           labels={"host": node, "site": site, "region": "eu"}, addresses=addresses,
                           by_destination=rollups)


def test_local_flows_become_collapsed_transactions_with_examples() -> None:
    src = NodeSource(ME)
    recs = [flow(i, dst="10.0.0.9", dport=5432, outcome="timeout", comm="psql", pid=7) for i in range(30)]
    recs += [flow(100 + i) for i in range(40)]
    recs += [flow(200, direction="inbound"), flow(201, kind="interim")]  # neither is a client transaction
    src.add_period(T0 + 10 * S, recs)
    txns = src.transactions(T0, T0 + 60 * S)
    assert sum(t.count for t in txns) == 70
    assert sum(t.count for t in txns if t.problem) == 30
    assert len(txns) <= 5  # 3 example rows of the timeouts + 1 counted rest + 1 ok row
    assert sum(1 for t in txns if t.flow is not None) == 3
    report = blame(txns)
    assert report.suspects[0].name in ("10.0.0.9:5432", "app-1/psql", "10.0.0.9")
    assert len(report.suspects[0].stats.examples) == 3
    assert src.transactions(T0 + 11 * S, T0 + 60 * S) == []  # the range selects by period end


def test_peer_digests_place_destinations_and_carry_degraded_counts() -> None:
    src = NodeSource(ME, addresses=lambda: ["10.0.1.1"])
    db = flow_pb2.Rollup(key="10.0.2.3:5432", flows=50, useful=40, failures={"timeout": 10},
                         flows_retransmitting=6, flows_slow_connect=2, rtt_p50_us=900, rtt_p95_us=2000)
    me = flow_pb2.Rollup(key="10.0.1.1:80", flows=10, useful=10)
    src.add_digest(digest("app-2", 1, T0 + 10 * S, "s2", ["10.0.2.2"], [db, me]))
    src.add_digest(digest("app-2", 1, T0 + 10 * S, "s2", ["10.0.2.2"], [db, me]))  # a repeat is not counted twice
    src.add_digest(digest("db-1", 4, T0 + 10 * S, "s2", ["10.0.2.3"], []))
    # a local flow recorded before the destination's digest named it is placed when asked
    src.add_period(T0 + 10 * S, [flow(1, dst="10.0.2.3", dport=5432)])
    assert src.members()["10.0.2.3"] == Place("db-1", "s2", "eu")
    assert src.members()["10.0.1.1"] == Place("app-1", "s1", "eu")
    txns = src.transactions(T0, T0 + 20 * S)
    kinds = {(t.host, t.kind): t.count for t in txns if t.dport == 5432}
    assert kinds == {("app-2", "retransmits"): 6, ("app-2", "slow_connect"): 2, ("app-2", "timeout"): 10,
                     ("app-2", "ok"): 32, ("app-1", "ok"): 1}
    assert all(t.dst_host == "db-1" for t in txns if t.dport == 5432)
    assert {t.dst_host for t in txns if t.dport == 80} == {"app-1"}
    samples = {(s.host, s.destination): s for s in src.samples(T0, T0 + 20 * S)}
    assert samples[("app-2", "10.0.2.3:5432")].failures == 10
    assert samples[("app-2", "10.0.2.3:5432")].rtt_p95_us == 2000
    assert ("app-1", "10.0.2.3:5432") in samples


def test_own_digest_is_not_counted_twice() -> None:
    src = NodeSource(ME)
    src.add_digest(digest("app-1", 1, T0, "s1", ["10.0.1.1"], [flow_pb2.Rollup(key="10.0.0.2:443", flows=5,
                                                                                useful=5)]), own=True)
    assert src.transactions(0, T0 + S) == []
    assert src.members()["10.0.1.1"].host == "app-1"


def test_bounds_by_time_and_count_are_counted() -> None:
    src = NodeSource(ME, horizon_ns=100 * S, max_periods=5, max_attempts=8)
    for i in range(10):
        src.add_period(T0 + i * S, [flow(i)])
    assert src.held()["periods"] == 5 and src.dropped["periods"] == 5
    assert src.held()["attempts"] == 8 and src.dropped["attempts"] == 2
    src.add_period(T0 + 1000 * S, [flow(50)])  # everything older than the horizon goes
    assert src.held()["periods"] == 1
    for i in range(3):
        src.add_digest(digest("p", i, T0 + (900 + 100 * i) * S, "s2", [], []))
    assert src.held()["digests"] == 2 and src.dropped["digests"] == 1


def test_retry_taxonomy_and_discovery_from_own_attempts() -> None:
    src = NodeSource(ME)
    dead = [flow(i, dst="10.9.9.9", dport=8080, comm="worker", pid=9, outcome="timeout",
                 start_ns=T0 + i * S // 2) for i in range(40)]
    mdns = [flow(100 + i, proto="udp", dst="224.0.0.251", dport=5353, comm="avahi", outcome="udp_unanswered")
            for i in range(4)]
    src.add_period(T0 + 30 * S, [*dead, *mdns])
    advice = src.retry_advice(T0, T0 + 60 * S)
    assert [(a.comm, a.destination, a.attempts, a.suggest_backoff) for a in advice] == \
        [("worker", "10.9.9.9:8080", 40, True)]
    assert "back off exponentially" in advice[0].suggestion
    chatter = src.discovery(T0, T0 + 60 * S)
    assert [(c.comm, c.protocol, c.flows) for c in chatter] == [("avahi", "mdns", 4)]
    assert all(t.dport != 5353 for t in src.transactions(T0, T0 + 60 * S))  # chatter is not a problem


def test_rollups_count_degraded_flows_for_the_digest() -> None:
    recs = [flow(1, retransmits=3, packets_tx=100), flow(2, retransmits=1, packets_tx=1000),
            flow(3, connect_us=1_100_000), flow(4, outcome="refused"), flow(5)]
    summary = PeriodBuilder("n").build(1, T0, T0 + S, recs, [])
    (r,) = summary.by_destination
    assert (r.flows, r.useful, r.flows_retransmitting, r.flows_slow_connect) == (5, 4, 1, 1)


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(listen="127.0.0.1:0", metrics="off", watch_addresses=False, data_dir=tmp_path,  # type: ignore[call-arg]
                      node_id="app-1", labels={"site": "s1"}, export_period=3600.0, retention_age=0.0)


def test_a_node_without_the_mesh_serves_blame_and_anomaly_events(tmp_path: Path) -> None:
    async def main() -> None:
        sensor = FakeSensor("/")
        node = Node(_config(tmp_path), sensor)
        runner = DiagnosisRunner(node)
        node.add_service(runner)
        await node.start()
        channel = grpc.aio.insecure_channel(node.api.address)
        try:
            fid = 0
            for _ in range(10):  # a steady history: 30 good flows a period to 10.0.0.2:443
                sensor.feed([flow(fid := fid + 1) for _ in range(30)])
                await node.tick()
                await node.close_period()
            mark = node.clock() + 1
            sensor.feed([flow(fid := fid + 1, outcome="refused") for _ in range(30)])
            await node.tick()
            await node.close_period()

            stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
            resp = await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10)
            assert resp.transactions == 330 and resp.problems == 30
            assert resp.suspects == []  # 30 of 330 is under 20 %: the history dilutes it
            recent = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=mark), timeout=10)
            assert recent.suspects[0].name in ("10.0.0.2:443", "app-1/curl", "10.0.0.2")
            assert recent.suspects[0].problem_fraction == 1.0

            observer = observer_pb2_grpc.ObserverStub(channel)
            events = [r.event async for r in observer.Events(observer_pb2.EventsRequest(number=50), timeout=10)]
            anomalies = [e for e in events if e.type == flow_pb2.ANOMALY]
            assert anomalies and any("failure rate 100.0 %" in e.detail for e in anomalies)
            assert runner.anomalies == len(anomalies)

            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            async for r in refl.ServerReflectionInfo(iter((req,)), timeout=10):
                assert DIAGNOSIS_SERVICE in {s.name for s in r.list_services_response.service}
                break
        finally:
            await channel.close()
            await node.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_decorated_digests_count_only_ended_outbound_flows() -> None:
    from meshnode.diagnosis import decorate_digest
    from meshnode.mesh._digest import digest_from_period

    recs = [flow(i, dst="10.0.2.3", dport=5432, outcome="timeout") for i in range(4)]
    recs += [flow(10, dst="10.0.2.3", dport=5432, retransmits=5, packets_tx=10)]
    recs += [flow(11, dst="10.0.2.3", dport=7400, kind="interim"),  # a long-lived flow: counted when it ends
             flow(12, dst="10.0.2.3", dport=51000, direction="inbound")]  # the peer's client, not ours
    summary = PeriodBuilder("n").build(1, T0, T0 + 2 * S, [r for r in recs if r.kind == "final"],
                                       [r for r in recs if r.kind == "interim"])
    d = digest_from_period(summary)
    decorate_digest(d, recs)
    kinds = {r.key: dict(r.client_kinds) for r in d.by_destination}
    assert kinds == {"10.0.2.3:5432": {"ok": 0, "timeout": 4, "retransmits": 1}, "10.0.2.3:7400": {"ok": 0},
                     "10.0.2.3:51000": {"ok": 0}}
    d.node_id, d.seq, d.labels["host"] = "id-app-2", 1, "app-2"
    src = NodeSource(ME)
    src.add_digest(d)
    txns = src.transactions(0, T0 + 10 * S)
    assert sorted((t.dport, t.kind, t.count) for t in txns) == [(5432, "retransmits", 1), (5432, "timeout", 4)]
