"""Prometheus metrics of a node, on their own port (``--metrics HOST:PORT``, ``off`` to disable).

Label names follow the OpenTelemetry network conventions where one exists, with dots as underscores:
``network_transport`` (tcp, udp), ``network_io_direction`` (transmit, receive). The flow's own direction
(who opened it) has no OTel name and is ``flow_direction`` (outbound, inbound); ``outcome`` is the
flow-record name. The registry is private to the node, so tests can run several nodes in one process.

prometheus-client writes the text format and serves it: its collectors give the ``process_*`` families
(CPU seconds, RSS, open files) by the conventions every dashboard knows, and custom collectors
(``FlowFamilies``, ``StateCollector``) add a period's numbers in bulk, which its ``Counter``/``Histogram``
objects (one ``inc``/``observe`` call a value) could not.

Everything is refreshed once per export period, in the node's event loop, from state the node has then:
the period's flows and deltas (``FlowFamilies``), the mesh's and trust's counters (``StateCollector``).
A scrape reads what the last period left; it never walks the mesh or the flows itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server

from meshnode._batch import FlowBatch, as_batch
from meshnode._exceptions import ConfigError
from meshnode._model import FlowRecord
from meshnode.metrics._flows import FlowFamilies, default_dimensions
from meshnode.metrics._state import MeshView, StateCollector, TrustView

if TYPE_CHECKING:
    from meshnode.summary import PeriodFlows

log = logging.getLogger(__name__)


class NodeMetrics:
    """The node's counters and gauges, in one registry.

    Args:
        registry: where to register (a new private one by default).
        top_services: services per flow direction with series of their own (``metrics_services``).
        top_processes: process names with series of their own (``metrics_processes``).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, top_services: int = 30,
                 top_processes: int = 20) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.flow_families = FlowFamilies(default_dimensions(top_services, top_processes))
        r.register(self.flow_families)
        self.state = StateCollector()
        r.register(self.state)
        self.mesh_source: Callable[[], MeshView | None] | None = None
        """Set by the mesh's wiring: read once a period, in the event loop (the mesh is not thread-safe)."""
        self.trust_source: Callable[[], TrustView | None] | None = None
        """Set by trust's wiring, read like ``mesh_source``."""
        self.flows = Counter(
            "meshnode_flows", "Flows that ended, by outcome and transport.",
            ["outcome", "network_transport", "flow_direction"], registry=r,
        )
        self.bytes = Counter(
            "meshnode_flow_bytes", "Payload bytes of flows, counted in the period they happened in.",
            ["network_io_direction", "network_transport"], registry=r,
        )
        self.sensor = Counter(
            "meshnode_sensor_completeness", "The sensor's completeness counters (what it could not record: "
            "lost_events, map_evictions, ringbuf_overruns, ...; flows_recorded counts what it did record).",
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
            "meshnode_events_dropped",
            "Low-level events lost: never written to the store, or dropped for a slow subscriber.",
            registry=r,
        )

    def observe_period(
        self,
        finals: FlowBatch | Iterable[FlowRecord],
        bytes_by_transport: Mapping[str, tuple[int, int]],
        completeness: Mapping[str, int],
        flows: PeriodFlows | None = None,
    ) -> None:
        """Count one closed period: its ended flows, its byte deltas (tx, rx), the sensor's counters (every
        one, zeros too, so that alerts on them have a series from the start) and, with ``flows``, the
        per-service and per-process families."""
        self.periods.inc()
        if flows is not None:
            self.flow_families.observe(flows)
        for (outcome, proto, direction), n in as_batch(finals).count_by("outcome", "proto", "direction").items():
            self.flows.labels(outcome, proto, direction).inc(n)
        for transport, (tx, rx) in bytes_by_transport.items():
            if tx:
                self.bytes.labels("transmit", transport).inc(tx)
            if rx:
                self.bytes.labels("receive", transport).inc(rx)
        for name, value in completeness.items():
            self.sensor.labels(name).inc(value)

    def refresh_state(self) -> None:
        """Read the mesh's and trust's state for the next scrapes (in the event loop, once a period); a
        source that fails is logged and its last view kept."""
        try:
            mesh = self.mesh_source() if self.mesh_source is not None else None
            if mesh is not None:
                self.state.set_mesh(mesh)
            trust = self.trust_source() if self.trust_source is not None else None
            if trust is not None:
                self.state.set_trust(trust)
        except Exception:  # metrics must not stop the node
            log.exception("metrics: reading the mesh's state")

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
