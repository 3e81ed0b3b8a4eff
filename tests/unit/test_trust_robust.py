"""Robust aggregation: flagged hosts left out and counted, trimmed hosts counted, majority votes."""

from __future__ import annotations

import pytest

from meshnode.mesh import HostReport, aggregate
from meshnode.trust import majority_vote, robust_center, trimmed_count, trusted_aggregate

T = 1_700_000_000 * 10**9


@pytest.mark.parametrize(("values", "excluded", "method", "expected"), [
    ({"a": 1.0, "b": 2.0, "c": 100.0}, set(), "median", (2.0, 3, 0, 0)),
    ({"a": 1.0, "b": 2.0, "c": 100.0}, {"c"}, "median", (1.5, 2, 1, 0)),
    ({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 1000.0}, set(), "trimmed_mean", (3.0, 3, 0, 2)),
    ({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 1000.0}, {"e"}, "trimmed_mean", (2.5, 2, 1, 2)),
    ({"a": 5.0}, {"a"}, "median", (None, 0, 1, 0)),
    ({}, set(), "median", (None, 0, 0, 0)),
])
def test_robust_center(values, excluded, method, expected):
    r = robust_center(values, excluded=excluded, method=method, trim=0.2)
    assert (r.value, r.used, r.excluded, r.trimmed) == expected


# seed 003 drops the lowest and highest at least: 4 hosts at 20 % still lose one at each end
@pytest.mark.parametrize(("n", "fraction", "trimmed"),
                         [(5, 0.2, 2), (4, 0.2, 2), (3, 0.2, 2), (2, 0.2, 0), (10, 0.25, 4), (2, 0.5, 0), (5, 0.0, 0)])
def test_trimmed_count_matches_the_mesh_trimmed_mean(n, fraction, trimmed):
    assert trimmed_count(n, fraction) == trimmed


@pytest.mark.parametrize(("votes", "excluded", "min_voters", "expected"), [
    ({"a": True, "b": True, "c": False}, set(), 1, (True, 2, 1, 0)),
    ({"a": True, "b": False}, set(), 1, (None, 1, 1, 0)),  # a tie decides nothing
    ({"a": True, "b": True, "c": False, "d": False, "e": False}, {"c", "d"}, 1, (True, 2, 1, 2)),
    ({"a": True}, set(), 3, (None, 1, 0, 0)),
    ({"a": True}, {"a"}, 1, (None, 0, 0, 1)),
])
def test_majority_vote(votes, excluded, min_voters, expected):
    v = majority_vote(votes, excluded=excluded, min_voters=min_voters)
    assert (v.outcome, v.yes, v.no, v.excluded) == expected


def report(node: str, useful: int, rtt: int) -> HostReport:
    return HostReport(node, {"region": "eu", "site": "s1", "host": node}, "10.9.0.5:5432", 10, useful, {},
                      0, 0, 0, rtt, rtt * 2, T)


def test_trusted_aggregate_leaves_out_the_flagged_liar():
    reports = [report("a", 10, 1000), report("b", 9, 1100), report("liar", 0, 900_000)]
    plain = aggregate(reports, now_ns=T)[0]
    got = trusted_aggregate(reports, excluded={"liar", "absent"}, now_ns=T)
    [row] = got.rows
    assert got.excluded == ("liar",)
    assert row.hosts == 2 and row.node_ids == ("a", "b") and row.useful == 19
    assert row.useful_fraction == pytest.approx(0.95) and row.rtt_p50_us == pytest.approx(1050)
    assert plain.hosts == 3 and plain.useful == 19


def test_trusted_aggregate_with_trimmed_mean_counts_trimmed_hosts():
    reports = [report(f"h{i}", 10, 1000 + i) for i in range(5)] + [report("x", 10, 10**6)]
    got = trusted_aggregate(reports, excluded=(), now_ns=T, trim=0.2, group_by="site")
    [row] = got.rows
    assert got.trimmed == [2] and row.hosts == 6
    assert row.rtt_p50_us == pytest.approx((1001 + 1002 + 1003 + 1004) / 4)
