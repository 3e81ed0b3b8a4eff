"""What a FleetQuery answers: flagged hosts left out and counted (trusted_aggregate), trimmed hosts counted."""

from __future__ import annotations

import pytest

from meshnode.mesh import HostReport, aggregate, trimmed_count, trimmed_mean, trusted_aggregate

T = 1_700_000_000 * 10**9


# seed 003 drops the lowest and highest at least: 4 hosts at 20 % still lose one at each end
@pytest.mark.parametrize(("n", "fraction", "trimmed"),
                         [(5, 0.2, 2), (4, 0.2, 2), (3, 0.2, 2), (2, 0.2, 0), (10, 0.25, 4), (2, 0.5, 0), (5, 0.0, 0)])
def test_trimmed_count_matches_the_mesh_trimmed_mean(n, fraction, trimmed):
    assert trimmed_count(n, fraction) == trimmed


def report(node: str, useful: int, rtt: int) -> HostReport:
    return HostReport(node, {"region": "eu", "site": "s1", "host": node}, "10.9.0.5:5432", 10, useful, {},
                      0, 0, 0, rtt, rtt * 2, T)


def test_trusted_aggregate_leaves_out_the_flagged_liar():
    reports = [report("a", 10, 1000), report("b", 9, 1100), report("liar", 0, 900_000)]
    plain = aggregate(reports, now_ns=T)[0]
    got = trusted_aggregate(reports, excluded={"liar", "absent"}, now_ns=T)
    [row] = got.rows
    assert got.excluded == ("liar",) and got.left_out == {("fleet", "10.9.0.5:5432"): 1}
    assert row.hosts == 2 and row.node_ids == ("a", "b") and row.useful == 19
    assert row.useful_fraction == pytest.approx(0.95) and row.rtt_p50_us == pytest.approx(1050)
    assert plain.hosts == 3 and plain.useful == 19


def test_trusted_aggregate_with_trimmed_mean_counts_trimmed_hosts():
    reports = [report(f"h{i}", 10, 1000 + i) for i in range(5)] + [report("x", 10, 10**6)]
    got = trusted_aggregate(reports, excluded=(), now_ns=T, center=trimmed_mean(0.2), group_by="site")
    [row] = got.rows
    assert got.excluded == () and got.left_out == {} and row.hosts == 6 and row.hosts_trimmed == 2
    assert row.rtt_p50_us == pytest.approx((1001 + 1002 + 1003 + 1004) / 4)
