"""Diagnosis across a restart: blame's periods, anomaly baselines and events, and peer digests rebuilt at
start from the node's store and the digest log, so that blame after a restart is the same as before it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc

from meshnode.daemon import Node, NodeConfig
from meshnode.daemon._services import DiagnosisRunner
from meshnode.diagnosis import DigestLog
from meshnode.sensor._fake import FakeSensor
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, flow_pb2, mesh_pb2, observer_pb2, observer_pb2_grpc
from tests.unit._flows import T0, S, flow

PERIOD = 2


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(listen="127.0.0.1:0", metrics="off", watch_addresses=False, data_dir=tmp_path,  # type: ignore[call-arg]
                      node_id="app-1", labels={"site": "s1", "region": "eu"}, export_period=float(PERIOD),
                      retention_age=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


async def _started(tmp_path: Path, clock: Clock, sensor: FakeSensor) -> tuple[Node, DiagnosisRunner]:
    """A started node with diagnosis, as ``meshnode run`` has it (no mesh)."""
    node = Node(_config(tmp_path), sensor, clock=clock)
    runner = DiagnosisRunner(node)
    node.add_service(runner)
    await node.start()
    return node, runner


def _peer_digest(seq: int, end_ns: int, failing: bool) -> mesh_pb2.Digest:
    """app-2's period: 40 calls to 10.0.0.2:443 (all refused when ``failing``) and 40 good ones elsewhere."""
    kinds = {"refused": 40, "ok": 0} if failing else {"ok": 40}
    return mesh_pb2.Digest(
        node_id="id-app-2", seq=seq, period_start_ns=end_ns - PERIOD * S, period_end_ns=end_ns,
        labels={"host": "app-2", "site": "s1", "region": "eu"}, addresses=["10.0.0.5"],
        by_destination=[flow_pb2.Rollup(key="10.0.0.2:443", flows=40, client_kinds=kinds),
                        flow_pb2.Rollup(key="10.0.0.3:80", flows=40, client_kinds={"ok": 40})])


async def _run_periods(node: Node, runner: DiagnosisRunner, sensor: FakeSensor, clock: Clock) -> None:
    fid = 0
    for i in range(14):
        failing = i >= 11  # 10.0.0.2:443 refuses everyone from the 12th period on
        clock.now += PERIOD * S
        recs = [flow(fid := fid + 1, start_ns=clock.now - S, end_ns=clock.now - S // 2,
                     outcome="refused" if failing else "established") for _ in range(30)]
        recs += [flow(fid := fid + 1, dst="10.0.0.3", dport=80, start_ns=clock.now - S, end_ns=clock.now - S // 2)
                 for _ in range(30)]
        sensor.feed(recs)
        await node.tick()
        await node.close_period()
        runner.on_digest(_peer_digest(i + 1, clock.now, failing), None, own=False)


async def _answers(node: Node) -> tuple[dict[str, Any], dict[str, Any], list[tuple[int, str]]]:
    from google.protobuf.json_format import MessageToDict

    channel = grpc.aio.insecure_channel(node.api.address)
    try:
        stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
        now = MessageToDict(await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10))
        whole = MessageToDict(await stub.Blame(diagnosis_pb2.BlameRequest(whole_range=True), timeout=10))
        observer = observer_pb2_grpc.ObserverStub(channel)
        events = [r.event async for r in observer.Events(observer_pb2.EventsRequest(number=100), timeout=10)]
        return now, whole, [(e.time_ns, e.detail) for e in events if e.type == flow_pb2.ANOMALY]
    finally:
        await channel.close()


