"""Blame allocation on synthetic fleets: six hosts in two sites, five scenarios, and properties of the rule.

The fleet, its faults and its noise are in tests/_support/blamefleet.py (shared with the servicer and CLI
tests).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode._model import FlowRecord
from meshnode.diagnosis import (
    BlameConfig,
    Place,
    Transaction,
    blame,
    entities,
    transactions_from_flows,
    transactions_from_rollups,
)
from meshnode.v1 import flow_pb2
from tests._support.blamefleet import (
    DEAD,
    HOSTS,
    MEMBERS,
    blackholed_db,
    dead_address,
    fleet,
    healthy,
    lossy_uplink,
    refused_port,
    with_kind,
)

SCENARIOS = [
    # name, fleet kwargs, expected top (kind, name), entities that must not be suspects
    ("a: server host blackholed", dict(fault=blackholed_db), ("dst_host", "db-1"),
     {("host", h) for h in HOSTS} | {("site", "eu/s1"), ("site", "eu/s2"), ("path", "eu/s1<->eu/s2"),
                                     ("region", "eu"), ("dst_site", "eu/s2")}),
    ("b: site uplink 15% loss", dict(fault=lossy_uplink), ("path", "eu/s1<->eu/s2"),
     {("dst_host", h) for h in HOSTS} | {("service", "10.0.2.3:5432"), ("service", "10.0.2.2:6379"),
                                          ("site", "eu/s1"), ("site", "eu/s2"), ("region", "eu")}),
    ("c: one service port refused", dict(fault=refused_port), ("service", "10.0.2.3:5432"),
     {("dst_host", "db-1"), ("dst_site", "eu/s2")} | {("host", h) for h in HOSTS}),
    ("d: one process retries a dead address", dict(fault=dead_address, billing=True), ("process", "app-2/billing"),
     {("dst_host", DEAD[0]), ("service", f"{DEAD[0]}:{DEAD[1]}"), ("host", "app-2"), ("site", "eu/s1")}),
    ("d2: one process reset, its neighbours fine", dict(fault=healthy, reporter_reset=True),
     ("process", "app-3/reporter"),
     {("service", "10.0.2.3:5432"), ("dst_host", "db-1"), ("host", "app-3")}),
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("name", "kwargs", "top", "innocent"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenarios_blame_the_right_entity(name: str, kwargs: dict[str, Any], top: tuple[str, str],
                                          innocent: set[tuple[str, str]], seed: int) -> None:
    report = blame(fleet(seed=seed, **kwargs))
    assert report.suspects, report
    first = report.suspects[0]
    assert (first.kind, first.name) == top, [s.verdict for s in report.suspects]
    assert first.problem_fraction >= 0.2
    blamed = {(s.kind, s.name) for s in report.suspects}
    assert not blamed & innocent, [s.verdict for s in report.suspects]
    # the noise left after explaining the fault away is below the threshold: one suspect only
    assert len(report.suspects) == 1, [s.verdict for s in report.suspects]


@pytest.mark.parametrize("seed", range(5))
def test_healthy_fleet_with_noise_has_no_suspect(seed: int) -> None:
    report = blame(fleet(healthy, seed, noise=0.01))
    assert report.suspects == ()
    assert report.verdict == "no problem above 20%"
    assert 0 < report.problems < 0.03 * report.transactions
    assert report.hosts == 6


def test_blackholed_host_verdict_and_evidence() -> None:
    txns = fleet(blackholed_db, 1, noise=0.0)
    to_db = [t for t in txns if t.dst == "10.0.2.3"]
    report = blame(txns)
    top = report.suspects[0]
    assert top.shared
    assert top.stats.transactions == len(to_db)
    assert top.stats.problems == len(to_db)
    assert top.stats.hosts == ("app-1", "app-2", "app-3", "cache-1", "web-1")
    assert top.stats.sites == ("eu/s1", "eu/s2")
    assert top.stats.problem_kinds == {"timeout": len(to_db)}
    assert len(top.stats.examples) == 3
    assert all(ex[2] == "10.0.2.3" for ex in top.stats.examples)
    assert top.verdict == (f"destination host db-1 (10.0.2.3) is failing: 100% of {len(to_db):,} transactions "
                           "from 5 hosts in 2 sites (timeout)")
    assert report.verdict == top.verdict


def test_uplink_loss_verdict_says_slow_to_carry() -> None:
    top = blame(fleet(lossy_uplink, 2)).suspects[0]
    assert top.verdict.startswith("path eu/s1 <-> eu/s2 is slow to carry: ")
    assert "from 6 hosts in 2 sites (retransmits" in top.verdict
    assert top.problem_fraction > 0.6


def test_dead_address_is_not_a_shared_cause_and_names_the_destination() -> None:
    top = blame(fleet(dead_address, 3, billing=True)).suspects[0]
    assert not top.shared  # one client, one destination: the data cannot tell the two ends apart
    assert top.verdict.startswith("process billing on app-2 is failing: 100% of ")
    assert top.verdict.endswith("from 1 host in 1 site (timeout), all to 10.0.9.9:5432")


def test_three_sites_one_lossy_uplink_blames_that_uplink() -> None:
    """Site s1 talks to two other sites: one shared cause (its uplink) rather than two paths."""
    hosts = {f"h{s}{i}": (f"10.{s}.0.{i}", f"s{s}") for s in (1, 2, 3) for i in (1, 2, 3)}
    members = {a: Place(h, s, "eu") for h, (a, s) in hosts.items()}
    rng = random.Random(7)
    txns = []
    for src, (_saddr, ssite) in hosts.items():
        for dst, (daddr, dsite) in hosts.items():
            if src == dst:
                continue
            for _ in range(rng.randint(20, 40)):
                crosses = ssite != dsite and "s1" in (ssite, dsite)
                kind = "retransmits" if crosses and rng.random() < 0.8 else "ok"
                p = members[daddr]
                txns.append(Transaction(src, ssite, "eu", "svc", 1, daddr, 8080, "", p.host, p.site, p.region,
                                        kind != "ok", kind))
    report = blame(txns)
    assert [(s.kind, s.name) for s in report.suspects] == [("uplink", "eu/s1")]
    top = report.suspects[0]
    assert top.shared and 0.7 < top.problem_fraction < 0.9
    assert top.verdict.startswith("uplink of site eu/s1 is slow to carry: ")
    assert "from 9 hosts in 3 sites (retransmits)" in top.verdict
    table = {(e.kind, e.name): e for e in entities(txns)}
    assert ("uplink", "eu/s2") in table and ("uplink", "eu/s3") in table  # formed, but not shared causes


def test_target_keeps_only_suspects_that_explain_it() -> None:
    txns = fleet(blackholed_db, 4) + fleet(dead_address, 5, billing=True)
    both = blame(txns)
    assert {(s.kind, s.name) for s in both.suspects} >= {("dst_host", "db-1"), ("process", "app-2/billing")}
    only = blame(txns, target="10.0.9.9:5432")
    assert [(s.kind, s.name) for s in only.suspects] == [("process", "app-2/billing")]
    by_addr = blame(txns, target="10.0.2.3")
    assert [(s.kind, s.name) for s in by_addr.suspects] == [("dst_host", "db-1")]
    assert blame(txns, target="10.0.1.3:80").verdict == "no problem above 20%"
    v6 = [dataclasses.replace(t, dst="fd00::9") if t.dst == DEAD[0] else t for t in txns]
    for target in ("fd00::9", "[fd00::9]", "[fd00::9]:5432"):
        assert [s.name for s in blame(v6, target=target).suspects] == ["app-2/billing"], target


def test_threshold_is_configurable() -> None:
    txns = fleet(healthy, 1, noise=0.08)
    assert blame(txns).suspects == ()
    low = blame(txns, BlameConfig(threshold=0.02))
    assert low.suspects
    assert low.verdict.endswith(")")
    assert blame(txns, BlameConfig(threshold=0.5)).verdict == "no problem above 50%"


def test_entities_table_is_the_unexplained_drill_down() -> None:
    table = {(e.kind, e.name): e for e in entities(fleet(refused_port, 1, noise=0.0))}
    assert table[("service", "10.0.2.3:5432")].problem_fraction == 1.0
    assert table[("service", "10.0.2.3:5432")].display == "service db-1:5432 (postgresql, 10.0.2.3)"
    assert 0.3 < table[("dst_host", "db-1")].problem_fraction < 0.9
    assert table[("service", "10.0.2.3:9100")].problems == 0
    assert table[("process", "app-1/api")].display == "process api on app-1"


# ---------------------------------------------------------------------------------------------- adapters


def _flow(i: int, **kw: object) -> FlowRecord:
    base: dict[str, object] = dict(flow_id=i, src="10.0.1.1", sport=40000 + i, dst="10.0.2.3", dport=5432,
                                   proto="tcp", direction="outbound", pid=7, comm="api", outcome="established",
                                   packets_tx=20, service="postgresql")
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def test_transactions_from_flows_classifies_and_places() -> None:
    flows = [
        _flow(1),
        _flow(2, outcome="refused"),
        _flow(3, retransmits=2),
        _flow(4, retransmits=3, packets_tx=10_000),  # bulk flow probing for bandwidth: not a problem
        _flow(5, connect_us=1_200_000),
        _flow(6, dst="192.0.2.9", dport=443, outcome="timeout", service="https"),
        _flow(7, kind="interim"),
        _flow(8, direction="inbound", outcome="reset"),
        _flow(9, proto="udp", dst="224.0.0.251", dport=5353, outcome="udp_unanswered"),
        _flow(10, proto="udp", dst="10.0.2.3", dport=53, outcome="udp_unanswered"),
    ]
    txns = transactions_from_flows(flows, labels={"host": "app-1", "site": "s1", "region": "eu"},
                                   members=MEMBERS)
    assert [(t.kind, t.problem) for t in txns] == [
        ("ok", False), ("refused", True), ("retransmits", True), ("ok", False), ("slow_connect", True),
        ("timeout", True), ("udp_unanswered", True),
    ]
    first = txns[0]
    assert (first.host, first.site, first.region, first.comm, first.pid) == ("app-1", "s1", "eu", "api", 7)
    assert (first.dst_host, first.dst_site, first.dst_region) == ("db-1", "s2", "eu")
    assert first.flow == ("10.0.1.1", 40001, "10.0.2.3", 5432, "tcp")
    assert (txns[5].dst_host, txns[5].dst_site) == ("", "")
    kept = transactions_from_flows(flows[8:9], labels={}, exclude_discovery=False)
    assert [t.kind for t in kept] == ["udp_unanswered"]


def test_transactions_from_rollups_counts_by_kind() -> None:
    rollups = [
        flow_pb2.Rollup(key="10.0.2.3:5432", flows=100, useful=90, failures={"timeout": 6, "refused": 4},
                        service="postgresql"),
        flow_pb2.Rollup(key="[fd00::9]:443", flows=10, useful=10),
    ]
    txns = transactions_from_rollups(rollups, labels={"site": "s1", "region": "eu"}, members=MEMBERS,
                                     host="node-abc", problem_flows={"10.0.2.3:5432": {"retransmits": 15}})
    rows = [(t.dst, t.dport, t.kind, t.count, t.dst_host, t.host, t.comm) for t in txns]
    assert rows == [
        ("10.0.2.3", 5432, "retransmits", 15, "db-1", "node-abc", ""),
        ("10.0.2.3", 5432, "refused", 4, "db-1", "node-abc", ""),
        ("10.0.2.3", 5432, "timeout", 6, "db-1", "node-abc", ""),
        ("10.0.2.3", 5432, "ok", 75, "db-1", "node-abc", ""),
        ("fd00::9", 443, "ok", 10, "", "node-abc", ""),
    ]
    assert sum(t.count for t in txns) == 110
    assert txns[-1].destination == "[fd00::9]:443"


def test_rollups_of_every_node_find_a_blackholed_host() -> None:
    """The mesh path: per-destination rollups (no processes) of each node's digest."""
    txns = fleet(blackholed_db, 6)
    rollups: dict[str, dict[str, flow_pb2.Rollup]] = {}
    for t in txns:
        r = rollups.setdefault(t.host, {}).setdefault(t.destination, flow_pb2.Rollup(key=t.destination))
        r.flows += 1
        if t.kind == "ok":
            r.useful += 1
        elif t.kind in ("timeout", "refused", "reset"):
            r.failures[t.kind] += 1
        else:
            r.useful += 1  # degraded flows are useful flows in a rollup
    from_digests = []
    for host, by_dst in rollups.items():
        from_digests += transactions_from_rollups(by_dst.values(), labels={"host": host, "site": HOSTS[host][1],
                                                                             "region": "eu"}, members=MEMBERS)
    top = blame(from_digests).suspects[0]
    assert (top.kind, top.name) == ("dst_host", "db-1")


