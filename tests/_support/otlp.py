"""An OTLP/gRPC receiver for tests, built on ``opentelemetry-proto``'s service definitions (no collector).

``Receiver`` serves ``MetricsService`` and ``LogsService`` on 127.0.0.1 (port 0 by default, or a given port so
a test can stop it and bring it back on the same address), keeps every request it accepted and their sizes,
and can be told to refuse requests with a status code. ``attributes`` turns OTLP key-values into a dict;
``log_records`` and ``points`` read what arrived. ``sdk_log_records`` makes the SDK's log records of ended
flows, record by record (the oracle of ``meshnode.export.encode_flow_logs``, which builds the request from
the columns).
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource

from meshnode._batch import FlowBatch
from meshnode._model import FAILED_OUTCOMES
from meshnode.export._otlp import EVENT_NAME, SCOPE
from meshnode.summary import format_destination


def value(v: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as plain Python."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {kv.key: value(kv.value) for kv in kvs}


class Receiver(logs_service_pb2_grpc.LogsServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    """A running OTLP/gRPC receiver on 127.0.0.1; ``url`` is what ``--otlp`` takes."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.log_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.bytes = 0
        """Serialized size of every accepted request (what crossed the wire, before gRPC framing)."""
        self.refuse: grpc.StatusCode | None = None
        """When set, every request is answered with this status and not kept."""
        self.refused = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                   options=[("grpc.max_receive_message_length", 64 << 20)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(0).wait(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, request: Any, kept: list[Any], context: grpc.ServicerContext) -> bool:
        with self.lock:
            if self.refuse is not None:
                self.refused += 1
                context.abort(self.refuse, "refused by the test receiver")
            kept.append(request)
            self.bytes += request.ByteSize()
        return True

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            self._take(request, self.log_requests, context)
            return logs_service_pb2.ExportLogsServiceResponse()
        self._take(request, self.metric_requests, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    # -- what arrived -------------------------------------------------------------------------------------

    def log_records(self) -> list[tuple[dict[str, Any], logs_pb2.LogRecord]]:
        """Every log record received, in order, with its resource's attributes."""
        with self.lock:
            requests = list(self.log_requests)
        return [(attributes(rl.resource.attributes), rec)
                for req in requests for rl in req.resource_logs for sl in rl.scope_logs for rec in sl.log_records]

    def flows(self) -> list[dict[str, Any]]:
        """The attributes of every log record received."""
        return [attributes(rec.attributes) for _, rec in self.log_records()]

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The newest data point of metric ``name`` per attribute set (cumulative: the totals so far)."""
        with self.lock:
            requests = list(self.metric_requests)
        out: dict[frozenset[tuple[str, Any]], Any] = {}
        for req in requests:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        if m.name != name or kind is None:
                            continue
                        data = getattr(m, kind)
                        for p in data.data_points:
                            out[frozenset(attributes(p.attributes).items())] = p
        return out

    def metric_names(self) -> set[str]:
        with self.lock:
            requests = list(self.metric_requests)
        return {m.name for req in requests for rm in req.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics}




def sdk_log_records(finals: FlowBatch, *, node_id: str, host: str, resource: Resource,
                    observed_ns: int) -> list[ReadableLogRecord]:
    """The SDK's log records of ended flows, made one by one from ``FlowRecord.to_json`` (the shape
    ``meshctl flows --json`` prints), as the README describes them."""
    out = []
    for rec in finals:
        attrs: dict[str, Any] = {**rec.to_json(), "node_id": node_id, "host": host}
        for name in ("flow_id", "cgroup_id", "netns", "bytes_tx", "bytes_rx", "delivery_rate"):
            attrs[name] = int(np.uint64(attrs[name]).view(np.int64))  # OTLP integers are signed
        failed = rec.outcome in FAILED_OUTCOMES
        body = (f"{rec.proto} {rec.direction} {rec.comm or '?'}/{rec.pid} {format_destination(rec.src, rec.sport)}"
                f" -> {format_destination(rec.dst, rec.dport)} {rec.outcome}")
        record = LogRecord(timestamp=rec.end_ns, observed_timestamp=observed_ns,
                           severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
                           severity_text="WARN" if failed else "INFO", body=body, attributes=attrs,
                           event_name=EVENT_NAME)
        out.append(ReadableLogRecord(record, resource, SCOPE))
    return out