def test_blame_anomalies_and_digests_survive_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock()
        sensor = FakeSensor("/")
        node, runner = await _started(tmp_path, clock, sensor)
        try:
            await _run_periods(node, runner, sensor, clock)
            before = await _answers(node)
        finally:
            await node.shutdown()

        again, runner2 = await _started(tmp_path, clock, FakeSensor("/"))
        try:
            after = await _answers(again)
            assert runner2.source.held()["digests"] == 14
        finally:
            await again.shutdown()

        now, whole, anomalies = before
        # before the restart: the current regime began with the refusals and names them, on both hosts
        top = now["suspects"][0]
        assert (top["kind"], top["name"]) == ("ENTITY_KIND_SERVICE", "10.0.0.2:443")
        assert top["problemFraction"] == 1.0 and top["hosts"] == ["app-1", "app-2"]
        assert int(top["transactions"]) == 3 * (30 + 40)
        assert int(now["regimeSinceNs"]) == T0 + 11 * PERIOD * S
        assert now["change"].endswith("rose to 100% problems")
        diluted = whole["suspects"][0]  # 3 of 14 periods: the whole range dilutes it to the threshold
        assert (int(diluted["problems"]), int(diluted["transactions"])) == (3 * 70, 14 * 70)
        assert int(whole["regimeSinceNs"]) == int(whole["sinceNs"]) and "change" not in whole
        assert anomalies[0][0] == T0 + 12 * PERIOD * S
        assert anomalies[0][1].startswith("destination 10.0.0.2:443: failure rate 100.0 % vs baseline 0.0 %")
        # after it: the same answers and the same anomaly events, rebuilt
        assert after == before

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_digest_log_keeps_each_digest_once_within_its_bounds(tmp_path: Path) -> None:
    log = DigestLog(tmp_path / "d" / "digests.db", horizon_ns=100 * S, max_digests=3)
    for seq in range(1, 6):
        log.append(_peer_digest(seq, T0 + seq * S, failing=seq > 3), own=False)
    log.append(_peer_digest(5, T0 + 5 * S, failing=True), own=False)  # a repeat
    log.append(mesh_pb2.Digest(node_id="id-me", seq=1, period_end_ns=T0 + 5 * S), own=True)
    got = [(d.node_id, d.seq, own) for d, own in log.load(T0 + 2 * S)]
    assert got == [("id-app-2", 2, False), ("id-app-2", 3, False), ("id-app-2", 4, False),
                   ("id-app-2", 5, False), ("id-me", 1, True)]
    assert next(log.load(T0 + 5 * S))[0].by_destination[0].client_kinds["refused"] == 40
    log._trim(T0 + 5 * S)  # what every TRIM_EVERY-th append does: the newest max_digests are kept
    assert [d.seq for d, _ in log.load(0)] == [4, 5, 1]
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    assert log.failed == 0
    log.close()


def test_a_rebuild_reads_the_newest_periods_that_fit_its_budget(tmp_path: Path) -> None:
    from meshnode.diagnosis import AnomalyDetector, NodeSource, rebuild
    from meshnode.store import Store
    from meshnode.summary import PeriodBuilder

    store = Store.in_dir(tmp_path)
    builder = PeriodBuilder("app-1")
    seq = store.open_period(T0)
    for i in range(5):
        start, end = T0 + i * PERIOD * S, T0 + (i + 1) * PERIOD * S
        recs = [flow(100 * i + j, start_ns=start, end_ns=end - S) for j in range(10)]
        summary = builder.build(seq, start, end, recs, [])
        _, nxt, _ = store.close_period(seq, end, recs, [], summary.to_json(), next_start_ns=end, now_ns=end)
        assert nxt is not None
        seq = nxt
    src = NodeSource({"host": "app-1"}, period_ns=PERIOD * S)
    got = rebuild(store, src, AnomalyDetector(), now_ns=T0 + 5 * PERIOD * S, max_flows=25)
    assert (got.periods, got.skipped, got.digests) == (2, 3, 0)
    assert [end for end, _ in src.periods(0, T0 + 60 * S)] == [T0 + 4 * PERIOD * S, T0 + 5 * PERIOD * S]
    assert sum(t.count for t in src.transactions(0, T0 + 60 * S)) == 20
    store.close()


