"""OTLP export: flow metrics and one log record per ended flow, over OTLP/gRPC, with the OpenTelemetry SDK.

``meshnode run --otlp URL`` (``otlp`` in the config file, ``MESHNODE_OTLP``) adds an ``OtlpExporter`` to the
node's services. It is a record listener: each closed period hands it the period's flows, of which it takes
the final records (flows that ended). The listener only appends the batch to a queue; two threads of the
exporter do the rest, so the event loop never waits on the SDK or the network:

* the *recorder* adds the period's ended flows to the SDK's instruments (``meshnode.flow.*``, attributes
  named by OpenTelemetry's semantic conventions) and hands the batch on to the sender; it does no I/O, so
  the cumulative metrics stay exact while the receiver is down;
* the *sender* exports the metrics once per period (an SDK ``MetricReader`` without a timer, collected by
  the sender) and the ended flows as log records in requests of ``chunk`` records, through the SDK's
  ``OTLPMetricExporter`` and ``OTLPLogExporter`` (their retries with backoff, bounded by ``timeout``); the
  log requests are built from the flow columns (``encode_flow_logs``), not record by record.

Bounded and counted: at most ``max_pending`` ended flows wait (besides the one period each thread works
on); past that the oldest waiting ones are dropped
(``records_dropped``), first those already added to the metrics. A request that fails after the SDK's retries is counted
(``records_failed``, ``requests_failed``) and the rest of that period's records are failed without trying,
so a dead receiver costs one timeout per period and signal. Metric series are bounded by ``max_series``
endpoint keys (see ``FlowMetrics``); flows beyond it are folded and counted (``flows_folded``). The counters
reach ``meshctl status`` (``ExporterStatus``) and Prometheus (``meshnode_otlp_*``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import numpy as np
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from meshnode import __version__
from meshnode._batch import FIELDS, FlowBatch
from meshnode._exceptions import ConfigError
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS
from meshnode.api import ExporterStatus
from meshnode.summary import format_destination

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from meshnode.summary import PeriodSummary

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 4317
"""OTLP/gRPC's registered port."""
SCOPE: Final = InstrumentationScope("meshnode.export", __version__)
EVENT_NAME: Final = "meshnode.flow.ended"

# OpenTelemetry semantic-convention attribute names (a unit test checks them against the semconv package).
NETWORK_TRANSPORT: Final = "network.transport"
NETWORK_TYPE: Final = "network.type"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
NETWORK_PEER_PORT: Final = "network.peer.port"
NETWORK_LOCAL_ADDRESS: Final = "network.local.address"
NETWORK_LOCAL_PORT: Final = "network.local.port"
NETWORK_IO_DIRECTION: Final = "network.io.direction"
PROCESS_EXECUTABLE_NAME: Final = "process.executable.name"
OVERFLOW: Final = "otel.metric.overflow"
"""The SDK specification's attribute for measurements past a cardinality limit."""
# Ours, where OpenTelemetry has no name: who opened the flow, how it ended, the service name meshnode gave it.
FLOW_DIRECTION: Final = "meshnode.flow.direction"
FLOW_OUTCOME: Final = "meshnode.flow.outcome"
SERVICE: Final = "meshnode.service"

RTT_BUCKETS_S: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0)
"""Histogram bounds (seconds) for RTT and connect time: loopback (tens of us) to a bad WAN (seconds)."""

_TCP: Final = ENUM_NUMBERS["proto"]["tcp"]
_OUTBOUND: Final = ENUM_NUMBERS["direction"]["outbound"]
_FINAL: Final = ENUM_NUMBERS["kind"]["final"]
_FAILED_NAMES: Final = frozenset({"refused", "timeout", "reset", "udp_unanswered"})
_EXPORTER_LOGGER: Final = "opentelemetry.exporter.otlp.proto.grpc.exporter"


