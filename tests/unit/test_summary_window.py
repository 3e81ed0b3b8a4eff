"""Windows: period rollups merged into window rollups with series, table-driven."""

from __future__ import annotations

import pytest

from meshnode.summary import (
    PeriodSpan,
    PeriodSummary,
    Rollup,
    merge_rollups,
    merge_window,
    weighted_median,
)
from tests.unit._flows import T0, S


def _period(seq: int, *, incomplete: bool = False, **rollups: list[Rollup]) -> PeriodSummary:
    return PeriodSummary(node_id="n", seq=seq, period_start_ns=T0 + seq * 2 * S,
                         period_end_ns=T0 + (seq + 1) * 2 * S, incomplete=incomplete, **rollups)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], 0.0),
        ([(5.0, 0)], 0.0),                                    # no weight: no median
        ([(7.0, 3)], 7.0),
        ([(1.0, 1), (2.0, 1), (3.0, 1)], 2.0),                # equal weights: the plain median
        ([(1.0, 1), (2.0, 1)], 1.0),                          # an exact tie takes the lower
        ([(10.0, 1), (1.0, 9)], 1.0),                         # the busy period's median wins
        ([(10.0, 9), (1.0, 1)], 10.0),
        ([(3.0, 2), (1.0, 1), (2.0, 2)], 2.0),                # order does not matter
    ],
)
def test_weighted_median(pairs, expected) -> None:
    assert weighted_median(pairs) == expected


def test_counters_and_failures_add_across_periods() -> None:
    a = Rollup("curl/1", flows=3, useful=2, failures={"refused": 1}, bytes_tx=100, bytes_rx=1000,
               retransmits=2, flows_retransmitting=1, flows_slow_connect=0, service="")
    b = Rollup("curl/1", flows=4, useful=1, failures={"refused": 2, "timeout": 1}, bytes_tx=50, bytes_rx=5,
               retransmits=7, flows_retransmitting=0, flows_slow_connect=1, service="https")
    [w] = merge_rollups([[a], [], [b]])
    t = w.totals
    assert (t.key, t.flows, t.useful, t.failures) == ("curl/1", 7, 3, {"refused": 3, "timeout": 1})
    assert (t.bytes_tx, t.bytes_rx, t.retransmits) == (150, 1005, 9)
    assert (t.flows_retransmitting, t.flows_slow_connect, t.service) == (1, 1, "https")
    assert (w.flows, w.failures, w.retransmits) == ([3, 0, 4], [1, 0, 3], [2, 0, 7])


@pytest.mark.parametrize(
    ("periods", "p50", "p95"),
    [
        ([(1000, 2000, 1)], 1000, 2000),
        ([(1000, 2000, 9), (50_000, 90_000, 1)], 1000, 90_000),   # a slow quiet period: p95 keeps it
        ([(1000, 2000, 1), (50_000, 90_000, 9)], 50_000, 90_000),
        ([(0, 0, 5), (3000, 4000, 1)], 3000, 4000),              # a period without RTT samples is left out
        ([(0, 0, 5)], 0, 0),
    ],
)
def test_rtt_weighted_median_of_medians_and_max_of_p95s(periods, p50, p95) -> None:
    per_period = [[Rollup("k", flows=f, rtt_p50_us=a, rtt_p95_us=b)] for a, b, f in periods]
    [w] = merge_rollups(per_period)
    assert (w.totals.rtt_p50_us, w.totals.rtt_p95_us) == (p50, p95)


def test_rows_sorted_busiest_first_then_key() -> None:
    rows = merge_rollups([[Rollup("b", flows=2), Rollup("c", flows=1)], [Rollup("a", flows=2), Rollup("c", flows=5)]])
    assert [(w.totals.key, w.totals.flows) for w in rows] == [("c", 6), ("a", 2), ("b", 2)]


def test_window_limit_applies_after_the_merge_and_counts_what_it_left_out() -> None:
    # Alone, no period makes "x" the busiest; merged it is, so it must survive a limit of 1.
    p1 = _period(1, by_process=[Rollup("y", flows=3), Rollup("x", flows=2)])
    p2 = _period(2, by_process=[Rollup("z", flows=3), Rollup("x", flows=2)])
    w = merge_window([p2, p1], limit=1)
    assert [r.totals.key for r in w.by_process] == ["x"]
    assert w.by_process[0].flows == [2, 2]
    assert w.omitted == {"by_process": 2, "by_destination": 0, "by_service": 0, "by_cgroup": 0}


def test_window_periods_oldest_first_and_incomplete_periods_hold_zero() -> None:
    p1 = _period(1, by_service=[Rollup("10.0.0.1:8000", flows=4, service="irdmi")])
    gap = _period(2, incomplete=True)
    p3 = _period(3, by_service=[Rollup("10.0.0.1:8000", flows=1)])
    w = merge_window([p3, gap, p1], limit=10)
    assert w.periods == [PeriodSpan(1, T0 + 2 * S, T0 + 4 * S), PeriodSpan(2, T0 + 4 * S, T0 + 6 * S, True),
                         PeriodSpan(3, T0 + 6 * S, T0 + 8 * S)]
    [svc] = w.by_service
    assert (svc.totals.flows, svc.totals.service, svc.flows) == (5, "irdmi", [4, 0, 1])
    assert merge_window([], limit=10).periods == []


def test_window_of_stored_periods() -> None:
    """As the node merges them: summaries read back from their stored JSON."""
    p1 = _period(1, by_destination=[Rollup("10.0.0.2:443", flows=2, bytes_tx=400, rtt_p50_us=900,
                                           rtt_p95_us=1500, service="https")])
    p2 = _period(2, by_destination=[Rollup("10.0.0.2:443", flows=1, bytes_tx=700, failures={"reset": 1})])
    w = merge_window([PeriodSummary.from_json(p.to_json()) for p in (p1, p2)], limit=10)
    [dest] = w.by_destination
    t = dest.totals
    assert (t.key, t.flows, t.bytes_tx, t.rtt_p50_us, t.rtt_p95_us, t.service) == (
        "10.0.0.2:443", 3, 1100, 900, 1500, "https")
    assert (dest.flows, dest.failures) == ([2, 1], [0, 1])
