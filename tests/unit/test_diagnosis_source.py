"""``NodeSource`` (the node's own periods and held peer digests) and its wiring into a running node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshnode._model import FlowRecord
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
    # the inbound flow is the local service's (summary.by_service), not a destination of this host
    assert kinds == {"10.0.2.3:5432": {"ok": 0, "timeout": 4, "retransmits": 1}, "10.0.2.3:7400": {"ok": 0}}
    assert [r.key for r in summary.by_service] == ["10.0.0.1:40012"]
    d.node_id, d.seq, d.labels["host"] = "id-app-2", 1, "app-2"
    src = NodeSource(ME)
    src.add_digest(d)
    txns = src.transactions(0, T0 + 10 * S)
    assert sorted((t.dport, t.kind, t.count) for t in txns) == [(5432, "retransmits", 1), (5432, "timeout", 4)]


def _published(recs: list[FlowRecord], policy: object = None) -> mesh_pb2.Digest:
    """app-2's digest of one period of ``recs``, decorated as its node would (``policy`` after trust's)."""
    from meshnode.diagnosis import decorate_digest
    from meshnode.mesh._digest import digest_from_period

    summary = PeriodBuilder("n").build(1, T0, T0 + 2 * S, [r for r in recs if r.kind == "final"],
                                       [r for r in recs if r.kind == "interim"])
    d = digest_from_period(summary)
    if policy is not None:
        from meshnode.trust._wiring import filter_published

        filter_published(policy, d)  # type: ignore[arg-type]
    decorate_digest(d, recs, policy)  # type: ignore[arg-type]
    d.node_id, d.seq, d.labels["host"], d.labels["site"], d.labels["region"] = "id-app-2", 1, "app-2", "s2", "eu"
    return d


def test_digest_names_the_processes_with_problems_so_a_peer_can_blame_one() -> None:
    dead = [flow(i, dst="10.0.2.77", dport=5432, outcome="timeout", comm="billing-sync", pid=900 + i % 8)
            for i in range(30)]
    healthy = [flow(100 + i, dst="10.0.2.3", dport=6379, comm="worker", pid=50) for i in range(60)]
    d = _published(dead + healthy)
    assert [(p.comm, p.destination, dict(p.kinds)) for p in d.processes] == [
        ("billing-sync", "10.0.2.77:5432", {"timeout": 30})]  # worker has no problem: not named
    assert d.processes_truncated == 0
    src = NodeSource(ME)  # another host: it never saw billing-sync's flows
    src.add_digest(d)
    txns = src.transactions(0, T0 + 200 * S)
    assert sum(t.count for t in txns) == 90  # named rows are part of client_kinds, not added to them
    assert {(t.comm, t.dport, t.kind, t.count) for t in txns} == {
        ("billing-sync", 5432, "timeout", 30), ("", 6379, "ok", 60)}
    top = blame(txns).suspects[0]
    assert (top.kind, top.name, top.shared) == ("process", "app-2/billing-sync", False)


def test_digest_processes_are_bounded_and_the_cut_is_counted() -> None:
    from meshnode.diagnosis import DIGEST_PROCESS_DESTINATIONS, DIGEST_PROCESSES, client_transactions, digest_processes

    recs = [flow(1000 * p + 10 * d + i, dst=f"10.0.3.{d}", dport=80, outcome="refused", comm=f"p{p}")
            for p in range(DIGEST_PROCESSES + 2) for d in range(DIGEST_PROCESS_DESTINATIONS + 1)
            for i in range(p + 1)]
    recs += [flow(99_000 + i, dst="10.0.3.99", dport=80, comm="p9") for i in range(50)]  # ok, busiest
    rows, left_out = digest_processes(client_transactions(recs, T0 + 100_000 * S))
    comms = sorted({c for c, _, _ in rows})
    assert comms == [f"p{p}" for p in range(2, DIGEST_PROCESSES + 2)]  # the most problems first
    assert len(rows) == DIGEST_PROCESSES * DIGEST_PROCESS_DESTINATIONS
    assert all(k == {"refused": 10} for c, _, k in rows if c == "p9")  # problem destinations before ok ones
    # p0, p1: 5 problem rows each; p2..p9: 1 problem row each beyond the 4 kept (p9's ok row is no problem)
    assert left_out == 2 * 5 + DIGEST_PROCESSES
    d = _published(recs)
    assert d.processes_truncated == left_out
    assert len(d.processes) == len(rows) and d.ByteSize() < 8192


def test_privacy_drops_the_comm_of_listed_cgroups_and_hashed_destinations_still_match() -> None:
    from meshnode.trust import PrivacyPolicy

    policy = PrivacyPolicy.from_config({"keep": ["10.0.0.0/16"], "outside": "hash", "secret": "s" * 16,
                                        "drop_comm_cgroups": ["/secret.slice"]})
    recs = [flow(i, dst="10.0.2.77", dport=5432, outcome="timeout", comm="billing-sync",
                 cgroup="/secret.slice/billing.service") for i in range(10)]
    recs += [flow(100 + i, dst="192.0.2.9", dport=443, outcome="refused", comm="curl") for i in range(10)]
    d = _published(recs, policy)
    assert [p.comm for p in d.processes] == ["curl"]  # billing-sync's name does not leave the node
    (curl,) = d.processes
    assert curl.destination.startswith("anon-") and curl.destination.endswith(":443")
    kinds = {r.key: dict(r.client_kinds) for r in d.by_destination}
    assert kinds[curl.destination] == {"ok": 0, "refused": 10}  # rollup keys and records filtered alike
    assert kinds["10.0.2.77:5432"] == {"ok": 0, "timeout": 10}


def test_pending_connects_count_at_the_period_end_and_once() -> None:
    from meshnode.diagnosis import CONNECT_PENDING, ClientView

    def syn(i: int, age_ms: int, end: int, **kw: object) -> FlowRecord:
        return flow(i, kind="interim", outcome="in_progress", start_ns=end - age_ms * 1_000_000, end_ns=end,
                    packets_tx=1, dst="10.0.2.3", dport=5432, **kw)

    end1, end2, end3 = T0 + 2 * S, T0 + 4 * S, T0 + 6 * S
    view = ClientView()
    p1 = [syn(1, 900, end1), syn(2, 50, end1),  # one pending for long, one just sent
          syn(3, 900, end1, direction="inbound"), syn(4, 900, end1, proto="udp"),  # neither is a connect
          flow(5, kind="interim", end_ns=end1)]  # established and still open: counted when it ends
    assert [(r.flow_id, k) for r, k in view.period(end1, p1)] == [(1, CONNECT_PENDING)]
    assert view.period(end1, []) == view.period(end1, p1)  # the decorator and the source see one answer
    p2 = [syn(1, 2900, end2), syn(2, 2050, end2)]  # still pending: 1 already counted, 2 counted now
    assert [(r.flow_id, k) for r, k in view.period(end2, p2)] == [(2, CONNECT_PENDING)]
    p3 = [flow(1, outcome="timeout", dst="10.0.2.3", dport=5432), flow(2, connect_us=2_500_000),
          flow(6, outcome="timeout", dst="10.0.2.3", dport=5432)]  # 6 ended before any period's end saw it
    assert [(r.flow_id, k) for r, k in view.period(end3, p3)] == [(6, "timeout")]

    src = NodeSource(ME)  # the node's own blame sees a blackholed connect one period early
    src.add_period(end1, p1)
    assert [(t.kind, t.count, t.problem) for t in src.transactions(T0, end1) if t.dport == 5432] == [
        (CONNECT_PENDING, 1, True)]


def test_pending_connects_in_the_digest_and_the_source_are_the_same_transactions() -> None:
    from meshnode.diagnosis import decorate_digest
    from meshnode.mesh._digest import digest_from_period

    end = T0 + 2 * S
    recs = [flow(i, kind="interim", outcome="in_progress", start_ns=end - S, end_ns=end, dst="10.0.2.77",
                 dport=5432, comm="billing-sync") for i in range(8)]
    recs += [flow(100 + i, dst="10.0.2.3", dport=6379, comm="worker") for i in range(20)]
    src = NodeSource(ME)
    summary = PeriodBuilder("n").build(1, T0, end, recs[8:], recs[:8])
    d = digest_from_period(summary)
    decorate_digest(d, recs, view=src.view)  # the mesh's listener runs first ...
    src.add_period(end, recs)  # ... then diagnosis's, with the same records
    assert {r.key: dict(r.client_kinds) for r in d.by_destination}["10.0.2.77:5432"] == {
        "ok": 0, "connect_pending": 8}
    assert [(p.comm, dict(p.kinds)) for p in d.processes] == [("billing-sync", {"connect_pending": 8})]
    own = {(t.comm, t.kind): t.count for t in collapse_counts(src.transactions(T0, end))}
    assert own == {("billing-sync", "connect_pending"): 8, ("worker", "ok"): 20}


def collapse_counts(txns: list[Any]) -> list[Any]:
    from collections import Counter
    from types import SimpleNamespace

    c: Counter[tuple[str, str]] = Counter()
    for t in txns:
        c[(t.comm, t.kind)] += t.count
    return [SimpleNamespace(comm=k[0], kind=k[1], count=n) for k, n in c.items()]


def test_a_period_is_collapsed_as_collapse_does_without_a_transaction_per_flow() -> None:
    import random
    from dataclasses import replace

    from meshnode.diagnosis._transaction import Transaction
    from meshnode.summary._problems import problem_kind

    def collapse(transactions, examples=3):  # the rule per Transaction, as first written
        rows, kept, out = {}, {}, []
        for t in transactions:
            key = replace(t, flow=None, count=1)
            if t.flow is not None and t.problem and kept.get(key, 0) < examples:
                kept[key] = kept.get(key, 0) + 1
                out.append(t)
                continue
            rows[key] = rows.get(key, 0) + t.count
        return out + [replace(k, count=n) for k, n in rows.items()]

    rnd = random.Random(7)
    recs = [flow(i, comm=rnd.choice(["a", "b"]), pid=rnd.choice([1, 2]), dport=rnd.choice([443, 5432]),
                 outcome=rnd.choice(["established", "refused", "timeout"]), service=rnd.choice(["", "x"]),
                 retransmits=rnd.choice([0, 9]), packets_tx=10) for i in range(400)]
    txns = [(r, problem_kind(r)) for r in recs]
    src = NodeSource({"host": "h1", "site": "s1", "region": "r1"})
    by_flow = [Transaction(host="h1", site="s1", region="r1", comm=r.comm, pid=r.pid, dst=r.dst, dport=r.dport,
                           service=r.service, dst_host="", dst_site="", dst_region="", problem=k != "ok", kind=k,
                           flow=(r.src, r.sport, r.dst, r.dport, r.proto)) for r, k in txns]
    assert src._collapsed(txns) == collapse(by_flow)


def test_client_transactions_on_columns_follow_the_per_record_rules() -> None:
    """problem_kind, pending_connect and is_discovery, row for row, against the batch's columns."""
    import random

    from meshnode.diagnosis import client_transactions, is_discovery
    from meshnode.summary._problems import CONNECT_PENDING, pending_connect, problem_kind

    rnd = random.Random(3)
    outcomes = ["established", "refused", "timeout", "reset", "udp_answered", "udp_unanswered", "in_progress"]
    end = T0 + 1000 * S
    recs = [flow(i, proto=rnd.choice(["tcp", "udp"]), direction=rnd.choice(["outbound", "inbound"]),
                 outcome=rnd.choice(outcomes), kind=rnd.choice(["final", "final", "interim"]),
                 dst=rnd.choice(["10.0.0.2", "224.0.0.251", "255.255.255.255", "ff02::1", "fd00::1"]),
                 dport=rnd.choice([443, 5353, 1900, 137, 9999]), retransmits=rnd.choice([0, 1, 50]),
                 packets_tx=rnd.choice([0, 10, 1000]), connect_us=rnd.choice([0, 300_000]),
                 start_ns=end - rnd.choice([S // 10, 5 * S]), min_rtt_us=rnd.choice([0, 500]),
                 max_rtt_us=rnd.choice([600, 50_499, 50_500, 90_000]), responses=rnd.choice([0, 1, 4]),
                 response_us_sum=rnd.choice([0, 100_600, 150_000, 900_000]),
                 answer_us_sum=rnd.choice([0, 99_999, 100_000, 400_000])) for i in range(600)]
    want = []
    for r in recs:
        if r.direction != "outbound" or is_discovery(r):
            continue
        if r.kind == "final" and r.outcome != "in_progress":
            want.append((r, problem_kind(r)))
        elif pending_connect(r, end):
            want.append((r, CONNECT_PENDING))
    assert list(client_transactions(recs, end)) == want and len(want) > 50


def test_peer_samples_on_columns_follow_the_per_flow_rule() -> None:
    import random
    import statistics

    from meshnode.diagnosis import samples_from_flows
    from meshnode.summary import percentile

    rnd = random.Random(5)
    recs = [flow(i, dst=rnd.choice(["10.0.0.2", "10.0.0.3", "fd00::1"]), dport=rnd.choice([443, 80]),
                 srtt_us=rnd.choice([0, 100, 2000]), delivery_rate=rnd.choice([0, 10**6, 5 * 10**6]),
                 outcome=rnd.choice(["established", "refused", "in_progress"]),
                 direction=rnd.choice(["outbound", "outbound", "inbound"]), kind=rnd.choice(["final", "interim"]))
            for i in range(300)]
    got = samples_from_flows(recs, host="h", labels={"site": "s"})
    mine = [r for r in recs if r.direction == "outbound" and r.kind == "final"]
    live = [r for r in recs if r.direction == "outbound" and r.kind == "interim" and r.delivery_rate > 0]
    assert [s.destination for s in got] == sorted({r.destination for r in mine} | {r.destination for r in live})
    for s in got:
        fs = [r for r in mine if r.destination == s.destination]
        rtts = [float(r.srtt_us) for r in fs if r.srtt_us > 0]
        # throughput as the digest's rollup has it: finals and interims with a delivery rate
        rates = [8.0 * r.delivery_rate for r in (*fs, *live) if r.delivery_rate > 0 and r.destination == s.destination]
        assert (s.attempts, s.failures) == (sum(r.outcome in ("established", "refused") for r in fs),
                                             sum(r.outcome == "refused" for r in fs))
        assert (s.rtt_p50_us, s.rtt_p95_us) == (percentile(rtts, 0.5), percentile(rtts, 0.95))
        assert s.throughput_bps == (float(statistics.median(rates)) if rates else 0.0)


def test_client_transaction_kinds_share_one_object_per_kind() -> None:
    """``factorize`` groups an object column by identity before by value: kinds made a str a row (np.full
    does that) cost a Python step a flow in every per-period group-by (~45 % of the node's user CPU on a
    churn before this was fixed)."""
    from meshnode._batch import FlowBatch, identities
    from meshnode.diagnosis._source import client_transactions

    flows = [flow(i, outcome="refused" if i % 3 == 0 else "established") for i in range(300)]
    txns = client_transactions(FlowBatch.from_records(flows), T0 + 1_000 * S)
    assert len(txns) == 300
    assert set(txns.kinds.tolist()) == {"refused", "ok"}
    assert len(set(identities(txns.kinds).tolist())) == 2
