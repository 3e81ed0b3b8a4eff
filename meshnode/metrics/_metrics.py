"""Prometheus metrics of a node, on their own port (``--metrics HOST:PORT``, ``off`` to disable).

Label names follow the OpenTelemetry network conventions where one exists, with dots as underscores:
``network_transport`` (tcp, udp), ``network_io_direction`` (transmit, receive). The flow's own direction
(who opened it) has no OTel name and is ``flow_direction`` (outbound, inbound); ``outcome`` is the
flow-record name. The registry is private to the node, so tests can run several nodes in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from meshnode._batch import FlowBatch, as_batch
from meshnode._exceptions import ConfigError
from meshnode._model import FlowRecord

log = logging.getLogger(__name__)


class NodeMetrics:
    """The node's counters and gauges, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.flows = Counter(
            "meshnode_flows", "Flows that ended, by outcome and transport.",
            ["outcome", "network_transport", "flow_direction"], registry=r,
        )
        self.bytes = Counter(
            "meshnode_flow_bytes", "Payload bytes of flows, counted in the period they happened in.",
            ["network_io_direction", "network_transport"], registry=r,
        )
        self.sensor = Counter(
            "meshnode_sensor_completeness", "The sensor's completeness counters (what it could not record).",
            ["counter"], registry=r,
        )
        self.periods = Counter("meshnode_periods", "Export periods closed.", registry=r)
        self.incomplete_periods = Gauge(
            "meshnode_periods_incomplete", "Export periods in the store marked incomplete.", registry=r
        )
        self.store_bytes = Gauge("meshnode_store_bytes", "Size of the store on disk (db + WAL).", registry=r)
        self.store_rows = Gauge("meshnode_store_rows", "Flow rows in the store.", registry=r)
        self.store_evictions = Gauge(
            "meshnode_store_evictions", "Rows removed by retention since the store was created.", registry=r
        )
        self.active_flows = Gauge("meshnode_active_flows", "Flows the sensor tracks now.", registry=r)
        self.period_close_seconds = Gauge(
            "meshnode_period_close_seconds",
            "Seconds the last export period took to close: summary, store transaction, listeners.", registry=r,
        )
        self.events_dropped = Gauge(
            "meshnode_events_dropped", "Low-level events dropped by the event ring or slow subscribers.",
            registry=r,
        )

    def observe_period(
        self,
        finals: FlowBatch | Iterable[FlowRecord],
        bytes_by_transport: Mapping[str, tuple[int, int]],
        completeness: Mapping[str, int],
    ) -> None:
        """Count one closed period: its ended flows, its byte deltas (tx, rx) and the sensor's counters."""
        self.periods.inc()
        for (outcome, proto, direction), n in as_batch(finals).count_by("outcome", "proto", "direction").items():
            self.flows.labels(outcome, proto, direction).inc(n)
        for transport, (tx, rx) in bytes_by_transport.items():
            if tx:
                self.bytes.labels("transmit", transport).inc(tx)
            if rx:
                self.bytes.labels("receive", transport).inc(rx)
        for name, value in completeness.items():
            if value:
                self.sensor.labels(name).inc(value)

    def set_store(self, size: int, rows: int, evictions: int, incomplete: int) -> None:
        """Refresh the store gauges."""
        self.store_bytes.set(size)
        self.store_rows.set(rows)
        self.store_evictions.set(evictions)
        self.incomplete_periods.set(incomplete)


class MetricsServer:
    """A node service exposing ``/metrics`` over HTTP on ``HOST:PORT``."""

    name = "metrics"

    def __init__(self, listen: str, metrics: NodeMetrics) -> None:
        self.listen = listen
        self.metrics = metrics
        self.port = 0
        self._server: Any = None

    async def start(self) -> None:
        """Bind and serve in a background thread; raises ``ConfigError`` when it cannot bind."""
        host, _, port = self.listen.rpartition(":")
        try:
            server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                registry=self.metrics.registry)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"metrics: cannot serve on {self.listen}: {exc}") from exc
        self._server = server
        self.port = int(server.server_address[1])

    async def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
