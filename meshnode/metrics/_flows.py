"""Per-service and per-process flow metrics, added once per export period from the period's columns.

Two dimensions, each with the same six families:

* ``meshnode_service_*``: by ``flow_direction`` and ``service``. An outbound flow's service is the
  destination's (its remote port's name, e.g. ``https``, or the port number when the port has no name);
  an inbound flow's is the local service it reached (its local port's). The service, not the remote
  address, is the label, so 10,000 destinations on one port are one series.
* ``meshnode_process_*``: by ``process`` (the name ``ps`` shows, without the pid: a pid would make a new
  series at every restart) and ``flow_direction``.

Families: ``_connections_total`` (each flow once, in the period its outcome became known; see
``meshnode.summary.PeriodFlows.opened``), ``_connection_failures_total`` (those whose outcome is refused,
timeout, reset or udp_unanswered), ``_bytes_total`` (payload bytes each period, by ``network_io_direction``),
``_retransmits_total`` (TCP segments retransmitted each period), ``_connect_seconds`` (histogram of
established TCP handshakes) and ``_rtt_seconds`` (histogram: each TCP flow's smoothed RTT once per period it
was seen in, so a long connection weighs once per period).

Cardinality is bounded: per dimension at most ``top`` label values (per ``flow_direction`` for services) have
series of their own; the rest of the period's traffic goes to the value ``other``. The values kept are the
period's top by bytes (the ones kept before win ties, so a steady mix keeps its series); a value pushed out
loses its series (its counters restart from zero when it comes back, which ``rate()`` reads as a reset).
``meshnode_metrics_folded_total{dimension}`` counts the values folded into ``other``, once per period.

All of this is numpy over the period's batch, once a period: no per-flow Python on the sensor's path.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshnode._batch import FAILED, factorize
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from meshnode.summary import PeriodFlows

OTHER: Final = "other"
"""The label value the folded keys share."""

RTT_BUCKETS: Final = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                      0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: loopback and same-rack RTTs (tens of microseconds) up to a satellite link's."""
CONNECT_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)
"""Seconds: a handshake's time, up to the SYN retransmissions of a lossy path (1 s, 3 s, 7 s...)."""

_TCP: Final = ENUM_NUMBERS["proto"]["tcp"]
_ESTABLISHED: Final = ENUM_NUMBERS["outcome"]["established"]
_OUTBOUND: Final = ENUM_NUMBERS["direction"]["outbound"]
_ENUM_OF: Final = {"flow_direction": "direction"}
"""Extra labels (``Dimension.extras``) and the enumerated flow field each one names."""
_ENUM_LABELS: Final = {"proto": ENUM_NAMES["proto"], "outcome": ENUM_NAMES["outcome"],
                       "io": {0: "transmit", 1: "receive"}}


@dataclass(frozen=True, slots=True)
class Dimension:
    """What one family group is broken down by: series labels are ``partition + (fold,) + extras``; at most
    ``top`` values of ``fold`` per partition keep series of their own."""

    name: str
    prefix: str
    partition: tuple[str, ...]
    fold: str
    extras: tuple[str, ...]
    top: int

    @property
    def labels(self) -> tuple[str, ...]:
        return (*self.partition, self.fold, *self.extras)


@dataclass(slots=True)
class _Histogram:
    counts: NDArray[np.int64]
    """Per bucket (the last is +Inf), not cumulative."""
    total: float = 0.0


