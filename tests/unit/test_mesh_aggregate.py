"""Label aggregation: per-group health of a destination, robust to one lying host, with freshness."""

from __future__ import annotations

import pytest

from meshnode.mesh import (
    FLEET,
    aggregate,
    group_of,
    health_of,
    hierarchy,
    host_reports,
    matches,
    trimmed_mean,
)
from meshnode.v1 import flow_pb2, mesh_pb2

NOW = 1_700_000_000 * 10**9
S = 10**9
DB = "10.9.0.5:5432"
WEB = "10.9.0.6:443"


def _d(node, labels, period_end_ns, *rollups):
    return mesh_pb2.Digest(version=1, node_id=node, seq=1, period_end_ns=period_end_ns, labels=labels,
                           by_destination=list(rollups))


def _r(key, flows, useful, rtt50=0, rtt95=0, **failures):
    return flow_pb2.Rollup(key=key, flows=flows, useful=useful, failures=failures, rtt_p50_us=rtt50,
                           rtt_p95_us=rtt95, bytes_tx=flows * 100, retransmits=flows // 10,
                           service={DB: "postgresql", WEB: "https"}.get(key, ""))


EU_AMS = {"region": "eu", "site": "ams1"}
DIGESTS = [
    _d("h1", {**EU_AMS, "host": "h1"}, NOW - 10 * S, _r(DB, 100, 90, 800, 2000, timeout=10), _r(WEB, 5, 5)),
    _d("h2", {**EU_AMS, "host": "h2"}, NOW - 12 * S, _r(DB, 50, 50, 900, 2500)),
    # h3 lies (or is broken): everything fails, absurd RTT
    _d("h3", {**EU_AMS, "host": "h3"}, NOW - 11 * S, _r(DB, 10, 0, 900_000, 990_000, timeout=10)),
    _d("h4", {"region": "eu", "site": "fra1", "host": "h4"}, NOW - 60 * S,
       _r(DB, 20, 10, 1500, 3000, refused=10)),
    _d("h5", {"region": "us", "site": "nyc1", "host": "h5"}, NOW - 5 * S, _r(DB, 40, 40, 70_000, 90_000)),
    _d("h6", {"region": "us", "host": "h6"}, NOW - 5 * S, _r(WEB, 8, 4, refused=4)),
]
REPORTS = host_reports(DIGESTS)


@pytest.mark.parametrize(
    ("group_by", "selector", "max_age_s", "expected"),
    [
        # (group, hosts, attempts, useful, useful_fraction median, rtt_p50 median, newest age, oldest age)
        (None, {}, None, [(FLEET, 5, 220, 190, 0.9, 1500.0, 5.0, 60.0)]),
        ("region", {}, None, [("eu", 4, 180, 150, 0.7, 1200.0, 10.0, 60.0),
                              ("us", 1, 40, 40, 1.0, 70_000.0, 5.0, 5.0)]),
        ("site", {}, None, [("eu/ams1", 3, 160, 140, 0.9, 900.0, 10.0, 12.0),
                            ("eu/fra1", 1, 20, 10, 0.5, 1500.0, 60.0, 60.0),
                            ("us/nyc1", 1, 40, 40, 1.0, 70_000.0, 5.0, 5.0)]),
        ("site", {"region": "eu"}, 30.0, [("eu/ams1", 3, 160, 140, 0.9, 900.0, 10.0, 12.0)]),
        (None, {"site": "ams1"}, None, [(FLEET, 3, 160, 140, 0.9, 900.0, 10.0, 12.0)]),
        # an even count: the median averages the middle two
        (None, {}, 30.0, [(FLEET, 4, 200, 180, 0.95, 35_450.0, 5.0, 12.0)]),
        (None, {"region": "asia"}, None, []),
    ],
    ids=["fleet", "by-region", "by-site", "eu-sites-fresh", "site-selector", "fresh-only", "nobody"],
)
def test_health_of_one_destination_by_group(group_by, selector, max_age_s, expected):
    rows = aggregate(REPORTS, now_ns=NOW, group_by=group_by, destination=DB, selector=selector,
                     max_age_s=max_age_s)
    got = [(a.group, a.hosts, a.attempts, a.useful, a.useful_fraction, a.rtt_p50_us, a.newest_age_s,
            a.oldest_age_s) for a in rows]
    assert got == [pytest.approx(e) for e in expected]
    assert all(a.destination == DB for a in rows)


