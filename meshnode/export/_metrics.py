"""Exporters' counters as Prometheus families, one collector per registry for all of a node's exporters.

Families (label ``exporter``: clickhouse, otlp):
``meshnode_export_batches_total`` and ``meshnode_export_rows_total`` by ``result`` (sent, dropped);
``meshnode_export_queued_batches``, ``meshnode_export_queued_rows``, ``meshnode_export_queued_bytes``
(waiting on disk now); ``meshnode_export_send_failures_total``. The values are read from the exporters'
own counters at scrape time, so there is one count, not a second kept beside it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from meshnode.api import ExporterStatus

StatusFn = Callable[[], "ExporterStatus"]


class ExportCollector(Collector):
    """Collects every registered exporter's counters."""

    def __init__(self) -> None:
        self.sources: list[StatusFn] = []

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily("meshnode_export_batches", "Export batches sent or dropped, by exporter.",
                                      labels=["exporter", "result"])
        rows = CounterMetricFamily("meshnode_export_rows", "Flow rows sent or dropped, by exporter.",
                                   labels=["exporter", "result"])
        failures = CounterMetricFamily("meshnode_export_send_failures",
                                       "Failed attempts to send a batch (it stays queued).", labels=["exporter"])
        queued = {
            what: GaugeMetricFamily(f"meshnode_export_queued_{what}",
                                    f"Export {what} waiting on disk for the destination.", labels=["exporter"])
            for what in ("batches", "rows", "bytes")
        }
        for source in self.sources:
            st = source()
            c = st.counters
            for result in ("sent", "dropped"):
                batches.add_metric([st.name, result], c.get(f"{result}_batches", 0))
                rows.add_metric([st.name, result], c.get(f"{result}_rows", 0))
            failures.add_metric([st.name], c.get("send_failures", 0))
            for what, family in queued.items():
                family.add_metric([st.name], c.get(f"queued_{what}", 0))
        yield batches
        yield rows
        yield failures
        yield from queued.values()


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, ExportCollector] = weakref.WeakKeyDictionary()


def register_exporter(registry: CollectorRegistry, status: StatusFn) -> None:
    """Show an exporter's counters in ``registry`` (its families are shared with the node's other exporters)."""
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = _COLLECTORS[registry] = ExportCollector()
        registry.register(collector)
    collector.sources.append(status)
