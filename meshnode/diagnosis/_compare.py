"""Comparative analysis (seed 000, §II-D.2): this host against its peers, for the same destination.

A host that is slower than it should be cannot tell from its own numbers alone: 12 ms to the database may
be fine or terrible. Its peers know: hosts with the same labels (the same site, and optionally the same
bandwidth class, since a 1 Gbit/s host should not be judged against 25 Gbit/s ones; seed 000 normalises by
bandwidth class for the same reason) talking to the same destination. ``compare`` places this host among
them for each metric (p50 and p95 RTT, failure rate, throughput): the group's median and spread, and the
share of the group that is as bad or worse, i.e. "this host is in the worst 5 % of site s1".

A host is an *outlier* on a metric when it is in the worse half of its group, at least ``OUTLIER_RATIO``
times worse than the group median, and by at least the metric's minimum absolute difference, so that
0.2 ms against 0.1 ms is not news. Groups of fewer than ``MIN_PEERS`` other hosts are not compared at all.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

from meshnode._batch import FAILED, USEFUL, FlowBatch, as_batch, factorize
from meshnode._model import ENUM_NUMBERS
from meshnode.summary import format_destination

if TYPE_CHECKING:
    from meshnode._model import FlowRecord

MIN_PEERS: Final = 2
"""Fewer peers than this (other hosts in the group with a value) and a metric is not compared."""

MIN_ATTEMPTS: Final = 10
"""A host's failure rate counts only over at least this many attempts."""

OUTLIER_RATIO: Final = 2.0
"""An outlier is at least this many times worse than the group median (throughput: this many times lower)."""

DEFAULT_GROUP_BY: Final = ("site",)
"""Peers share these labels with this host by default."""


@dataclass(frozen=True, slots=True)
class Metric:
    """How one metric is read from a sample and judged.

    Attributes:
        name: the metric's key (``rtt_p95``).
        words: how a human says it (``p95 RTT``).
        higher_is_worse: False for throughput.
        min_abs: the smallest difference from the median that can make an outlier, in the metric's unit.
        unit: ``us``, ``fraction`` or ``bps``.
    """

    name: str
    words: str
    higher_is_worse: bool
    min_abs: float
    unit: str


METRICS: Final = (
    Metric("rtt_p95", "p95 RTT", True, 1_000.0, "us"),
    Metric("rtt_p50", "median RTT", True, 500.0, "us"),
    Metric("failure_rate", "failure rate", True, 0.05, "fraction"),
    Metric("throughput", "throughput", False, 1e6, "bps"),
)
"""The metrics compared, in the order reports list them."""