def test_one_lying_host_does_not_move_the_median_but_would_move_a_mean():
    (site,) = aggregate(REPORTS, now_ns=NOW, destination=DB, selector=EU_AMS)
    assert site.useful_fraction == pytest.approx(0.9)
    assert site.rtt_p50_us == pytest.approx(900.0)
    ams = [r for r in REPORTS if r.destination == DB and r.labels.get("site") == "ams1"]
    mean = sum(r.useful / r.attempts for r in ams) / len(ams)
    assert mean == pytest.approx(0.6333, abs=1e-3)


def test_sums_failures_bytes_and_retransmits_and_lists_hosts():
    (fleet,) = aggregate(REPORTS, now_ns=NOW, destination=DB)
    assert fleet.failures == {"refused": 10, "timeout": 20}
    assert fleet.bytes_tx == 22_000
    assert fleet.retransmits == 10 + 5 + 1 + 2 + 4
    assert fleet.node_ids == ("h1", "h2", "h3", "h4", "h5")
    assert fleet.level == FLEET


def test_all_destinations_are_rows_of_their_own():
    rows = aggregate(REPORTS, now_ns=NOW, group_by="region")
    assert [(a.group, a.destination, a.hosts) for a in rows] == [
        ("eu", DB, 4), ("eu", WEB, 1), ("us", DB, 1), ("us", WEB, 1)]
    web_us = rows[3]
    assert (web_us.useful_fraction, web_us.rtt_p50_us, web_us.failures) == (0.5, None, {"refused": 4})


def test_health_of_answers_for_a_scope():
    site = health_of(REPORTS, DB, now_ns=NOW, scope={"site": "ams1"})
    assert site is not None
    assert (site.level, site.hosts, site.useful_fraction) == ("site=ams1", 3, pytest.approx(0.9))
    fleet = health_of(REPORTS, DB, now_ns=NOW)
    assert fleet is not None and (fleet.level, fleet.hosts) == (FLEET, 5)
    assert health_of(REPORTS, "1.2.3.4:1", now_ns=NOW) is None


def test_hierarchy_drills_down_fleet_region_site_host():
    rows = hierarchy(REPORTS, WEB, now_ns=NOW)
    assert [(a.level, a.group, a.hosts) for a in rows] == [
        (FLEET, FLEET, 2),
        ("region", "eu", 1), ("region", "us", 1),
        ("site", "eu/ams1", 1), ("site", "us/-", 1),  # h6 carries no site label
        ("host", "eu/ams1/h1", 1), ("host", "us/-/h6", 1),
    ]


@pytest.mark.parametrize(
    ("labels", "level", "group"),
    [
        ({"region": "eu", "site": "ams1", "host": "h1"}, "site", "eu/ams1"),
        ({"region": "eu", "site": "ams1", "host": "h1"}, "region", "eu"),
        ({"region": "eu", "site": "ams1", "host": "h1"}, None, FLEET),
        ({"region": "eu", "site": "ams1", "host": "h1"}, "rack", "-"),
        ({"region": "eu", "rack": "r7"}, "rack", "r7"),
        ({}, "host", "-/-/-"),
    ],
)
def test_group_of(labels, level, group):
    assert group_of(labels, level) == group


@pytest.mark.parametrize(
    ("labels", "selector", "ok"),
    [({"a": "1", "b": "2"}, {}, True), ({"a": "1", "b": "2"}, {"a": "1"}, True),
     ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}, False), ({}, {"a": "1"}, False)],
)
def test_selector_ands_its_pairs(labels, selector, ok):
    assert matches(labels, selector) is ok


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([1, 2, 3, 4, 100], 0.2, 3.0), ([1, 2, 3, 4, 100], 0.0, 22.0), ([5], 0.4, 5.0), ([1, 9], 0.5, 5.0)],
)
def test_trimmed_mean(values, fraction, expected):
    assert trimmed_mean(fraction)(values) == pytest.approx(expected)


def test_center_is_pluggable():
    (fleet,) = aggregate(REPORTS, now_ns=NOW, destination=DB, center=trimmed_mean(0.2))
    # fractions 0.0 0.5 0.9 1.0 1.0: drop one at each end
    assert fleet.useful_fraction == pytest.approx((0.5 + 0.9 + 1.0) / 3)


@pytest.mark.parametrize(
    ("service", "rows"),
    [("https", [("eu", WEB, 1), ("us", WEB, 1)]), ("postgresql", [("eu", DB, 4), ("us", DB, 1)]), ("ssh", [])],
)
def test_service_filter(service, rows):
    got = aggregate(REPORTS, now_ns=NOW, group_by="region", service=service)
    assert [(a.group, a.destination, a.hosts) for a in got] == rows