# ---------------------------------------------------------------------------------------------- properties


PLACES = [("h1", "s1"), ("h2", "s1"), ("h3", "s2"), ("h4", "s2")]
DSTS = [("10.0.0.1", 80, "h1", "s1"), ("10.0.0.3", 80, "h3", "s2"), ("10.0.0.3", 22, "h3", "s2"),
        ("10.9.9.9", 443, "", "")]

txn_st = st.builds(
    lambda p, comm, d, kind, count: Transaction(
        p[0], p[1], "eu", comm, 1, d[0], d[1], "", d[2], d[3], "eu" if d[3] else "", kind != "ok", kind, count),
    st.sampled_from(PLACES), st.sampled_from(["a", "b"]), st.sampled_from(DSTS),
    st.sampled_from(["ok", "ok", "ok", "timeout", "retransmits"]), st.integers(1, 30),
)
fleet_st = st.lists(txn_st, max_size=60)


@settings(max_examples=150, deadline=None)
@given(fleet_st, st.lists(txn_st.map(lambda t: with_kind(t, "ok")), min_size=1, max_size=20))
def test_adding_healthy_traffic_never_raises_a_problem_fraction(txns: list[Transaction],
                                                                healthy_extra: list[Transaction]) -> None:
    before = {(e.kind, e.name): e.problem_fraction for e in entities(txns)}
    after = {(e.kind, e.name): e.problem_fraction for e in entities(txns + healthy_extra)}
    for key, fraction in after.items():
        assert fraction <= before.get(key, 0.0) + 1e-12