@dataclass(frozen=True, slots=True)
class PeerSample:
    """One host's figures for one destination over the compared range.

    Attributes:
        host: the host name (or node id).
        labels: its labels (``site``, ``region``, a bandwidth class...).
        destination: ``dst:dport`` (or a service name, when hosts reach it at different addresses).
        attempts: flows attempted.
        failures: failed flows.
        rtt_p50_us: median smoothed RTT, 0 when unknown.
        rtt_p95_us: 95th percentile smoothed RTT, 0 when unknown.
        throughput_bps: median delivery rate of its flows in bits per second, 0 when unknown.
    """

    host: str
    labels: Mapping[str, str]
    destination: str
    attempts: int = 0
    failures: int = 0
    rtt_p50_us: float = 0.0
    rtt_p95_us: float = 0.0
    throughput_bps: float = 0.0

    def value(self, metric: str) -> float | None:
        """This sample's value of ``metric``, None when it has none."""
        if metric == "rtt_p95":
            return self.rtt_p95_us or None
        if metric == "rtt_p50":
            return self.rtt_p50_us or None
        if metric == "failure_rate":
            return self.failures / self.attempts if self.attempts >= MIN_ATTEMPTS else None
        if metric == "throughput":
            return self.throughput_bps or None
        raise ValueError(f"unknown metric {metric!r}")


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """This host against its group on one metric.

    Attributes:
        metric: the metric's key.
        value: this host's value.
        median: the group median (this host included).
        p05: the group's 5th percentile.
        p95: the group's 95th percentile.
        peers: hosts in the group with a value, this host included.
        worst_fraction: the share of the group as bad as this host or worse (1/n: the worst host).
        outlier: see the module docstring.
        summary: one line for a human.
    """

    metric: str
    value: float
    median: float
    p05: float
    p95: float
    peers: int
    worst_fraction: float
    outlier: bool
    summary: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """This host against its peers for one destination.

    Attributes:
        host: this host.
        destination: the destination.
        group: the peer group (``site s1``, ``site s1, class 10g``).
        metrics: one comparison per metric that had enough peers.
        verdict: the worst outlier's summary, or "typical" with the first metric.
    """

    host: str
    destination: str
    group: str
    metrics: tuple[MetricComparison, ...] = field(default_factory=tuple)
    verdict: str = ""

    @property
    def outlier(self) -> bool:
        """True when any metric is an outlier."""
        return any(m.outlier for m in self.metrics)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def format_value(value: float, unit: str) -> str:
    """``12.3 ms``, ``4.0 %``, ``85.3 Mbit/s``."""
    if unit == "us":
        return f"{value / 1000:.1f} ms" if value >= 100 else f"{value / 1000:.2f} ms"
    if unit == "fraction":
        return f"{100 * value:.1f} %"
    if unit == "bps":
        for div, name in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
            if value >= div:
                return f"{value / div:.1f} {name}"
        return f"{value:.0f} bit/s"
    return f"{value:g}"


def group_name(labels: Mapping[str, str], group_by: Sequence[str]) -> str:
    """``site s1`` or ``site s1, class 10g``."""
    return ", ".join(f"{k} {labels.get(k) or '-'}" for k in group_by) or "fleet"


def _compare_metric(metric: Metric, mine: float, values: list[float], group: str, dest: str) -> MetricComparison:
    n = len(values)
    med = float(statistics.median(values))
    if metric.higher_is_worse:
        worse = sum(1 for v in values if v >= mine)
        as_good = sum(1 for v in values if v <= mine)
        ratio_ok = mine >= OUTLIER_RATIO * med
    else:
        worse = sum(1 for v in values if v <= mine)
        as_good = sum(1 for v in values if v >= mine)
        ratio_ok = mine * OUTLIER_RATIO <= med
    worst_fraction = worse / n
    outlier = ratio_ok and abs(mine - med) >= metric.min_abs and worst_fraction <= 0.5
    place = group.split(",")[0]
    vs = f"{format_value(mine, metric.unit)} vs {place.split(' ')[0]} median {format_value(med, metric.unit)}"
    if worst_fraction <= 0.5:
        pct = max(1, math.ceil(100 * worst_fraction))
        summary = f"this host is in the worst {pct} % of {group} for {dest} by {metric.words} ({vs})"
    else:
        pct = max(1, math.ceil(100 * as_good / n))
        summary = f"this host is in the best {pct} % of {group} for {dest} by {metric.words} ({vs})"
    return MetricComparison(metric.name, mine, med, percentile(values, 0.05), percentile(values, 0.95), n,
                            worst_fraction, outlier, summary)


