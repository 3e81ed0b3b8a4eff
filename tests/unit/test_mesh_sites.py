"""Site aggregates: election, aggregate build and verification, and the hierarchy on the simulator."""

from __future__ import annotations

import hashlib
import math

import pytest

from meshnode._exceptions import PeerError
from meshnode.mesh import MeshConfig, State
from meshnode.mesh._digest import DigestRejected, NodeKey, sign_digest
from meshnode.mesh._sim import SiteCluster
from meshnode.mesh._sites import (
    HOST,
    REGION,
    SITE,
    SiteConfig,
    SiteNode,
    Source,
    aggregate_rows,
    aggregate_selected,
    build_aggregate,
    check_sources,
    content,
    elect,
    election_rank,
    group_sums,
    only_service,
    sign_aggregate,
    sources_sha256,
    stripped,
    verify_aggregate,
)
from meshnode.v1 import flow_pb2, mesh_pb2

END = 1_700_000_010_000_000_000
CFG = SiteConfig()


def _rank(nid: str) -> bytes:
    return hashlib.sha256(nid.encode()).digest()


@pytest.mark.parametrize(
    ("alive", "k", "want"),
    [
        (["a", "b", "c", "d"], 2, sorted(["a", "b", "c", "d"], key=_rank)[:2]),
        (["d", "c", "b", "a"], 2, sorted(["a", "b", "c", "d"], key=_rank)[:2]),  # order does not matter
        (["a", "a", "b"], 3, sorted(["a", "b"], key=_rank)),  # fewer members than k: all of them, once
        ([], 2, []),
        (["x"], 1, ["x"]),
    ],
)
def test_elect_lowest_hashes(alive: list[str], k: int, want: list[str]) -> None:
    assert elect(alive, k) == want
    assert election_rank("a") == _rank("a")


def _src(signer: str, rollups: list[flow_pb2.Rollup], seq: int = 1) -> Source:
    return Source(mesh_pb2.AggregateRef(level=HOST, signer=signer, period_end_ns=END, seq=seq), rollups, 1, 10.0)


def _r(key: str, flows: int, useful: int, rtt: int = 0, **kw: int) -> flow_pb2.Rollup:
    return flow_pb2.Rollup(key=key, flows=flows, useful=useful, rtt_p50_us=rtt, rtt_p95_us=2 * rtt, **kw)


@pytest.mark.parametrize(
    ("sources", "want"),
    [
        # sums per destination, low median of RTT over hosts with one, busiest first
        ([_src("a", [_r("x:1", 10, 9, 100)]), _src("b", [_r("x:1", 5, 5, 300), _r("y:2", 1, 0)]),
          _src("c", [_r("x:1", 1, 1, 200)])],
         [("x:1", 16, 15, 200, 400), ("y:2", 1, 0, 0, 0)]),
        # a host's impossible count is clamped to what one host can do in 10 s
        ([_src("a", [_r("x:1", 2**62, 1)]), _src("b", [_r("x:1", 3, 3)])],
         [("x:1", 2**24 + 10_000_000 + 3, 4, 0, 0)]),
        # a key repeated inside one host counts once
        ([_src("a", [_r("x:1", 2, 2), _r("x:1", 7, 7)])], [("x:1", 2, 2, 0, 0)]),
    ],
)
def test_build_aggregate_sums(sources: list[Source], want: list[tuple[str, int, int, int, int]]) -> None:
    a = build_aggregate(SITE, "r0/s0", "agg", END, sources)
    got = [(r.key, r.flows, r.useful, r.rtt_p50_us, r.rtt_p95_us) for r in a.by_destination]
    assert got == want
    assert a.hosts == len(sources)
    assert a.sources_sha256 == sources_sha256(sorted((s.ref for s in sources), key=lambda r: r.signer))
    # deterministic whatever the order the sources come in
    b = build_aggregate(SITE, "r0/s0", "agg", END, list(reversed(sources)))
    assert b.SerializeToString(deterministic=True) == a.SerializeToString(deterministic=True)