def parse_otlp_url(value: Any) -> str:
    """An OTLP/gRPC endpoint as ``http://HOST:PORT`` (plaintext) or ``https://HOST:PORT`` (TLS).

    The port defaults to 4317. Raises ``ValueError`` saying what is wrong and how to write it.
    """
    text = str(value).strip()
    example = "e.g. http://127.0.0.1:4317 (plaintext) or https://collector.example:4317 (TLS)"
    if "://" not in text:
        raise ValueError(f"{text!r} is not a URL: write the scheme and the collector's address, {example}")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: scheme {parts.scheme!r} is not OTLP/gRPC's; use http:// or https://, "
                         f"{example}")
    if parts.username or parts.password:
        raise ValueError(f"{text!r}: credentials in the URL are not supported (set OTEL_EXPORTER_OTLP_HEADERS)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: OTLP/gRPC takes no path or query (an OTLP/HTTP path such as /v1/logs "
                         f"is not served over gRPC); {example}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise ValueError(f"{text!r}: {exc}; {example}") from None
    if not host:
        raise ValueError(f"{text!r} names no host; {example}")
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a port to send to; {example}")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port or DEFAULT_PORT}"


@dataclass(slots=True)
class OtlpCounters:
    """What the exporter did since start (written by its threads, read by status and Prometheus)."""

    records_exported: int = 0
    """Ended-flow log records the receiver accepted."""
    records_failed: int = 0
    """Log records whose request failed after the SDK's retries (or that followed a failed request)."""
    records_dropped: int = 0
    """Log records dropped before an attempt: the queue was full, or the node stopped before they were sent."""
    log_requests_ok: int = 0
    log_requests_failed: int = 0
    metric_exports_ok: int = 0
    metric_exports_failed: int = 0
    flows_unrecorded: int = 0
    """Of the dropped records, those dropped before they were added to the metrics (the recorder fell behind)."""
    flows_folded: int = 0
    """Ended flows counted in an overflow series because ``max_series`` endpoint keys were already in use."""
    last_error: str = ""


class FlowMetrics:
    """The ``meshnode.flow.*`` instruments, fed with ended flows as columns.

    Series are keyed by one flow *end point* of meshnode's choosing, so their number follows the services,
    not the connections: an outbound flow by the service it reached (``network.peer.address`` and
    ``network.peer.port``), an inbound one by the local service that accepted it (``network.local.address``
    and ``network.local.port``), never by the ephemeral port of the other side nor by an inbound client's
    address; with ``network.transport``, ``network.type``, ``meshnode.flow.direction``, ``meshnode.service``
    and ``process.executable.name``. The first ``max_series`` such keys are kept for the process's life (the
    SDK keeps cumulative series forever, so this is also its memory bound); flows of any further key are
    counted in one series per transport and direction with ``otel.metric.overflow=true``, and in
    ``folded``. ``connections`` adds ``meshnode.flow.outcome``; ``bytes`` and ``packets`` add
    ``network.io.direction``.
    """

    def __init__(self, provider: MeterProvider, max_series: int) -> None:
        meter = provider.get_meter("meshnode.export", __version__)
        self.connections = meter.create_counter(
            "meshnode.flow.connections", unit="{connection}", description="Flows that ended, by outcome.")
        self.bytes = meter.create_counter(
            "meshnode.flow.bytes", unit="By", description="Payload bytes of flows that ended, by direction.")
        self.packets = meter.create_counter(
            "meshnode.flow.packets", unit="{packet}", description="IP packets of flows that ended, by direction.")
        self.retransmits = meter.create_counter(
            "meshnode.flow.retransmits", unit="{segment}", description="TCP segments retransmitted by flows "
            "that ended.")
        self.rtt = meter.create_histogram(
            "meshnode.flow.rtt", unit="s", description="Smoothed RTT of TCP flows when they ended.",
            explicit_bucket_boundaries_advisory=list(RTT_BUCKETS_S))
        self.connect = meter.create_histogram(
            "meshnode.flow.connect.duration", unit="s", description="Handshake time of TCP flows that connected.",
            explicit_bucket_boundaries_advisory=list(RTT_BUCKETS_S))
        self.max_series = max_series
        self.folded = 0
        self._keys: dict[tuple[Any, ...], dict[str, Any]] = {}

    def record(self, finals: FlowBatch) -> None:
        """Add ended flows to the instruments (in the exporter's recorder thread)."""
        if not finals:
            return
        outcomes = finals["outcome"]
        outcome_names = ENUM_NAMES["outcome"]
        for key, rows in _groups(finals):
            attrs = self._attributes(key, len(rows))
            numbers, counts = np.unique(outcomes[rows], return_counts=True)
            for number, n in zip(numbers.tolist(), counts.tolist(), strict=True):
                self.connections.add(n, {**attrs, FLOW_OUTCOME: outcome_names.get(number, "unknown")})
            for column, direction in (("bytes_tx", "transmit"), ("bytes_rx", "receive")):
                if total := int(finals[column][rows].sum()):
                    self.bytes.add(total, {**attrs, NETWORK_IO_DIRECTION: direction})
            for column, direction in (("packets_tx", "transmit"), ("packets_rx", "receive")):
                if total := int(finals[column][rows].sum()):
                    self.packets.add(total, {**attrs, NETWORK_IO_DIRECTION: direction})
            if key[0] != "tcp":
                continue
            if total := int(finals["retransmits"][rows].sum()):
                self.retransmits.add(total, attrs)
            for us in finals["srtt_us"][rows].tolist():
                if us > 0:
                    self.rtt.record(us / 1e6, attrs)
            for us in finals["connect_us"][rows].tolist():
                if us > 0:
                    self.connect.record(us / 1e6, attrs)

    def _attributes(self, key: tuple[Any, ...], n: int) -> dict[str, Any]:
        attrs = self._keys.get(key)
        if attrs is not None:
            return attrs
        if len(self._keys) < self.max_series:
            attrs = _key_attributes(key)
            self._keys[key] = attrs
            return attrs
        self.folded += n
        return {NETWORK_TRANSPORT: key[0], FLOW_DIRECTION: key[2], OVERFLOW: True}


def _groups(finals: FlowBatch) -> Iterable[tuple[tuple[Any, ...], np.ndarray[Any, Any]]]:
    """Row indexes of ``finals`` per series key (transport, type, direction, address, port, service, comm),
    where address and port are the remote end's for outbound flows and the local end's otherwise."""
    outbound = finals["direction"] == _OUTBOUND
    address = np.where(outbound, finals["dst"], finals["src"])
    port = np.where(outbound, finals["dport"], finals["sport"])
    columns = (finals.names("proto"), finals.names("direction"), address, port, finals["service"], finals["comm"])
    keys: dict[tuple[Any, ...], list[int]] = {}
    for i, (proto, direction, addr, p, service, comm) in enumerate(zip(*(c.tolist() for c in columns),
                                                                           strict=True)):
        kind = "ipv6" if ":" in addr else "ipv4"
        keys.setdefault((proto, kind, direction, addr, p, service, comm), []).append(i)
    return ((k, np.asarray(v, dtype=np.intp)) for k, v in keys.items())


def _key_attributes(key: tuple[Any, ...]) -> dict[str, Any]:
    proto, kind, direction, address, port, service, comm = key
    attrs: dict[str, Any] = {NETWORK_TRANSPORT: proto, NETWORK_TYPE: kind, FLOW_DIRECTION: direction}
    if direction == "outbound":
        attrs.update({NETWORK_PEER_ADDRESS: address, NETWORK_PEER_PORT: port})
    else:
        attrs.update({NETWORK_LOCAL_ADDRESS: address, NETWORK_LOCAL_PORT: port})
    if service:
        attrs[SERVICE] = service
    if comm:
        attrs[PROCESS_EXECUTABLE_NAME] = comm
    return attrs


def encode_flow_logs(finals: FlowBatch, *, node_id: str, host: str, resource: Resource,
                     observed_ns: int) -> ExportLogsServiceRequest:
    """One OTLP log record per ended flow, as the request the SDK's ``encode_logs`` makes of the same
    records, built from the columns (8x faster: the SDK's encoder walks ~45 attributes a record in Python and
    was 85 % of the export's CPU; a unit test checks the two give equal requests).

    Each record: attributes named as the flow record's fields in their order (enumerations by name, 64-bit
    identifiers as signed 64-bit like the store, since OTLP integers are signed, ``node_id`` the node's),
    then ``host``; timestamp ``end_ns``, observed ``observed_ns``; severity WARN for a failed flow, else
    INFO; event name ``meshnode.flow.ended``; the resource and scope of ``resource`` and ``SCOPE``.
    """
    columns: list[list[bytes]] = []
    for name in FIELDS:
        key = _ld(0x0A, name.encode())
        col = finals[name]
        if name == "node_id":
            columns.append([_kv_str(key, node_id)] * len(finals))
        elif name in ENUM_NAMES:
            table = [_kv_str(key, ENUM_NAMES[name].get(i, "unknown")) for i in range(256)]
            columns.append([table[v] for v in col.tolist()])
        elif name == "drop_reasons":
            columns.append([_kv(key, _ld(0x32, b"".join(_kv_int(_ld(0x0A, str(k).encode()), int(n), tag=0x0A)
                                                         for k, n in d.items())) if d else b"\x32\x00")
                            for d in col.tolist()])
        else:
            values = col.view(np.int64).tolist() if col.dtype == np.uint64 else col.tolist()
            encode = _kv_str if col.dtype == object else _kv_int
            cache: dict[Any, bytes] = {}
            out = []
            for v in values:
                e = cache.get(v)
                if e is None:
                    e = cache[v] = encode(key, v)
                out.append(e)
            columns.append(out)
    columns.append([_kv_str(_ld(0x0A, b"host"), host)] * len(finals))
    outcome = finals.names("outcome").tolist()
    proto, direction = finals.names("proto").tolist(), finals.names("direction").tolist()
    src, sport, dst, dport = (finals[c].tolist() for c in ("src", "sport", "dst", "dport"))
    comm, pid, end = finals["comm"].tolist(), finals["pid"].tolist(), finals["end_ns"].tolist()
    info = b"\x10" + _varint(SeverityNumber.INFO.value) + _ld(0x1A, b"INFO")
    warn = b"\x10" + _varint(SeverityNumber.WARN.value) + _ld(0x1A, b"WARN")
    tail = b"\x59" + struct.pack("<Q", observed_ns) + _ld(0x62, EVENT_NAME.encode())
    records = []
    for i, attrs in enumerate(zip(*columns, strict=True)):
        body = (f"{proto[i]} {direction[i]} {comm[i] or '?'}/{pid[i]} {format_destination(src[i], sport[i])} -> "
                f"{format_destination(dst[i], dport[i])} {outcome[i]}")
        records.append(_ld(0x12, b"".join((
            b"\x09", struct.pack("<Q", end[i]), warn if outcome[i] in _FAILED_NAMES else info,
            _ld(0x2A, _ld(0x0A, body.encode())), *attrs, tail))))
    resource_pb, scope_pb = _header(resource)
    scope_logs = _ld(0x12, scope_pb + b"".join(records))
    return ExportLogsServiceRequest.FromString(_ld(0x0A, resource_pb + scope_logs))


@functools.lru_cache(maxsize=4)
def _header(resource: Resource) -> tuple[bytes, bytes]:
    """The resource (field 1 of ResourceLogs) and scope (field 1 of ScopeLogs) as the SDK encodes them."""
    request = encode_logs([ReadableLogRecord(LogRecord(), resource, SCOPE)])
    rl = request.resource_logs[0]
    return _ld(0x0A, rl.resource.SerializeToString()), _ld(0x0A, rl.scope_logs[0].scope.SerializeToString())


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement (ten bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte, the length, the bytes."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _kv(key: bytes, any_value: bytes) -> bytes:
    """A ``KeyValue`` in a record's attributes (field 6): the encoded key, then the AnyValue (field 2)."""
    return _ld(0x32, key + _ld(0x12, any_value))


def _kv_int(key: bytes, value: int, *, tag: int = 0x32) -> bytes:
    return _ld(tag, key + _ld(0x12, b"\x18" + _varint(value)))  # AnyValue.int_value


def _kv_str(key: bytes, value: str) -> bytes:
    return _kv(key, _ld(0x0A, value.encode()))  # AnyValue.string_value


class _PeriodReader(MetricReader):
    """A metric reader without a timer: the sender collects it once per period and learns the result."""

    def __init__(self, exporter: MetricExporter, timeout_s: float, max_series: int) -> None:
        # The SDK folds past 2,000 attribute sets per instrument by default; FlowMetrics bounds its keys
        # itself, and each key has up to 8 outcomes (or 2 directions), plus the overflow series.
        limit = 8 * max_series + 64
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation,
                         cardinality_limits={Counter: limit, Histogram: limit})
        self._exporter = exporter
        self._timeout_ms = timeout_s * 1000
        self._shut = False
        self.last: MetricExportResult | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self.last = self._exporter.export(metrics_data, timeout_millis=self._timeout_ms)

    def export_now(self) -> MetricExportResult:
        """Collect and export; the exporter's result (FAILURE when it raised)."""
        self.last = None
        try:
            self.collect(timeout_millis=self._timeout_ms)
        except Exception as exc:  # the SDK's collect raises on timeouts and callback errors
            log.warning("otlp: collecting metrics failed: %s", exc)
            return MetricExportResult.FAILURE
        return self.last if self.last is not None else MetricExportResult.SUCCESS

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if not self._shut:  # once: the exporter's stop may cut it short before the provider's shutdown
            self._shut = True
            self._exporter.shutdown(timeout_millis=timeout_millis)


# gRPC's reconnect backoff grows to 120 s: a receiver (collector) restarted after a few minutes down would get
# no data for up to two minutes more. Capped at 5 s: one connection attempt per 5 s to a down receiver.
_CHANNEL_OPTIONS: Final = cast("tuple[tuple[str, str]]", (("grpc.max_reconnect_backoff_ms", 5000),))


class _FlowLogExporter(OTLPLogExporter):
    """The SDK's OTLP/gRPC log exporter (channel, TLS and headers from OTEL_EXPORTER_OTLP_*, retries with
    backoff, timeout) sending requests ``encode_flow_logs`` built."""

    def _translate_data(self, data: Any) -> ExportLogsServiceRequest:
        assert isinstance(data, ExportLogsServiceRequest)
        return data

    def _count_data(self, data: Any) -> int:
        return sum(len(sl.log_records) for rl in data.resource_logs for sl in rl.scope_logs)

    def send(self, request: ExportLogsServiceRequest) -> LogRecordExportResult:
        """Export one request."""
        result: LogRecordExportResult = self._export(request)  # type: ignore[arg-type]
        return result


class _LastError(logging.Handler):
    """Keeps the SDK exporter's last error message (it returns FAILURE and logs the gRPC status)."""

    def __init__(self, counters: OtlpCounters) -> None:
        super().__init__(logging.ERROR)
        self._counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        self._counters.last_error = record.getMessage()[:300]


class OtlpExporter:
    """A node service and record listener exporting ended flows and flow metrics to an OTLP/gRPC receiver."""

    name = "otlp"

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        host: str,
        labels: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_pending: int = 50_000,
        max_series: int = 1_000,
        chunk: int = 1_000,
    ) -> None:
        """Args:
            url: ``parse_otlp_url``'s form.
            node_id, host: the node's id and host name, on every record and in the resource.
            timeout: seconds one export request may take, the SDK's retries included.
            max_pending: ended flows waiting to be sent at most; past that the oldest are dropped.
            max_series: endpoint keys with series of their own (``FlowMetrics``).
            chunk: log records per request.
        """
        self.url = parse_otlp_url(url)
        self.node_id, self.host = node_id, host
        self.timeout = timeout
        self.max_pending = max_pending
        self.chunk = chunk
        self.counters = OtlpCounters()
        attrs: dict[str, Any] = {"service.name": "meshnode", "service.version": __version__,
                                 "service.instance.id": node_id, "host.name": host}
        attrs.update({f"meshnode.label.{k}": v for k, v in (labels or {}).items()})
        self.resource = Resource.create(attrs)
        self._max_series = max_series
        self._lock = threading.Condition()
        self._inbox: collections.deque[tuple[int, FlowBatch]] = collections.deque()
        self._outbox: collections.deque[tuple[int, FlowBatch]] = collections.deque()
        self._inbox_n = 0
        self._outbox_n = 0
        self._busy_n = 0
        """Flows a thread has taken from a queue and not yet passed on or counted."""
        self._metrics_due = False
        self._recording = False
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._handler = _LastError(self.counters)
        self.provider: MeterProvider | None = None
        self.metrics: FlowMetrics | None = None
        self._reader: _PeriodReader | None = None
        self._logs: _FlowLogExporter | None = None

    # -- the node's side (event loop) ---------------------------------------------------------------------

    def on_period(self, summary: PeriodSummary, records: FlowBatch) -> None:
        """A record listener: select the period's ended flows (numpy) and queue them; no SDK call, no I/O."""
        finals = records.take(records["kind"] == _FINAL) if records else records
        with self._lock:
            if self._closing:
                self.counters.records_dropped += len(finals)
                self.counters.flows_unrecorded += len(finals)
                return
            self._inbox.append((summary.period_end_ns, finals))
            self._inbox_n += len(finals)
            self._trim()
            self._lock.notify_all()

    @property
    def pending(self) -> int:
        """Ended flows received and not yet counted as exported, failed or dropped."""
        with self._lock:
            return self._inbox_n + self._outbox_n + self._busy_n

    def status(self) -> ExporterStatus:
        """The counters as ``meshctl status`` shows them: records exported, failed (the request failed after
        the SDK's retries), dropped (before an attempt: the queue was full or the node stopped) and pending
        (waiting now); export requests of both signals ok and failed; series folded into overflow."""
        c = self.counters
        return ExporterStatus(name=self.name, target=self.url, last_error=c.last_error, counters={
            "records_exported": c.records_exported, "records_failed": c.records_failed,
            "records_dropped": c.records_dropped, "records_pending": self.pending,
            "requests_ok": c.log_requests_ok + c.metric_exports_ok,
            "requests_failed": c.log_requests_failed + c.metric_exports_failed,
            "metric_exports_ok": c.metric_exports_ok, "metric_exports_failed": c.metric_exports_failed,
            "log_requests_ok": c.log_requests_ok, "log_requests_failed": c.log_requests_failed,
            "flows_folded": c.flows_folded, "flows_unrecorded": c.flows_unrecorded})

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Serve the counters on the node's Prometheus endpoint as ``meshnode_otlp_*``."""
        registry.register(_PromCollector(self))

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the SDK's exporters (no connection is made yet: a receiver that is down is only counted)."""
        insecure = self.url.startswith("http://")
        try:
            metric_exporter = OTLPMetricExporter(endpoint=self.url, insecure=insecure, timeout=self.timeout,
                                                 channel_options=_CHANNEL_OPTIONS)
            self._logs = _FlowLogExporter(endpoint=self.url, insecure=insecure, timeout=self.timeout,
                                          channel_options=_CHANNEL_OPTIONS)
        except Exception as exc:  # bad TLS material in OTEL_EXPORTER_OTLP_* and the like
            raise ConfigError(f"otlp: cannot create the OTLP exporter for {self.url}: {exc}") from exc
        self._reader = _PeriodReader(metric_exporter, self.timeout, self._max_series)
        self.provider = MeterProvider(resource=self.resource, metric_readers=[self._reader])
        self.metrics = FlowMetrics(self.provider, self._max_series)
        logging.getLogger(_EXPORTER_LOGGER).addHandler(self._handler)
        self._threads = [threading.Thread(target=self._record_loop, name="otlp-record", daemon=True),
                         threading.Thread(target=self._send_loop, name="otlp-send", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("otlp: exporting flow metrics and ended flows to %s", self.url)

    async def stop(self) -> None:
        """Send what is queued (the final period's flows too), within about two export timeouts, then stop.
        What is still queued after that is counted as dropped."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        deadline = time.monotonic() + 2 * self.timeout + 5
        for t in self._threads:
            await asyncio.to_thread(t.join, max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads) and self._logs is not None:
            self._logs.shutdown()  # aborts the SDK's retry backoff, so the sender ends now
            if self._reader is not None:
                self._reader.shutdown()
            for t in self._threads:
                await asyncio.to_thread(t.join, 5)
        with self._lock:
            self.counters.records_dropped += self._inbox_n + self._outbox_n
            self.counters.flows_unrecorded += self._inbox_n
            self._inbox.clear()
            self._outbox.clear()
            self._inbox_n = self._outbox_n = 0
        if self.provider is not None:
            self.provider.shutdown()
        if self._logs is not None and not self._logs._shutdown:
            self._logs.shutdown()
        logging.getLogger(_EXPORTER_LOGGER).removeHandler(self._handler)
        c = self.counters
        log.info("otlp: %d ended flows exported, %d failed, %d dropped; %d metric exports, %d failed",
                 c.records_exported, c.records_failed, c.records_dropped, c.metric_exports_ok,
                 c.metric_exports_failed)

    # -- the threads --------------------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop the oldest waiting flows until at most ``max_pending`` wait in all (under the lock): first those
        already in the metrics (waiting to be sent as log records), then those not yet recorded."""
        for queue, count in ((self._outbox, "_outbox_n"), (self._inbox, "_inbox_n")):
            while self._inbox_n + self._outbox_n > self.max_pending and queue:
                excess = self._inbox_n + self._outbox_n - self.max_pending
                end_ns, oldest = queue[0]
                if len(oldest) <= excess:
                    queue.popleft()
                    cut = len(oldest)
                else:
                    queue[0] = (end_ns, oldest.take(np.arange(excess, len(oldest))))
                    cut = excess
                setattr(self, count, getattr(self, count) - cut)
                self.counters.records_dropped += cut
                if queue is self._inbox:
                    self.counters.flows_unrecorded += cut

    def _record_loop(self) -> None:
        assert self.metrics is not None
        while True:
            with self._lock:
                while not self._inbox and not self._closing:
                    self._lock.wait()
                if not self._inbox:  # closing and nothing left
                    self._recording = False
                    self._lock.notify_all()
                    return
                end_ns, finals = self._inbox.popleft()
                self._inbox_n -= len(finals)
                self._busy_n += len(finals)
                self._recording = True
            try:
                self.metrics.record(finals)
            except Exception:  # an SDK error must not stop the export of the flows
                log.exception("otlp: recording flow metrics")
            with self._lock:
                self.counters.flows_folded = self.metrics.folded
                self._recording = False
                self._metrics_due = True
                self._busy_n -= len(finals)
                if finals:
                    self._outbox.append((end_ns, finals))
                    self._outbox_n += len(finals)
                    self._trim()
                self._lock.notify_all()

    def _send_loop(self) -> None:
        assert self._reader is not None
        while True:
            with self._lock:
                while not (self._metrics_due or self._outbox) and not (
                        self._closing and not self._inbox and not self._recording):
                    self._lock.wait()
                if not (self._metrics_due or self._outbox):
                    return  # closing, and everything recorded was sent
                due, self._metrics_due = self._metrics_due, False
                item = self._outbox.popleft() if self._outbox else None
                if item is not None:
                    self._outbox_n -= len(item[1])
                    self._busy_n += len(item[1])
            if due:
                ok = self._reader.export_now() is MetricExportResult.SUCCESS
                with self._lock:
                    if ok:
                        self.counters.metric_exports_ok += 1
                    else:
                        self.counters.metric_exports_failed += 1
            if item is not None:
                try:
                    self._send_logs(*item)
                finally:
                    with self._lock:
                        self._busy_n -= len(item[1])

    def _send_logs(self, end_ns: int, finals: FlowBatch) -> None:
        assert self._logs is not None
        failed = False
        for start in range(0, len(finals), self.chunk):
            part = finals.take(np.arange(start, min(start + self.chunk, len(finals))))
            if failed:  # the receiver just failed a request: the rest of the period fails without waiting
                with self._lock:
                    self.counters.records_failed += len(part)
                continue
            try:
                request = encode_flow_logs(part, node_id=self.node_id, host=self.host, resource=self.resource,
                                           observed_ns=end_ns)
                result = self._logs.send(request)
            except Exception as exc:  # an encoding error fails this request, not the exporter
                log.warning("otlp: exporting %d ended flows: %s", len(part), exc)
                self.counters.last_error = f"encoding ended flows: {exc}"
                result = LogRecordExportResult.FAILURE
            with self._lock:
                if result is LogRecordExportResult.SUCCESS:
                    self.counters.records_exported += len(part)
                    self.counters.log_requests_ok += 1
                else:
                    failed = True
                    self.counters.records_failed += len(part)
                    self.counters.log_requests_failed += 1


class _PromCollector:
    """``meshnode_otlp_*`` read from the exporter's counters at scrape time (one source for status and
    Prometheus)."""

    def __init__(self, exporter: OtlpExporter) -> None:
        self._exporter = exporter

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        c = self._exporter.counters
        records = CounterMetricFamily("meshnode_otlp_records", "Ended flows sent to the OTLP receiver as log "
                                      "records, by result: exported, failed (the request failed after the "
                                      "SDK's retries), dropped (the queue was full or the node stopped).",
                                      labels=["result"])
        for result, n in (("exported", c.records_exported), ("failed", c.records_failed),
                          ("dropped", c.records_dropped)):
            records.add_metric([result], n)
        requests = CounterMetricFamily("meshnode_otlp_requests", "OTLP export requests, by signal and result.",
                                       labels=["signal", "result"])
        for signal, result, n in (("logs", "ok", c.log_requests_ok), ("logs", "failed", c.log_requests_failed),
                                  ("metrics", "ok", c.metric_exports_ok),
                                  ("metrics", "failed", c.metric_exports_failed)):
            requests.add_metric([signal, result], n)
        folded = CounterMetricFamily("meshnode_otlp_flows_folded", "Ended flows counted in an OTLP overflow "
                                     "series (otel.metric.overflow) because the series limit was reached.")
        folded.add_metric([], c.flows_folded)
        pending = GaugeMetricFamily("meshnode_otlp_pending_records", "Ended flows waiting to be sent over OTLP.")
        pending.add_metric([], self._exporter.pending)
        return [records, requests, folded, pending]