@settings(max_examples=150, deadline=None)
@given(fleet_st)
def test_suspects_pass_the_threshold_and_are_distinct(txns: list[Transaction]) -> None:
    report = blame(txns)
    keys = [(s.kind, s.name) for s in report.suspects]
    assert len(keys) == len(set(keys))
    for s in report.suspects:
        assert s.problem_fraction >= 0.2
        assert s.stats.transactions >= 20 and s.stats.problems >= 5
    assert [s.rank for s in report.suspects] == list(range(1, len(keys) + 1))
    assert report.transactions == sum(t.count for t in txns)


@settings(max_examples=100, deadline=None)
@given(fleet_st, st.randoms(use_true_random=False))
def test_order_and_counting_do_not_matter(txns: list[Transaction], rnd: random.Random) -> None:
    import dataclasses

    expanded = [dataclasses.replace(t, count=1) for t in txns for _ in range(t.count)]
    rnd.shuffle(expanded)
    a, b = blame(txns), blame(expanded)
    assert [(s.kind, s.name, s.stats.problems, s.stats.transactions) for s in a.suspects] == [
        (s.kind, s.name, s.stats.problems, s.stats.transactions) for s in b.suspects]


@settings(max_examples=100, deadline=None)
@given(st.lists(txn_st.map(lambda t: with_kind(t, "ok")), max_size=60))
def test_a_healthy_fleet_never_has_a_suspect(txns: list[Transaction]) -> None:
    assert blame(txns).suspects == ()