def test_build_aggregate_bounded_and_counted() -> None:
    sources = [_src(f"h{i}", [_r(f"10.0.0.{j}:443", 100 - j, 1) for j in range(40)]) for i in range(3)]
    a = build_aggregate(SITE, "r0/s0", "agg", END, sources, max_bytes=400)
    assert stripped(a).ByteSize() <= 400
    assert len(a.by_destination) + a.rollups_truncated == 40
    assert a.rollups_truncated > 0
    assert [r.key for r in a.by_destination] == [f"10.0.0.{j}:443" for j in range(len(a.by_destination))]


def _signed(key: NodeKey, **kw: object) -> tuple[mesh_pb2.SignedDigest, mesh_pb2.GroupAggregate]:
    a = build_aggregate(SITE, "r0/s0", key.node_id, END, [_src("a", [_r("x:1", 3, 3)])])
    for k, v in kw.items():
        setattr(a, k, v)
    return sign_aggregate(key, a), a


def test_verify_aggregate_round_trip_and_refusals() -> None:
    key = NodeKey.from_seed(b"agg")
    signed, a = _signed(key)
    got = verify_aggregate(signed, CFG)
    assert got == stripped(a)
    assert content(got) == content(stripped(a))

    tampered = mesh_pb2.SignedDigest()
    tampered.CopyFrom(signed)
    tampered.payload = signed.payload.replace(b"x:1", b"y:1")
    with pytest.raises(DigestRejected) as exc:
        verify_aggregate(tampered, CFG)
    assert exc.value.reason == "bad_signature"

    # a digest's signature never passes for an aggregate's (domain tag), even over the same bytes
    d = sign_digest(key, mesh_pb2.Digest(node_id=key.node_id))
    as_agg = mesh_pb2.SignedDigest(payload=signed.payload, signature=key.sign(signed.payload),
                                   public_key=key.public_raw)
    with pytest.raises(DigestRejected) as exc:
        verify_aggregate(as_agg, CFG)
    assert exc.value.reason == "bad_signature"
    with pytest.raises(DigestRejected):
        verify_aggregate(d, CFG)

    other = NodeKey.from_seed(b"other")
    forged = sign_aggregate(other, stripped(a))  # signed by a key that is not the named aggregator
    with pytest.raises(DigestRejected) as exc:
        verify_aggregate(forged, CFG)
    assert exc.value.reason == "bad_identity"

    for kw, reason in (({"level": "planet"}, "bad_level"), ({"version": 2}, "bad_version"),
                       ({"period_end_ns": END * 2}, "from_future")):
        s, _ = _signed(key, **kw)
        with pytest.raises(DigestRejected) as exc:
            verify_aggregate(s, CFG, now_ns=END)
        assert exc.value.reason == reason
    dup = build_aggregate(SITE, "r0/s0", key.node_id, END, [_src("a", [_r("x:1", 3, 3)])])
    dup.by_destination.append(dup.by_destination[0])
    with pytest.raises(DigestRejected) as exc:
        verify_aggregate(sign_aggregate(key, dup), CFG)
    assert exc.value.reason == "duplicate_key"
    big = build_aggregate(SITE, "r0/s0", key.node_id, END, [_src("a", [_r("x:1", 3, 3)])])
    big.group = "g" * 2000
    with pytest.raises(DigestRejected) as exc:
        verify_aggregate(sign_aggregate(key, big), CFG)
    assert exc.value.reason == "oversize"


def test_check_sources() -> None:
    sources = [_src(f"h{i}", [_r("x:1", 1, 1)]) for i in range(3)]
    a = build_aggregate(SITE, "r0/s0", "agg", END, sources)
    refs = list(a.sources)
    check_sources(stripped(a), refs, CFG)
    for bad, reason in ((refs[:2], "sources_mismatch"), ([*refs, refs[0]], "duplicate_source"),
                        (refs * 400, "too_many_sources")):
        with pytest.raises(DigestRejected) as exc:
            check_sources(stripped(a), bad, CFG)
        assert exc.value.reason == reason


# ------------------------------------------------------------------------------------------- simulator

SITES = {"s0": "r0", "s1": "r0", "s2": "r1"}
PER_SITE = 12
N = PER_SITE * len(SITES)


