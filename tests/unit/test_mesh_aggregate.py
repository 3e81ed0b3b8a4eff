"""Label aggregation: per-group health of a destination, robust to one lying host, with freshness."""

from __future__ import annotations

import pytest

from meshnode.mesh import (
    FLEET,
    HOST_LIMITS,
    U64_MAX,
    HostLimits,
    HostReport,
    aggregate,
    clamp_rollup,
    group_of,
    health_of,
    hierarchy,
    host_reports,
    matches,
    saturating_sum,
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
    [([1, 2, 3, 4, 100], 0.2, 3.0), ([1, 2, 3, 4, 100], 0.0, 22.0), ([5], 0.4, 5.0), ([1, 9], 0.5, 5.0),
     # seed 003: the lowest and the highest go even where 20 % of the hosts is less than one
     ([1, 2, 10**9], 0.2, 2.0), ([-10**9, 2, 4, 10**9], 0.2, 3.0), ([1, 10**9], 0.2, (1 + 10**9) / 2)],
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


@pytest.mark.parametrize(
    ("start_ns", "end_ns", "period_s"),
    [(0, 10 * S, 10.0), (0, S // 10, 1.0), (10 * S, 0, 1.0), (0, 2**63, 86_400.0)],
    ids=["as-reported", "too-short", "inverted", "too-long"],
)
def test_the_limits_scale_with_the_period_within_bounds(start_ns, end_ns, period_s):
    assert HOST_LIMITS.period_s(start_ns, end_ns) == period_s


LIMITS = HostLimits(flows_per_s=100, open_flows=1000, bytes_per_s=10**6, packets_per_s=10**4, rtt_us=10**6)


@pytest.mark.parametrize(
    ("rollup", "changed"),
    [
        (dict(flows=2000, useful=1990, failures={"timeout": 10}, bytes_tx=10**7, bytes_rx=10**7, retransmits=10**5,
              rtt_p50_us=10**6, rtt_p95_us=10**6), {}),
        (dict(flows=2**63, useful=2**63), {"attempts": 2000, "useful": 2000}),
        (dict(flows=10, useful=11, failures={"refused": 12}), {"useful": 10, "failures": {"refused": 10}}),
        (dict(bytes_tx=U64_MAX, bytes_rx=10**7 + 1), {"bytes_tx": 10**7, "bytes_rx": 10**7}),
        (dict(retransmits=10**5 + 1), {"retransmits": 10**5}),
        (dict(rtt_p50_us=10**6 + 1, rtt_p95_us=2**32 - 1), {"rtt_p50_us": 10**6, "rtt_p95_us": 10**6}),
    ],
    ids=["at-the-limits", "2^63-flows", "more-useful-than-flows", "bytes", "retransmits", "rtt"],
)
def test_clamp_rollup_counts_a_value_above_one_host_at_the_limit(rollup, changed):
    r = flow_pb2.Rollup(key=DB, **rollup)
    got, clamped = clamp_rollup(r, 10.0, LIMITS)  # 10 s: 2,000 flows, 10 MB each way, 100,000 packets
    expected = {"attempts": r.flows, "useful": r.useful, "failures": dict(r.failures), "bytes_tx": r.bytes_tx,
                "bytes_rx": r.bytes_rx, "retransmits": r.retransmits, "rtt_p50_us": r.rtt_p50_us,
                "rtt_p95_us": r.rtt_p95_us, **changed}
    assert got == expected
    assert clamped is bool(changed)


def test_host_reports_clamp_mark_and_count_a_repeated_key_once():
    d = mesh_pb2.Digest(node_id="x", period_start_ns=NOW - 10 * S, period_end_ns=NOW, by_destination=[
        flow_pb2.Rollup(key=DB, flows=2**63), flow_pb2.Rollup(key=DB, flows=2**63), flow_pb2.Rollup(key=WEB, flows=3)])
    db, web = host_reports([d])
    assert (db.attempts, db.clamped, db.period_s) == (HOST_LIMITS.flows(10.0), True, 10.0)
    assert (web.attempts, web.clamped) == (3, False)


@pytest.mark.parametrize(("values", "total"),
                         [([], 0), ([1, 2], 3), ([2**63, 2**63], U64_MAX), ([U64_MAX, 1], U64_MAX)])
def test_saturating_sum(values, total):
    assert saturating_sum(values) == total


def test_sums_saturate_at_the_wire_limit_and_rates_stay_robust():
    def host(i: int, flows: int) -> HostReport:
        return HostReport(f"h{i}", {}, DB, flows, flows, {"timeout": flows}, flows, flows, flows, 1, 1, NOW,
                          period_s=10.0)

    # reports past the limits (as if HostLimits allowed them): the sums still fit their uint64 fields
    (row,) = aggregate([host(i, 2**63) for i in range(3)] + [host(9, 10)], now_ns=NOW)
    assert (row.attempts, row.useful, row.bytes_tx, row.bytes_rx, row.retransmits) == (U64_MAX,) * 5
    assert row.failures == {"timeout": U64_MAX}
    assert row.attempts_per_s == pytest.approx(2**63 / 10) and row.hosts_trimmed == 2


def test_robust_rates_and_failure_fractions_per_host():
    (row,) = aggregate(REPORTS, now_ns=NOW, destination=DB, selector=EU_AMS)
    # h1 100 flows, h2 50, h3 10 in (clamped) 86,400 s periods: the trimmed mean keeps the middle one
    assert row.attempts_per_s == pytest.approx(50 / 86_400) and row.hosts_trimmed == 2
    assert row.failure_fraction == {"timeout": pytest.approx(0.1)}  # 0.1, 0 and 1.0: the median
    assert row.hosts_clamped == 0
