"""Windows: the rollups of several export periods merged into one, with a series per period for trends.

The node keeps one ``PeriodSummary`` per period; a window (``meshctl top``'s last five minutes) is their
merge, computed here once so that every client shows the same numbers. A period's rollups count what
happened *in* the period (``_period``), so counters add across periods: a flow active across several
periods counts once in each, and its bytes once in total.

Percentiles do not add. The periods keep no RTT samples, only each key's p50 and p95, so the window takes
two rules that need nothing more:

- ``rtt_p50_us`` is the median of the periods' medians weighted by the periods' flows (periods without an
  RTT sample left out). It is an estimate: exact when every period holds one flow or all medians are
  equal, and always between the smallest and the largest period median.
- ``rtt_p95_us`` is the largest of the periods' p95s. It is an upper bound of the window's p95: at most 5 %
  of each period's samples lie above that period's p95, hence above the largest, hence at most 5 % of
  the window's. A bound errs on the side a dashboard wants: a slow period is never averaged away.
- ``throughput_p50_bps`` and ``throughput_p05_bps`` follow the same rules, mirrored: the weighted median of
  the periods' medians, and the smallest of their 5th percentiles (a lower bound: throughput is bad when low).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from meshnode.summary._period import PeriodSummary, Rollup
from meshnode.summary._timing import merge as merge_hist

if TYPE_CHECKING:
    from numpy.typing import NDArray

ROLLUP_FIELDS = ("by_process", "by_destination", "by_service", "by_cgroup")
"""The rollups of a period, and of a window, in this order."""


@dataclass(frozen=True, slots=True)
class PeriodSpan:
    """One export period of a window (``meshnode.v1.PeriodSpan``)."""

    seq: int
    start_ns: int
    end_ns: int
    incomplete: bool = False


@dataclass(slots=True)
class WindowRollup:
    """One key over a window (``meshnode.v1.WindowRollup``): totals and one entry per period, oldest first."""

    totals: Rollup
    flows: list[int]
    failures: list[int]
    retransmits: list[int]


@dataclass(slots=True)
class WindowRollups:
    """A window's rollups (``meshnode.v1.RollupsResponse``); ``omitted`` counts rows the limit left out."""

    periods: list[PeriodSpan]
    by_process: list[WindowRollup] = field(default_factory=list)
    by_destination: list[WindowRollup] = field(default_factory=list)
    by_service: list[WindowRollup] = field(default_factory=list)
    by_cgroup: list[WindowRollup] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
    """Rows left out per rollup name (``by_process`` ...), 0 when none."""


def weighted_median(pairs: Iterable[tuple[float, int]]) -> float:
    """The weighted median of ``(value, weight)`` pairs: the smallest value at which the cumulative weight
    reaches half the total (the lower one on an exact tie). 0 without positive weights."""
    return weighted_quantile(pairs, 0.5)


def weighted_quantile(pairs: Iterable[tuple[float, int]], q: float) -> float:
    """The ``q`` quantile (0..1) of ``(value, weight)`` pairs: the smallest value at which the cumulative
    weight reaches ``q`` of the total. 0 without positive weights."""
    items = list(pairs)
    return weighted_quantiles([v for v, _ in items], [w for _, w in items], (q,))[0]


def weighted_quantiles(values: Sequence[float] | NDArray[Any], weights: Sequence[float] | NDArray[Any],
                       qs: Sequence[float]) -> list[float]:
    """``weighted_quantile`` of ``values`` weighted by ``weights`` (whole counts: their sums are exact), for each
    of ``qs``, in one sort."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    if not len(v):
        return [0.0 for _ in qs]
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    at = np.searchsorted(cum, np.asarray(qs, dtype=np.float64) * cum[-1], side="left")
    return [float(v[min(int(i), len(v) - 1)]) for i in at]


def merge_rollups(per_period: Sequence[Sequence[Rollup]]) -> list[WindowRollup]:
    """One key's rows across ``per_period`` (one list of rollups per period, oldest first) merged into
    window rows, sorted by flows (most first), then key. Series have one entry per period."""
    n = len(per_period)
    rows: dict[str, WindowRollup] = {}
    rtts: dict[str, list[tuple[int, int, int]]] = {}  # key -> (p50, p95, flows) of the periods with RTTs
    rates: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # key -> (p50, p05, flows), as rtts
    for i, rollups in enumerate(per_period):
        for r in rollups:
            w = rows.get(r.key)
            if w is None:
                w = rows[r.key] = WindowRollup(Rollup(r.key), [0] * n, [0] * n, [0] * n)
                rtts[r.key] = []
            t = w.totals
            t.flows += r.flows
            t.useful += r.useful
            for outcome, count in r.failures.items():
                t.failures[outcome] = t.failures.get(outcome, 0) + count
            t.bytes_tx += r.bytes_tx
            t.bytes_rx += r.bytes_rx
            t.retransmits += r.retransmits
            t.flows_retransmitting += r.flows_retransmitting
            t.flows_slow_connect += r.flows_slow_connect
            t.flows_slow_path += r.flows_slow_path
            t.flows_slow_server += r.flows_slow_server
            t.responses += r.responses
            t.response_us_sum += r.response_us_sum
            t.response_us_max = max(t.response_us_max, r.response_us_max)
            t.response_hist = merge_hist(t.response_hist, r.response_hist)
            t.first_byte_hist = merge_hist(t.first_byte_hist, r.first_byte_hist)
            t.connect_hist = merge_hist(t.connect_hist, r.connect_hist)
            if not t.service:
                t.service = r.service
            if r.remote_name:  # the latest period's name
                t.remote_name = r.remote_name
            w.flows[i] += r.flows
            w.failures[i] += sum(r.failures.values())
            w.retransmits[i] += r.retransmits
            if r.rtt_p50_us or r.rtt_p95_us:
                rtts[r.key].append((r.rtt_p50_us, r.rtt_p95_us, r.flows))
            if r.throughput_p50_bps:
                rates[r.key].append((r.throughput_p50_bps, r.throughput_p05_bps, r.flows))
    for key, w in rows.items():
        samples = rtts[key]
        w.totals.rtt_p50_us = round(weighted_median((p50, max(1, f)) for p50, _, f in samples))
        w.totals.rtt_p95_us = max((p95 for _, p95, _ in samples), default=0)
        w.totals.throughput_p50_bps = round(weighted_median((p50, max(1, f)) for p50, _, f in rates[key]))
        w.totals.throughput_p05_bps = min((p05 for _, p05, _ in rates[key]), default=0)
    return sorted(rows.values(), key=lambda w: (-w.totals.flows, w.totals.key))


def merge_window(summaries: Iterable[PeriodSummary], limit: int) -> WindowRollups:
    """The window of ``summaries`` (any order; taken oldest first by ``seq``): every rollup merged, then
    cut to its busiest ``limit`` rows, with the rows left out counted. An incomplete period has no
    rollups and holds 0 in every series."""
    ordered = sorted(summaries, key=lambda s: s.seq)
    out = WindowRollups(periods=[PeriodSpan(s.seq, s.period_start_ns, s.period_end_ns, s.incomplete)
                                 for s in ordered])
    for name in ROLLUP_FIELDS:
        rows = merge_rollups([getattr(s, name) for s in ordered])
        setattr(out, name, rows[:limit])
        out.omitted[name] = max(0, len(rows) - limit)
    return out