def _labels(i: int) -> dict[str, str]:
    site = list(SITES)[i % len(SITES)]
    return {"region": SITES[site], "site": site, "host": f"h{i}"}


def _flows(node: SiteNode) -> int:
    """Each node's attempts to svc:443: a fixed function of its id, so that sums are known."""
    return int(node.node_id[:4], 16) % 97 + 1


def _cluster(loss: float = 0.0, seed: int = 7) -> tuple[SiteCluster, list[tuple[str, mesh_pb2.GroupAggregate]]]:
    c = SiteCluster(seed=seed, config=MeshConfig(), site_config=SiteConfig(period=10.0), jitter=0.001, loss=loss)
    c.bootstrap(N, _labels)

    def digest(node: SiteNode, end_ns: int) -> mesh_pb2.Digest:
        f = _flows(node)
        return mesh_pb2.Digest(period_start_ns=end_ns - 10**10, period_end_ns=end_ns, by_destination=[
            flow_pb2.Rollup(key="svc:443", flows=f, useful=f - 1, bytes_tx=1000 * f, rtt_p50_us=100 + f)])

    c.digest_of = digest
    decided: list[tuple[str, mesh_pb2.GroupAggregate]] = []
    for node in c.nodes.values():
        node.on_decide = lambda a, nid=node.node_id: decided.append((nid, a))
    c.start_periods()
    return c, decided


def _expected(c: SiteCluster, group: str, level: str = SITE) -> tuple[int, int]:
    members = [n for n in c.alive() if (n.site if level == SITE else n.region) == group]
    return len(members), sum(_flows(n) for n in members)


def test_membership_stays_in_the_site() -> None:
    c, _ = _cluster()
    c.run(5.0)
    for node in c.nodes.values():
        listed = {m.node_id for m in node.site_pool.members()}
        assert listed == {n.node_id for n in c.nodes.values() if n.site == node.site}
    aggs = [n for n in c.nodes.values() if n.pools[REGION].membership is not None]
    assert len(aggs) == 2 * len(SITES)
    for a in aggs:
        region = {m.node_id for m in a.pools[REGION].membership.members()}  # type: ignore[union-attr]
        assert region == {x.node_id for x in aggs if x.region == a.region}
        assert a.node_id in elect((m.node_id for m in a.site_pool.members()), 2)


def test_site_and_region_aggregates_reach_everyone_exactly() -> None:
    c, decided = _cluster()
    c.run(15.0)  # the period ending at 10 s is closed and disseminated by 15 s
    end = c.sched.wall_ns() // 10**10 * 10**10
    for node in c.nodes.values():
        mine = {(a.level, a.group): a for nid, a in decided if nid == node.node_id and a.period_end_ns == end}
        site = mine[(SITE, node.site)]
        hosts, flows = _expected(c, node.site)
        assert (site.hosts, site.by_destination[0].flows) == (hosts, flows)
        assert site.by_destination[0].useful == flows - hosts
        for region in ("r0", "r1"):
            r = mine[(REGION, region)]
            assert (r.hosts, r.by_destination[0].flows) == _expected(c, region, REGION)
        # a member holds its own site's aggregate and the regions'; its region's site aggregates are held by
        # the site aggregators (they build the region's)
        sites = {k[1] for k in mine if k[0] == SITE}
        if node.pools[REGION].membership is None:
            assert sites == {node.site}
        else:
            assert sites == {f"{r}/{s}" for s, r in SITES.items() if r == node.region}