def test_identical_entities_are_named_by_the_narrowest() -> None:
    """A server with one port in use is that service; a region with one site is that site (rule 3)."""
    txns = fleet(healthy, 8)
    rng = random.Random(8)
    for host in HOSTS:
        for _ in range(40):
            txns.append(Transaction(host, HOSTS[host][1], "eu", "api", 100, "10.0.3.1", 8080, "", "solo", "s3", "eu",
                                    True, "timeout"))
    # a third site in a region of its own whose every client transaction fails (its LAN is down)
    for i in range(3):
        for dst, (addr, _site) in HOSTS.items():
            for _ in range(rng.randint(20, 40)):
                p = MEMBERS[addr]
                txns.append(Transaction(f"far-{i}", "s9", "ap", "api", 1, addr, 80, "", dst, p.site, p.region,
                                        True, "reset"))
    tops = {(s.kind, s.name) for s in blame(txns).suspects}
    assert ("service", "10.0.3.1:8080") in tops and ("dst_host", "solo") not in tops
    assert ("site", "ap/s9") in tops and ("region", "ap") not in tops and ("region_path", "ap<->eu") not in tops


def test_members_may_be_plain_tuples() -> None:
    [t] = transactions_from_flows([_flow(1)], labels={"host": "app-1"}, members={"10.0.2.3": ("db-1", "s2", "eu")})
    assert (t.dst_host, t.dst_site, t.dst_region) == ("db-1", "s2", "eu")