def compare(
    samples: Iterable[PeerSample],
    *,
    host: str,
    labels: Mapping[str, str],
    destination: str | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    min_peers: int = MIN_PEERS,
) -> list[Comparison]:
    """This host against its peers, per destination it has samples for; outliers first.

    Args:
        samples: one sample per (host, destination), this host's among them.
        host: this host's name, as in the samples.
        labels: this host's labels.
        destination: only this destination; None for every destination this host has a sample for.
        group_by: the labels a peer must share with this host.
        min_peers: the fewest other hosts with a value for a metric to be compared.
    """
    by_dest: dict[str, list[PeerSample]] = defaultdict(list)
    for s in samples:
        if destination is not None and s.destination != destination:
            continue
        if all(s.labels.get(k) == labels.get(k) for k in group_by):
            by_dest[s.destination].append(s)
    group = group_name(labels, group_by)
    out: list[Comparison] = []
    for dest in sorted(by_dest):
        mine = [s for s in by_dest[dest] if s.host == host]
        if not mine:
            continue
        me = mine[0]
        metrics: list[MetricComparison] = []
        for metric in METRICS:
            value = me.value(metric.name)
            if value is None:
                continue
            values = [v for s in by_dest[dest] if (v := s.value(metric.name)) is not None]
            if len(values) - 1 < min_peers:
                continue
            metrics.append(_compare_metric(metric, value, values, group, dest))
        if not metrics:
            continue
        outliers = sorted((m for m in metrics if m.outlier), key=lambda m: m.worst_fraction)  # stable: METRICS order
        if outliers:
            verdict = outliers[0].summary
        else:
            first = metrics[0]
            unit = next(m.unit for m in METRICS if m.name == first.metric)
            words = next(m.words for m in METRICS if m.name == first.metric)
            verdict = (f"this host is typical of {group} for {dest} ({words} {format_value(first.value, unit)} "
                       f"vs median {format_value(first.median, unit)})")
        out.append(Comparison(host, dest, group, tuple(metrics), verdict))
    return sorted(out, key=lambda c: (not c.outlier, min(m.worst_fraction for m in c.metrics), c.destination))


def samples_from_flows(flows: Iterable[FlowRecord] | FlowBatch, *, host: str,
                       labels: Mapping[str, str]) -> list[PeerSample]:
    """This host's samples per destination from its own outbound flows of one period, on columns.

    Attempts, failures and RTT come from the final records. Throughput is the median TCP delivery rate
    (``delivery_rate``, bytes per second, in bits per second) of the finals and interims that have one, as
    the period's destination rollup computes ``throughput_p50_bps`` for the digest (``meshnode.summary``):
    a peer's figure, read from its digest, is the same measure, so the two compare like with like.
    """
    b = as_batch(flows)
    b = b.take(b["direction"] == ENUM_NUMBERS["direction"]["outbound"])
    live = b.take((b["kind"] == ENUM_NUMBERS["kind"]["interim"]) & (b["delivery_rate"] > 0))
    b = b.take(b["kind"] == ENUM_NUMBERS["kind"]["final"])
    live_rates: dict[str, list[float]] = defaultdict(list)
    for dst, port, rate in zip(live["dst"].tolist(), live["dport"].tolist(), live["delivery_rate"].tolist(),
                               strict=True):
        live_rates[format_destination(dst, port)].append(8.0 * rate)
    if not b.n:
        return [PeerSample(host=host, labels=dict(labels), destination=d,
                           throughput_bps=float(statistics.median(rates)))
                for d, rates in sorted(live_rates.items())]
    codes, keys = factorize(b["dst"], b["dport"])
    dests = [format_destination(dst, port) for dst, port in keys]
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=len(keys)))))
    srtt, rate = b["srtt_us"][order], b["delivery_rate"][order]
    outcome = b["outcome"][order]
    failed = np.isin(outcome, FAILED)
    tried = failed | np.isin(outcome, USEFUL)
    out: list[PeerSample] = []
    for code in sorted(range(len(keys)), key=dests.__getitem__):
        lo, hi = bounds[code], bounds[code + 1]
        rtts = [float(x) for x in srtt[lo:hi].tolist() if x > 0]
        rates = [8.0 * x for x in rate[lo:hi].tolist() if x > 0] + live_rates.pop(dests[code], [])
        out.append(PeerSample(
            host=host, labels=dict(labels), destination=dests[code],
            attempts=int(tried[lo:hi].sum()), failures=int(failed[lo:hi].sum()),
            rtt_p50_us=percentile(rtts, 0.5), rtt_p95_us=percentile(rtts, 0.95),
            throughput_bps=float(statistics.median(rates)) if rates else 0.0,
        ))
    out += [PeerSample(host=host, labels=dict(labels), destination=d, throughput_bps=float(statistics.median(rates)))
            for d, rates in sorted(live_rates.items())]  # destinations with open flows only
    return out