def test_fleet_questions_answered_from_aggregates() -> None:
    """What a node's fleet query sums from: its site's aggregate and those its site aggregator decided."""
    c, _ = _cluster()
    c.run(15.0)
    agg = next(n for n in c.nodes.values() if n.is_site_aggregator())
    held = [verify_aggregate(sd, CFG) for sd in agg.newest_signed()]
    own = next(a for a in held if (a.level, a.group) == (SITE, agg.site))
    others = [a for a in held if a is not own and aggregate_selected(a, {}, agg.labels)]
    assert {(a.level, a.group) for a in others} == {(SITE, f"{r}/{s}") for s, r in SITES.items()
                                                    if r == agg.region and f"{r}/{s}" != agg.site} | {
        (REGION, r) for r in ("r0", "r1") if r != agg.region}
    end = own.period_end_ns
    fleet = aggregate_rows(group_sums("fleet", own, others, agg.node_id, agg.region), now_ns=end,
                           destination="svc:443")
    assert [(r.level, r.group, r.hosts, r.attempts) for r in fleet] == [
        ("fleet", "fleet", N, sum(_flows(n) for n in c.nodes.values()))]
    assert fleet[0].useful == fleet[0].attempts - N
    regions = aggregate_rows(group_sums(REGION, own, others, agg.node_id, agg.region), now_ns=end)
    assert [(r.group, r.hosts, r.attempts) for r in regions] == [
        (g, *_expected(c, g, REGION)) for g in ("r0", "r1")]
    sites = aggregate_rows(group_sums(SITE, own, others, agg.node_id, agg.region), now_ns=end)
    assert {(r.group, r.hosts, r.attempts) for r in sites if r.group.startswith(agg.region + "/")} == {
        (g, *_expected(c, g)) for g in {f"{r}/{s}" for s, r in SITES.items() if r == agg.region}}
    assert aggregate_rows(group_sums("fleet", own, others, agg.node_id, agg.region), now_ns=end,
                          destination="other:1") == []
    assert [r.destination for r in aggregate_rows(only_service([own], "nope"), now_ns=end)] == []


def test_liar_aggregator_is_caught_and_not_used() -> None:
    c, decided = _cluster()
    site_nodes = [n for n in c.nodes.values() if n.site == "r0/s0"]
    liar = c.nodes[elect((n.node_id for n in site_nodes), 2)[0]]
    honest_build = liar._own_candidate

    def inflate(a: mesh_pb2.GroupAggregate) -> None:
        if a.level == SITE:
            a.by_destination[0].flows *= 10  # the site looks ten times busier
        honest_build(a)

    liar._own_candidate = inflate  # type: ignore[method-assign]
    c.run(15.0)
    end = c.sched.wall_ns() // 10**10 * 10**10
    hosts, flows = _expected(c, "r0/s0")
    others = [n for n in site_nodes if n is not liar]
    for node in others:
        assert node.flagged.get(liar.node_id, "").endswith("does not equal the sum of its sources")
        got = node.decided[(SITE, "r0/s0", end)].agg
        assert got.aggregator != liar.node_id
        assert (got.hosts, got.by_destination[0].flows) == (hosts, flows)
    # the regions above were built from the honest aggregate
    for node in c.nodes.values():
        r = node.decided[(REGION, "r0", end)].agg
        assert (r.hosts, r.by_destination[0].flows) == _expected(c, "r0", REGION)
    assert not any(a.aggregator == liar.node_id and a.level == SITE and nid != liar.node_id
                   for nid, a in decided)


def test_liar_region_aggregator_is_caught_by_the_fleet_pool() -> None:
    c, _ = _cluster()
    c.run(5.0)
    region_pool = [n for n in c.nodes.values() if n.region == "r0" and n.pools[REGION].membership is not None]
    liar = c.nodes[elect((n.node_id for n in region_pool), 2)[0]]
    honest_build = liar._own_candidate

    def inflate(a: mesh_pb2.GroupAggregate) -> None:
        if a.level == REGION:
            a.by_destination[0].bytes_tx += 10**12
        honest_build(a)

    liar._own_candidate = inflate  # type: ignore[method-assign]
    c.run(10.0)
    end = c.sched.wall_ns() // 10**10 * 10**10
    want = sum(1000 * _flows(n) for n in c.nodes.values() if n.region == "r0")
    fleet_pool = [n for n in c.nodes.values() if n.pools["fleet"].membership is not None and n is not liar]
    assert all(liar.node_id in n.flagged for n in fleet_pool)
    for node in c.nodes.values():
        if node is liar:
            continue
        got = node.decided[(REGION, "r0", end)].agg
        assert (got.aggregator != liar.node_id, got.by_destination[0].bytes_tx) == (True, want)