def as_digests(txns: list[Transaction]) -> list[Transaction]:
    """The fleet as a peer's digests tell it: only processes with problems named, and without pid."""
    bad = {(t.host, t.comm) for t in txns if t.problem}
    return [dataclasses.replace(t, comm=t.comm if (t.host, t.comm) in bad else "", pid=0, flow=None)
            for t in txns]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("kwargs", "top"), [
    (dict(fault=blackholed_db), ("dst_host", "db-1")),
    (dict(fault=lossy_uplink), ("path", "eu/s1<->eu/s2")),
    (dict(fault=refused_port), ("service", "10.0.2.3:5432")),
    (dict(fault=dead_address, billing=True), ("process", "app-2/billing")),
], ids=["blackhole", "uplink", "refused", "dead-address"])
def test_processes_named_by_digests_blame_as_local_flows_do(kwargs: dict[str, Any], top: tuple[str, str],
                                                           seed: int) -> None:
    """Digests name only the processes with problems: their hosts' unnamed rest, healthy by construction,
    must not read as an unaffected part of a shared cause (it would make a dead server look like one bad
    service, a lossy path like one bad server)."""
    txns = fleet(seed=seed, **kwargs)
    # on every client host, a process that used db-1 a few times before the fault, all fine: a digest
    # does not name it, so it stays in its host's unnamed rest
    db = HOSTS["db-1"][0]
    txns += [Transaction(host=h, site=HOSTS[h][1], region="eu", comm="backup", pid=500, dst=db, dport=5432,
                         service="postgresql", dst_host="db-1", dst_site="s2", dst_region="eu", problem=False,
                         kind="ok", count=6) for h in HOSTS if h != "db-1"]
    report = blame(as_digests(txns))
    assert (report.suspects[0].kind, report.suspects[0].name) == top