def test_hour_of_day_baselines_rebuilt_from_the_store_give_the_verdicts_of_a_node_never_restarted(
        tmp_path: Path) -> None:
    """Four days of 10-minute periods, a nightly backup at 02:00 and, on the last day, the same spike at
    14:00. One detector runs through; another starts at 01:30 on the last day from what the store holds."""
    from meshnode.diagnosis import AnomalyDetector, NodeSource, rebuild
    from meshnode.store import Store
    from meshnode.summary import PeriodSummary, Rollup
    from tests._support.anomaly import DAY0, HOUR, backup_days

    period = 600 * S

    store = Store.in_dir(tmp_path)
    series = backup_days(4, spike_at=14, period=period)
    restart = DAY0 + 3 * 24 * HOUR + HOUR + 30 * 60 * S  # day 3, 01:30
    never = AnomalyDetector()
    restarted: AnomalyDetector | None = None
    fresh = AnomalyDetector()  # what a node that rebuilt nothing would say
    got: dict[str, list[list[str]]] = {"never": [], "restarted": [], "fresh": []}
    seq = store.open_period(DAY0)
    for end, r in series:
        if end > restart and restarted is None:
            restarted = AnomalyDetector()
            rebuilt = rebuild(store, NodeSource({"host": "app-1"}, period_ns=period), restarted, now_ns=restart)
            assert rebuilt.hours == 2 * 24 + 17  # up to 17:00 on day 2: the replay takes the last 48 periods
        summary = PeriodSummary("app-1", seq, end - period, end, by_destination=[
            Rollup(key=r.key, flows=r.flows, failures=r.failures, retransmits=r.retransmits, rtt_p95_us=r.rtt_p95_us)])
        _, nxt, _ = store.close_period(seq, end, [], [], summary.to_json(), next_start_ns=end, now_ns=end)
        assert nxt is not None
        seq = nxt
        for name, det in (("never", never), ("restarted", restarted), ("fresh", fresh)):
            if det is None or (name == "fresh" and end <= restart - 8 * HOUR):
                continue
            found = det.observe(end, summary.by_destination)
            if name != "fresh":  # as DiagnosisRunner does each period
                store.record_hour_baselines(h.to_row() for h in det.take_rolled())
            if end > restart:
                got[name].append([a.detail for a in found])
    assert restarted is not None
    assert got["restarted"] == got["never"]
    after = [end for end, _ in series if end > restart]
    flagged = {after[i]: d for i, d in enumerate(got["never"]) if d}
    spike = DAY0 + 3 * 24 * HOUR + 14 * HOUR
    # not the backup at 02:00; the 14:00 spike, from its first period, all its hour (4 h of window to learn it)
    assert list(flagged) == [spike + i * period for i in range(1, 7)]
    assert flagged[spike + period] == ["destination 10.0.2.3:5432: flows 1991 vs this hour's baseline 198.5 "
                                       "(MAD 6.5, 186.0 sigma, 1991 flows)"]
    # the hours are what tells the backup from news: without them the backup is flagged at 02:10
    assert got["fresh"][after.index(DAY0 + 3 * 24 * HOUR + 2 * HOUR + period)] != []
    store.close()


def test_the_node_keeps_each_closed_hour_in_its_store_and_counts_what_diagnosis_dropped(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    hour = 3600 * S

    async def main() -> tuple[list[tuple[int, str, str, str]], str, int]:
        clock = Clock()
        clock.now = (T0 // hour + 1) * hour - 3 * PERIOD * S  # three periods before a clock hour ends
        sensor = FakeSensor("/")
        node, _ = await _started(tmp_path, clock, sensor)
        try:
            for i in range(5):
                clock.now += PERIOD * S
                sensor.feed([flow(100 * i + j, start_ns=clock.now - S, end_ns=clock.now - S // 2)
                             for j in range(20 + 10 * i)])
                await node.tick()
                await node.close_period()
            scraped = generate_latest(node.metrics.registry).decode()
        finally:
            await node.shutdown()  # waits for the runner's store writes
        again = Node(_config(tmp_path), FakeSensor("/"), clock=clock)
        runner2 = DiagnosisRunner(again)
        try:
            return again.store.hour_baselines(), scraped, runner2.detector.seasonal_keys()
        finally:
            runner2.digest_log.close()
            again.store.close()

    rows, scraped, held = asyncio.run(asyncio.wait_for(main(), 60))
    start = (T0 // hour) * hour
    # the hour that ended: the median of its three periods' flows to 10.0.0.2:443 (20, 30, 40) and by curl
    assert [(h, scope, key) for h, scope, key, _ in rows] == [(start, "destination", "10.0.0.2:443"),
                                                              (start, "process", "curl/100")]
    assert json.loads(rows[0][3])["flows"] == 30.0 and json.loads(rows[0][3])["failure_rate"] == 0.0
    assert 'meshnode_anomaly_keys{baseline="hourly"} 2.0' in scraped
    assert 'meshnode_anomaly_keys{baseline="recent"} 2.0' in scraped
    assert 'meshnode_diagnosis_dropped_total{what="hours_unstored"} 0.0' in scraped
    assert held == 2  # the next start has it again