def test_equivocating_aggregator_is_flagged() -> None:
    c, _ = _cluster()
    c.run(11.5)  # the first site aggregates are built and held
    end = c.sched.wall_ns() // 10**10 * 10**10
    node = next(n for n in c.nodes.values() if n.site == "r0/s1" and not n.is_site_aggregator())
    agg_id = node.site_aggregators()[0]
    held = node.candidates[(SITE, "r0/s1", end)][agg_id]
    second = mesh_pb2.GroupAggregate()
    second.CopyFrom(held.agg)
    second.hosts += 1
    node._hold(sign_aggregate(c.nodes[agg_id].key, second), second, "addr-x")
    assert node.flagged[agg_id] == "signed two aggregates of one group and period"


def test_dead_member_detected_in_its_site_only() -> None:
    c, _ = _cluster()
    c.run(3.0)
    victim = next(n for n in c.nodes.values() if n.site == "r1/s2" and not n.is_site_aggregator())
    c.crash(victim.node_id)
    start = c.sched.now()
    c.run(10.0, lambda: c.leaves_seen[victim.node_id] >= PER_SITE - 1)
    assert c.leaves_seen[victim.node_id] == PER_SITE - 1
    assert c.sched.now() - start <= 10.0
    for node in c.alive():
        st = node.site_pool.state_of(victim.node_id)
        assert st == (State.DEAD if node.site == "r1/s2" else None)


def test_dead_aggregator_is_replaced() -> None:
    c, _ = _cluster()
    c.run(3.0)
    old = elect((n.node_id for n in c.nodes.values() if n.site == "r0/s1"), 2)
    c.crash(old[0])
    c.run(30.0)
    end = c.sched.wall_ns() // 10**10 * 10**10
    members = [n for n in c.alive() if n.site == "r0/s1"]
    new = elect((n.node_id for n in members), 2)
    assert old[0] not in new and old[1] in new
    for node in members:
        got = node.decided[(SITE, "r0/s1", end)].agg
        assert (got.hosts, got.by_destination[0].flows) == _expected(c, "r0/s1")
    newcomer = c.nodes[next(x for x in new if x not in old)]
    assert newcomer.counters["region_pool_joined"] == 1
    assert newcomer.counters["site_aggregates_built"] >= 1
    for node in c.alive():
        r = node.decided[(REGION, "r0", end)].agg
        assert (r.hosts, r.by_destination[0].flows) == _expected(c, "r0", REGION)


def test_no_false_dead_under_loss() -> None:
    c, decided = _cluster(loss=0.05, seed=11)
    c.run(40.0)
    dead = sum(p.membership.counters["declared_dead"] for n in c.nodes.values()  # type: ignore[union-attr]
               for p in n.pools.values() if p.membership is not None)
    assert dead == 0
    # periods ending at 10, 20 and 30 s: every node decided its site's aggregate and both regions'
    got = {(nid, a.level, a.group, a.period_end_ns) for nid, a in decided}
    want = {(n.node_id, level, group, (1_700_000_000 + t) * 10**9) for n in c.nodes.values() for t in (10, 20, 30)
            for level, group in ((SITE, n.site), (REGION, "r0"), (REGION, "r1"))}
    assert want - got == set()


def test_pushes_and_pulls_are_bounded() -> None:
    c, _ = _cluster()
    c.run(2.0)
    node = next(iter(c.nodes.values()))
    stranger = NodeKey.from_seed(b"stranger")
    d = mesh_pb2.Digest(node_id=stranger.node_id, version=1, seq=1, period_end_ns=END)
    req = mesh_pb2.SiteRequest(push=sign_digest(stranger, d)).SerializeToString()
    node._on_request(node.pools[SITE], "addr-x", req)
    assert node.counters["digests_not_site_member"] == 1
    refs = [mesh_pb2.AggregateRef(level=HOST, signer="x", period_end_ns=END)] * (CFG.max_pull + 1)
    with pytest.raises(PeerError, match="max 64"):
        node._on_request(node.pools[SITE], "addr-x",
                         mesh_pb2.SiteRequest(pull=mesh_pb2.SiteItems(refs=refs)).SerializeToString())
    with pytest.raises(PeerError, match="malformed"):
        node._on_request(node.pools[SITE], "addr-x", b"\xff\xff")
    assert math.isfinite(c.sched.now())