@dataclass(slots=True)
class _State:
    """The series of one dimension: label tuple -> value."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], _Histogram]] = field(default_factory=dict)
    kept: dict[tuple[str, ...], set[str]] = field(default_factory=dict)
    """Per partition, the fold values that have series of their own."""
    folded: int = 0


_COUNTERS: Final = (
    ("connections", ("network_transport",),
     "Connections (flows) whose outcome became known, each once: TCP at the handshake's end, UDP when the "
     "flow ends."),
    ("connection_failures", ("network_transport", "outcome"),
     "Connections that failed: refused, timeout, reset (TCP) or udp_unanswered."),
    ("bytes", ("network_transport", "network_io_direction"),
     "Payload bytes sent (transmit) and received (receive), counted in the period they moved in."),
    ("retransmits", (), "TCP segments retransmitted, counted in the period they happened in."),
)
_HISTOGRAMS: Final = (
    ("connect_seconds", CONNECT_BUCKETS, "Time of established TCP handshakes (SYN to established)."),
    ("rtt_seconds", RTT_BUCKETS, "Smoothed RTT of TCP flows, one observation per flow per export period."),
)
FAMILY_SUFFIXES: Final = tuple(name for name, _, _ in _COUNTERS) + tuple(name for name, _, _ in _HISTOGRAMS)


def default_dimensions(top_services: int = 30, top_processes: int = 20) -> tuple[Dimension, Dimension]:
    """The service and process dimensions with their top-K."""
    return (
        Dimension("service", "meshnode_service", ("flow_direction",), "service", (), top_services),
        Dimension("process", "meshnode_process", (), "process", ("flow_direction",), top_processes),
    )


class FlowFamilies(Collector):
    """A prometheus-client collector of the per-service and per-process families (see the module doc).

    ``observe`` runs in the node's event loop once a period; ``collect`` in the HTTP server's thread; a lock
    keeps a scrape from seeing half a period.
    """

    def __init__(self, dimensions: Sequence[Dimension] | None = None) -> None:
        self.dimensions = tuple(dimensions or default_dimensions())
        for d in self.dimensions:
            if d.top < 0:
                raise ValueError(f"top-K of {d.name} must be 0 or more, not {d.top}")
        self._states = {d.name: _State() for d in self.dimensions}
        self._lock = threading.Lock()

    def observe(self, period: PeriodFlows) -> None:
        """Add one period's flows (``PeriodBuilder.last_flows``)."""
        b = period.flows
        if not b.n:
            return
        columns = _label_columns(period)
        with self._lock:
            for d in self.dimensions:
                self._observe(d, self._states[d.name], period, columns)

    def series(self, dimension: str) -> int:
        """How many label values of ``dimension`` have series of their own now (``other`` not counted)."""
        with self._lock:
            return sum(len(v) for v in self._states[dimension].kept.values())

    # -- one dimension ---------------------------------------------------------------------------------------

    def _observe(self, d: Dimension, st: _State, p: PeriodFlows, cols: dict[str, NDArray[Any]]) -> None:
        b = p.flows
        traffic = (p.bytes_tx + p.bytes_rx).astype(np.float64)
        rank_cols = [cols[name] for name in (*d.partition, d.fold)]
        codes, values = factorize(*rank_cols)
        keys = [v if isinstance(v, tuple) else (v,) for v in values]
        sums = np.bincount(codes, weights=traffic, minlength=len(keys)).tolist()
        flows = np.bincount(codes, minlength=len(keys)).tolist()
        by_part: dict[tuple[str, ...], list[tuple[str, float, int]]] = {}
        for key, t, n in zip(keys, sums, flows, strict=True):
            by_part.setdefault(key[:-1], []).append((key[-1], t, n))
        label_of: list[str] = [OTHER] * len(keys)
        position = {k: i for i, k in enumerate(keys)}
        for part in set(by_part) | set(st.kept):
            now = by_part.get(part, [])
            kept = st.kept.get(part, set())
            seen = {name for name, _, _ in now}
            ranked = sorted([*now, *((name, 0.0, 0) for name in kept - seen)],
                            key=lambda x: (-x[1], x[0] not in kept, -x[2], x[0]))
            keep = {name for name, _, _ in ranked[:d.top] if name != OTHER}
            st.folded += sum(1 for name, _, _ in ranked[d.top:] if name in seen and name != OTHER)
            for gone in kept - keep:
                self._drop(st, (*part, gone))
            st.kept[part] = keep
            for name in keep & seen:
                label_of[position[(*part, name)]] = name
        # Each row's series as one small integer: its folded rank key, then (times 256) its extra enum labels;
        # the families below group by that and a few enum numbers, in numpy, not by text.
        folded_ids: dict[tuple[str, ...], int] = {}
        fold_id = np.fromiter((folded_ids.setdefault((*k[:-1], label_of[i]), len(folded_ids))
                               for i, k in enumerate(keys)), dtype=np.int64, count=len(keys))
        folded_keys = list(folded_ids)
        raw = fold_id[codes]
        for extra in d.extras:
            raw = raw * 256 + b[_ENUM_OF[extra]].astype(np.int64)
        distinct, inverse = np.unique(raw, return_inverse=True)
        series = inverse.reshape(b.n).astype(np.int64)
        labels: list[tuple[str, ...]] = []
        for value in distinct.tolist():
            extra_names: list[str] = []
            for extra in reversed(d.extras):
                extra_names.insert(0, ENUM_NAMES[_ENUM_OF[extra]].get(value % 256, "unknown"))
                value //= 256
            labels.append((*folded_keys[value], *extra_names))

        opened = p.opened
        tcp = b["proto"] == _TCP
        proto = b["proto"].astype(np.int64)
        outcome = b["outcome"].astype(np.int64)
        failed = opened & np.isin(outcome, FAILED)
        add = functools.partial(self._add, st, labels)
        add("connections", series * 256 + proto, ("proto",), opened, None)
        add("connection_failures", (series * 256 + proto) * 256 + outcome, ("proto", "outcome"), failed, None)
        for io, moved_bytes in enumerate((p.bytes_tx, p.bytes_rx)):
            add("bytes", (series * 256 + proto) * 256 + io, ("proto", "io"), moved_bytes > 0, moved_bytes)
        add("retransmits", series, (), tcp & (p.retransmits > 0), p.retransmits)
        connect = opened & tcp & (outcome == _ESTABLISHED) & (b["connect_us"] > 0)
        self._observe_histogram(st, labels, "connect_seconds", CONNECT_BUCKETS, series, connect, b["connect_us"])
        self._observe_histogram(st, labels, "rtt_seconds", RTT_BUCKETS, series, tcp & (b["srtt_us"] > 0),
                                b["srtt_us"])

    @staticmethod
    def _add(st: _State, labels: list[tuple[str, ...]], family: str, key: NDArray[np.int64],
             enums: tuple[str, ...], mask: NDArray[np.bool_], weights: NDArray[Any] | None) -> None:
        """Sum ``weights`` (1 a row without) by ``key``: the row's series times 256 per enum, plus each enum's
        number (``enums`` name them, last one lowest)."""
        if not mask.any():
            return
        distinct, inverse = np.unique(key[mask], return_inverse=True)
        w = None if weights is None else weights[mask].astype(np.float64)
        sums = np.bincount(inverse.reshape(-1), weights=w, minlength=len(distinct)).tolist()
        table = st.counters.setdefault(family, {})
        for value, total in zip(distinct.tolist(), sums, strict=True):
            if not total:
                continue
            names: list[str] = []
            for enum in reversed(enums):
                names.insert(0, _ENUM_LABELS[enum].get(value % 256, "unknown"))
                value //= 256
            k = (*labels[value], *names)
            table[k] = table.get(k, 0.0) + total

    @staticmethod
    def _observe_histogram(st: _State, labels: list[tuple[str, ...]], family: str, bounds: tuple[float, ...],
                           series: NDArray[np.int64], mask: NDArray[np.bool_], micros: NDArray[Any]) -> None:
        if not mask.any():
            return
        seconds = micros[mask].astype(np.float64) / 1e6
        distinct, inverse = np.unique(series[mask], return_inverse=True)
        codes = inverse.reshape(-1)
        nb = len(bounds) + 1
        bucket = np.searchsorted(np.asarray(bounds), seconds, side="left")  # le: a value on a bound is in it
        counts = np.bincount(codes * nb + bucket, minlength=len(distinct) * nb).reshape(len(distinct), nb)
        totals = np.bincount(codes, weights=seconds, minlength=len(distinct)).tolist()
        table = st.histograms.setdefault(family, {})
        for i, value in enumerate(distinct.tolist()):
            k = labels[value]
            h = table.get(k)
            if h is None:
                h = table[k] = _Histogram(np.zeros(nb, dtype=np.int64))
            h.counts += counts[i]
            h.total += totals[i]

    @staticmethod
    def _drop(st: _State, rank_key: tuple[str, ...]) -> None:
        """Remove every series of one label value pushed out of the top."""
        n = len(rank_key)
        for counters in st.counters.values():
            for k in [k for k in counters if k[:n] == rank_key]:
                del counters[k]
        for histograms in st.histograms.values():
            for k in [k for k in histograms if k[:n] == rank_key]:
                del histograms[k]

    # -- exposition ------------------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            return iter(self._families())

    def _families(self) -> list[Metric]:
        out: list[Metric] = []
        folded = CounterMetricFamily("meshnode_metrics_folded", "Label values folded into 'other' because "
                                     "their dimension was at its top-K, once per period each.",
                                     labels=["dimension"])
        tracked = GaugeMetricFamily("meshnode_metrics_label_values", "Label values with series of their own "
                                    "now, per dimension (at most its top-K per partition).", labels=["dimension"])
        for d in self.dimensions:
            st = self._states[d.name]
            folded.add_metric([d.name], st.folded)
            tracked.add_metric([d.name], sum(len(v) for v in st.kept.values()))
            for family, extra, help_text in _COUNTERS:
                fam = CounterMetricFamily(f"{d.prefix}_{family}", f"{help_text} By {d.name}.",
                                          labels=[*d.labels, *extra])
                for key, value in sorted(st.counters.get(family, {}).items()):
                    fam.add_metric(list(key), value)
                out.append(fam)
            for family, bounds, help_text in _HISTOGRAMS:
                hist = HistogramMetricFamily(f"{d.prefix}_{family}", f"{help_text} By {d.name}.",
                                             labels=list(d.labels))
                for key, h in sorted(st.histograms.get(family, {}).items()):
                    cumulative = np.cumsum(h.counts).tolist()
                    buckets = [(_le(b), float(c)) for b, c in zip(bounds, cumulative, strict=False)]
                    buckets.append(("+Inf", float(cumulative[-1])))
                    hist.add_metric(list(key), buckets, h.total)
                out.append(hist)
        out += [folded, tracked]
        return out


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _label_columns(p: PeriodFlows) -> dict[str, NDArray[Any]]:
    """The text label columns the dimensions rank by (object arrays, each distinct text one object)."""
    b = p.flows
    outbound = b["direction"] == _OUTBOUND
    service = b["service"].copy()
    unnamed = np.flatnonzero(service == "")
    if len(unnamed):
        ports = np.where(outbound[unnamed], b["dport"][unnamed], b["sport"][unnamed])
        distinct, inverse = np.unique(ports, return_inverse=True)
        names = np.empty(len(distinct), dtype=object)
        names[:] = [str(port) for port in distinct.tolist()]
        service[unnamed] = names[inverse.reshape(len(unnamed))]
    comm = b["comm"].copy()
    comm[comm == ""] = "?"
    return {"flow_direction": b.names("direction"), "service": service, "process": comm}
