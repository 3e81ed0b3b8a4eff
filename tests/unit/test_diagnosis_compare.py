"""Comparative analysis: this host against peers with the same labels, for the same destination."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode._model import FlowRecord
from meshnode.diagnosis import PeerSample, compare, samples_from_flows
from meshnode.v1 import mesh_pb2

DB = "10.0.2.3:5432"


def site(n: int, name: str, *, rtt_p95: float = 1100.0, seed: int = 0, cls: str = "10g") -> list[PeerSample]:
    rng = random.Random(seed)
    return [
        PeerSample(host=f"{name}-h{i}", labels={"site": name, "region": "eu", "class": cls}, destination=DB,
                   attempts=200, failures=rng.randint(0, 2), rtt_p50_us=rng.uniform(400, 600),
                   rtt_p95_us=rng.uniform(0.9, 1.3) * rtt_p95, throughput_bps=rng.uniform(800e6, 950e6))
        for i in range(n)
    ]


def test_slow_host_is_in_the_worst_5_percent_of_its_site() -> None:
    peers = site(19, "s1")
    me = PeerSample("me", {"site": "s1", "region": "eu", "class": "10g"}, DB, attempts=200, failures=1,
                    rtt_p50_us=8000, rtt_p95_us=12_300, throughput_bps=900e6)
    [c] = compare([*peers, me, *site(20, "s2", rtt_p95=30_000)], host="me", labels=me.labels)
    by = {m.metric: m for m in c.metrics}
    p95 = by["rtt_p95"]
    assert p95.outlier and p95.peers == 20 and p95.worst_fraction == 0.05
    assert p95.summary == (f"this host is in the worst 5 % of site s1 for {DB} by p95 RTT "
                           f"(12.3 ms vs site median {p95.median / 1000:.1f} ms)")
    assert 990 < p95.median < 1430  # the site's own median: s2's 30 ms hosts are not peers
    assert by["rtt_p50"].outlier
    assert not by["failure_rate"].outlier and not by["throughput"].outlier
    assert c.outlier and c.verdict == p95.summary
    assert c.group == "site s1"


def test_typical_host_is_not_an_outlier() -> None:
    peers = site(9, "s1", seed=3)
    me = PeerSample("me", {"site": "s1"}, DB, attempts=200, failures=1, rtt_p50_us=500, rtt_p95_us=1100,
                    throughput_bps=900e6)
    [c] = compare([*peers, me], host="me", labels={"site": "s1"})
    assert not c.outlier
    assert c.verdict.startswith(f"this host is typical of site s1 for {DB} (p95 RTT 1.1 ms vs median ")


@pytest.mark.parametrize(("metric", "me_kw"), [
    ("failure_rate", dict(failures=60)),
    ("throughput", dict(throughput_bps=90e6)),
])
def test_failures_and_low_throughput_are_outliers(metric: str, me_kw: dict[str, float]) -> None:
    base = dict(attempts=200, failures=1, rtt_p50_us=500, rtt_p95_us=1100, throughput_bps=900e6)
    base.update(me_kw)
    me = PeerSample("me", {"site": "s1", "class": "10g"}, DB, **base)  # type: ignore[arg-type]
    [c] = compare([*site(9, "s1"), me], host="me", labels=me.labels)
    assert [m.metric for m in c.metrics if m.outlier] == [metric]
    assert "worst 10 %" in c.verdict


def test_bandwidth_class_separates_peer_groups() -> None:
    slow_class = site(5, "s1", cls="1g")
    slow_class = [PeerSample(s.host, s.labels, DB, s.attempts, s.failures, s.rtt_p50_us, s.rtt_p95_us, 90e6)
                  for s in slow_class]
    me = PeerSample("me", {"site": "s1", "class": "1g"}, DB, 200, 0, 500, 1100, 85e6)
    [by_site] = compare([*site(9, "s1"), *slow_class, me], host="me", labels=me.labels)
    assert any(m.metric == "throughput" and m.outlier for m in by_site.metrics)
    [by_class] = compare([*site(9, "s1"), *slow_class, me], host="me", labels=me.labels,
                         group_by=("site", "class"))
    assert by_class.group == "site s1, class 1g"
    assert not by_class.outlier


def test_too_few_peers_and_unknown_values_are_not_compared() -> None:
    me = PeerSample("me", {"site": "s1"}, DB, 200, 0, 500, 1100, 0)
    lone = PeerSample("p1", {"site": "s1"}, DB, 200, 0, 500, 1100, 0)
    assert compare([me, lone], host="me", labels={"site": "s1"}) == []
    two = [lone, PeerSample("p2", {"site": "s1"}, DB, 5, 0, 0, 0, 0)]
    [c] = compare([me, *two], host="me", labels={"site": "s1"}, min_peers=1)
    assert [m.metric for m in c.metrics] == ["rtt_p95", "rtt_p50", "failure_rate"]
    assert compare([me, *two], host="me", labels={"site": "s1"}, destination="other:1") == []
    assert compare(two, host="me", labels={"site": "s1"}) == []


def test_outliers_come_first_across_destinations() -> None:
    other = "10.0.2.2:6379"
    peers = site(9, "s1") + [PeerSample(f"s1-h{i}", {"site": "s1"}, other, 100, 0, 300, 600, 0) for i in range(9)]
    mine = [PeerSample("me", {"site": "s1"}, DB, 200, 0, 500, 9000, 0),
            PeerSample("me", {"site": "s1"}, other, 100, 0, 300, 600, 0)]
    out = compare(peers + mine, host="me", labels={"site": "s1"})
    assert [c.destination for c in out] == [DB, other]
    assert out[0].outlier and not out[1].outlier


def test_samples_from_flows() -> None:
    def f(i: int, **kw: object) -> FlowRecord:
        base: dict[str, object] = dict(flow_id=i, src="10.0.1.1", sport=i, dst="10.0.2.3", dport=5432,
                                       proto="tcp", direction="outbound", outcome="established",
                                       srtt_us=1000 * i, delivery_rate=1_000_000)
        base.update(kw)
        return FlowRecord(**base)  # type: ignore[arg-type]

    flows = [f(i) for i in range(1, 11)] + [f(11, outcome="timeout", srtt_us=0, delivery_rate=0),
                                              f(12, kind="interim"), f(13, direction="inbound")]
    [s] = samples_from_flows(flows, host="me", labels={"site": "s1"})
    assert (s.destination, s.attempts, s.failures) == (DB, 11, 1)
    assert s.rtt_p50_us == 5500 and s.rtt_p95_us == pytest.approx(9550)
    assert s.throughput_bps == 8e6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(100, 1e6), min_size=3, max_size=40), st.integers(0, 39))
def test_worst_fraction_is_the_share_at_least_as_bad(rtts: list[float], pick: int) -> None:
    me = pick % len(rtts)
    samples = [PeerSample(f"h{i}", {"site": "s1"}, DB, rtt_p95_us=v) for i, v in enumerate(rtts)]
    [c] = compare(samples, host=f"h{me}", labels={"site": "s1"})
    [m] = c.metrics
    assert m.peers == len(rtts)
    assert m.worst_fraction == sum(1 for v in rtts if v >= rtts[me]) / len(rtts)
    assert min(rtts) <= m.p05 <= m.median <= m.p95 <= max(rtts)
    if m.outlier:
        assert rtts[me] >= 2 * m.median and m.worst_fraction <= 0.5
    if rtts[me] == max(rtts) and rtts.count(max(rtts)) == 1:
        assert m.worst_fraction == 1 / len(rtts)


def test_throughput_compared_with_two_peers_digests() -> None:
    """Each peer's digest carries its destination rollup's throughput percentiles, made from its flows by the
    same summary code as this node's period; compare places this host among them on throughput."""
    from meshnode.diagnosis import NodeSource
    from meshnode.mesh import digest_from_period
    from meshnode.summary import PeriodBuilder
    from tests.unit._flows import T0, S, flow

    def period_flows(rate_bytes: int) -> tuple[list[FlowRecord], list[FlowRecord]]:
        finals = [flow(i, dst="10.0.2.3", dport=5432, delivery_rate=rate_bytes * (i % 3 + 1) // 2)
                  for i in range(1, 13)]
        interims = [flow(100, dst="10.0.2.3", dport=5432, kind="interim", delivery_rate=rate_bytes)]
        return finals, interims

    labels = {"host": "me", "site": "s1", "region": "eu"}
    src = NodeSource(labels)
    mine = period_flows(1_000_000)  # 8 Mbit/s median
    src.add_period(T0 + 20 * S, [*mine[0], *mine[1]])
    for seq, (host, rate) in enumerate((("peer-1", 12_500_000), ("peer-2", 11_000_000)), 1):
        finals, interims = period_flows(rate)
        period = PeriodBuilder(f"id-{host}").build(seq, T0, T0 + 20 * S, finals, interims)
        d = digest_from_period(period)
        d.node_id, d.seq, d.labels["host"], d.labels["site"] = f"id-{host}", seq, host, "s1"
        [r] = d.by_destination
        assert (r.throughput_p50_bps, r.throughput_p05_bps) == (8 * rate, 8 * rate // 2)
        src.add_digest(mesh_pb2.Digest.FromString(d.SerializeToString()))
    samples = src.samples(T0, T0 + 60 * S)
    assert sorted((s.host, s.throughput_bps) for s in samples) == [
        ("me", 8e6), ("peer-1", 100e6), ("peer-2", 88e6)]
    [c] = compare(samples, host="me", labels=labels)
    by = {m.metric: m for m in c.metrics}
    t = by["throughput"]
    assert (t.peers, t.median, t.outlier, t.worst_fraction) == (3, 88e6, True, 1 / 3)
    assert c.verdict == (f"this host is in the worst 34 % of site s1 for {DB} by throughput "
                         "(8.0 Mbit/s vs site median 88.0 Mbit/s)")
