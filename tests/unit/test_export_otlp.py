"""OTLP export, the parts without a network: the URL, the config key, attribute names, the bounded metric
series, the log record shape, the bounded queue and the status view."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from meshnode._batch import FlowBatch
from meshnode._exceptions import ConfigError
from meshnode._model import FlowRecord
from meshnode.cli._output import render_text
from meshnode.cli._views import status_view
from meshnode.daemon import load_config
from meshnode.export import FlowMetrics, OtlpExporter, _otlp, encode_flow_logs, parse_otlp_url
from tests._support.otlp import attributes, sdk_log_records


def flow(i: int, **kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(flow_id=i + 1, src="10.0.0.1", sport=40000 + i, dst="10.0.0.2", dport=5432,
                                proto="tcp", direction="outbound", pid=77, comm="psql", start_ns=1_000 + i,
                                end_ns=2_000 + i, bytes_tx=100 + i, bytes_rx=2_000 + i, packets_tx=3,
                                packets_rx=4, outcome="established", retransmits=1, srtt_us=250, connect_us=300,
                                service="postgresql", kind="final")
    base.update(kw)
    return FlowRecord(**base)


class _Period:
    def __init__(self, end_ns: int) -> None:
        self.period_end_ns = end_ns


# -- the URL and the config key ------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "settled"), [
    ("http://127.0.0.1:4317", "http://127.0.0.1:4317"),
    ("http://collector", "http://collector:4317"),
    ("https://collector.example:55680/", "https://collector.example:55680"),
    ("http://[::1]:4317", "http://[::1]:4317"),
    (" http://localhost:9 ", "http://localhost:9"),
])
def test_urls_accepted(given: str, settled: str) -> None:
    assert parse_otlp_url(given) == settled


@pytest.mark.parametrize(("given", "says"), [
    ("127.0.0.1:4317", "is not a URL: write the scheme"),
    ("grpc://127.0.0.1:4317", "scheme 'grpc' is not OTLP/gRPC's; use http:// or https://"),
    ("ftp://x", "scheme 'ftp'"),
    ("http://127.0.0.1:4318/v1/logs", "OTLP/gRPC takes no path or query"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://127.0.0.1:abc", "Port could not be cast"),
    ("http://:4317", "names no host"),
    ("http://u:p@collector:4317", "credentials in the URL"),
    ("http://127.0.0.1:0", "port 0"),
])
def test_bad_urls_say_what_is_wrong(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. http://127\.0\.0\.1:4317|OTEL_EXPORTER_OTLP_HEADERS") as err:
        parse_otlp_url(given)
    assert says in str(err.value)


def test_otlp_from_flag_env_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "m.toml"
    conf.write_text('otlp = "http://10.1.1.1:4317"\n')
    assert load_config({}, {"HOME": str(tmp_path)}).otlp == ""
    assert load_config({}, {"MESHNODE_CONFIG": str(conf)}).otlp == "http://10.1.1.1:4317"
    assert load_config({}, {"MESHNODE_CONFIG": str(conf), "MESHNODE_OTLP": "http://c"}).otlp == "http://c:4317"
    assert load_config({"otlp": "https://d:1"}, {"MESHNODE_OTLP": "http://c"}).otlp == "https://d:1"
    assert load_config({"otlp": "off"}, {}).otlp == ""
    with pytest.raises(ConfigError, match=r"^otlp: 'ftp://x': scheme 'ftp' .* \(from flag --otlp\)$"):
        load_config({"otlp": "ftp://x"}, {})
    with pytest.raises(ConfigError, match=r"\(from environment MESHNODE_OTLP\)$"):
        load_config({}, {"MESHNODE_OTLP": "localhost:4317"})


def test_otlp_timeout_is_a_bounded_duration() -> None:
    assert load_config({}, {}).otlp_timeout == 10.0
    assert load_config({}, {"MESHNODE_OTLP_TIMEOUT": "2s"}).otlp_timeout == 2.0
    for bad in ("0", "61s", "soon"):
        with pytest.raises(ConfigError, match=r"^otlp_timeout: .*\(from environment MESHNODE_OTLP_TIMEOUT\)$"):
            load_config({}, {"MESHNODE_OTLP_TIMEOUT": bad})


def test_attribute_names_are_opentelemetry_semantic_conventions() -> None:
    from opentelemetry.semconv._incubating.attributes import process_attributes as proc
    from opentelemetry.semconv.attributes import network_attributes as net

    assert (_otlp.NETWORK_TRANSPORT, _otlp.NETWORK_TYPE, _otlp.NETWORK_PEER_ADDRESS, _otlp.NETWORK_PEER_PORT,
            _otlp.NETWORK_LOCAL_ADDRESS, _otlp.NETWORK_LOCAL_PORT) == (
        net.NETWORK_TRANSPORT, net.NETWORK_TYPE, net.NETWORK_PEER_ADDRESS, net.NETWORK_PEER_PORT,
        net.NETWORK_LOCAL_ADDRESS, net.NETWORK_LOCAL_PORT)
    from opentelemetry.semconv._incubating.attributes import network_attributes as inet

    assert _otlp.NETWORK_IO_DIRECTION == inet.NETWORK_IO_DIRECTION
    assert inet.NetworkIoDirectionValues.TRANSMIT.value == "transmit"
    assert inet.NetworkIoDirectionValues.RECEIVE.value == "receive"
    assert _otlp.PROCESS_EXECUTABLE_NAME == proc.PROCESS_EXECUTABLE_NAME


# -- metrics ---------------------------------------------------------------------------------------------

def _collect(reader: InMemoryMetricReader) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {frozenset((p.attributes or {}).items()): p for p in m.data.data_points}
    return out


def test_metrics_keyed_by_service_end_and_exact() -> None:
    reader = InMemoryMetricReader()
    metrics = FlowMetrics(MeterProvider(metric_readers=[reader]), max_series=10)
    flows = [flow(0), flow(1, outcome="refused", bytes_tx=0, bytes_rx=0, srtt_us=0, connect_us=0, retransmits=2),
             # inbound: keyed by the local listener, not by the client's address or port
             flow(2, src="10.0.0.1", sport=8080, dst="10.9.9.9", dport=51000, direction="inbound", comm="nginx",
                  service="http", connect_us=0),
             flow(3, src="10.0.0.1", sport=8080, dst="10.9.9.8", dport=51001, direction="inbound", comm="nginx",
                  service="http", connect_us=0),
             flow(4, proto="udp", dst="10.0.0.53", dport=53, service="domain", comm="resolved",
                  outcome="udp_answered", srtt_us=0, connect_us=0, retransmits=0)]
    metrics.record(FlowBatch.from_records(flows))
    got = _collect(reader)
    psql = {"network.transport": "tcp", "network.type": "ipv4", "meshnode.flow.direction": "outbound",
            "network.peer.address": "10.0.0.2", "network.peer.port": 5432, "meshnode.service": "postgresql",
            "process.executable.name": "psql"}
    nginx = {"network.transport": "tcp", "network.type": "ipv4", "meshnode.flow.direction": "inbound",
             "network.local.address": "10.0.0.1", "network.local.port": 8080, "meshnode.service": "http",
             "process.executable.name": "nginx"}
    dns = {"network.transport": "udp", "network.type": "ipv4", "meshnode.flow.direction": "outbound",
           "network.peer.address": "10.0.0.53", "network.peer.port": 53, "meshnode.service": "domain",
           "process.executable.name": "resolved"}

    def key(attrs: dict[str, Any], **more: Any) -> frozenset[tuple[str, Any]]:
        return frozenset({**attrs, **more}.items())

    assert {k: p.value for k, p in got["meshnode.flow.connections"].items()} == {
        key(psql, **{"meshnode.flow.outcome": "established"}): 1,
        key(psql, **{"meshnode.flow.outcome": "refused"}): 1,
        key(nginx, **{"meshnode.flow.outcome": "established"}): 2,
        key(dns, **{"meshnode.flow.outcome": "udp_answered"}): 1,
    }
    assert {k: p.value for k, p in got["meshnode.flow.bytes"].items()} == {
        key(psql, **{"network.io.direction": "transmit"}): 100,
        key(psql, **{"network.io.direction": "receive"}): 2_000,
        key(nginx, **{"network.io.direction": "transmit"}): 102 + 103,
        key(nginx, **{"network.io.direction": "receive"}): 2_002 + 2_003,
        key(dns, **{"network.io.direction": "transmit"}): 104,
        key(dns, **{"network.io.direction": "receive"}): 2_004,
    }
    assert {k: p.value for k, p in got["meshnode.flow.packets"].items()}[
        key(nginx, **{"network.io.direction": "receive"})] == 8
    assert {k: p.value for k, p in got["meshnode.flow.retransmits"].items()} == {key(psql): 3, key(nginx): 2}
    rtt = got["meshnode.flow.rtt"]
    assert {k: p.count for k, p in rtt.items()} == {key(psql): 1, key(nginx): 2}  # no RTT: not observed
    assert rtt[key(psql)].sum == pytest.approx(0.00025)
    assert {k: p.count for k, p in got["meshnode.flow.connect.duration"].items()} == {key(psql): 1}
    assert list(rtt[key(psql)].explicit_bounds) == list(_otlp.RTT_BUCKETS_S)
    assert metrics.folded == 0


def test_series_past_the_limit_fold_into_overflow_and_are_counted() -> None:
    reader = InMemoryMetricReader()
    metrics = FlowMetrics(MeterProvider(metric_readers=[reader]), max_series=3)
    flows = [flow(i, dst=f"10.2.{i // 250}.{i % 250}") for i in range(1_000)]
    metrics.record(FlowBatch.from_records(flows[:500]))
    metrics.record(FlowBatch.from_records(flows[500:]))
    got = _collect(reader)["meshnode.flow.connections"]
    assert len(got) == 4  # three destinations of their own, one overflow series
    overflow = frozenset({"network.transport": "tcp", "meshnode.flow.direction": "outbound",
                          "otel.metric.overflow": True, "meshnode.flow.outcome": "established"}.items())
    assert got[overflow].value == 997
    assert sum(p.value for p in got.values()) == 1_000
    assert metrics.folded == 997
    assert sum(p.value for p in _collect(reader)["meshnode.flow.bytes"].values()) == sum(
        f.bytes_tx + f.bytes_rx for f in flows)


# -- log records -----------------------------------------------------------------------------------------

def test_log_record_per_ended_flow_named_as_the_flow_record() -> None:
    flows = [flow(0, drop_reasons={"NETFILTER_DROP": 2}),
             flow(1, flow_id=(1 << 64) - 1, outcome="timeout", bytes_rx=0)]
    resource = Resource.create({"service.name": "meshnode"})
    request = encode_flow_logs(FlowBatch.from_records(flows), node_id="abc123", host="web1", resource=resource,
                               observed_ns=99)
    [rl] = request.resource_logs
    assert attributes(rl.resource.attributes)["service.name"] == "meshnode"
    [sl] = rl.scope_logs
    assert (sl.scope.name, sl.scope.version) == ("meshnode.export", _otlp.SCOPE.version)
    first, second = sl.log_records
    assert attributes(first.attributes) == {**flows[0].to_json(), "node_id": "abc123", "host": "web1"}
    assert [kv.key for kv in first.attributes] == [*flows[0].to_json(), "host"]
    assert first.time_unix_nano == 2_000 and first.observed_time_unix_nano == 99
    assert first.event_name == "meshnode.flow.ended" and first.severity_text == "INFO"
    assert first.severity_number == SeverityNumber.INFO.value
    assert first.body.string_value == "tcp outbound psql/77 10.0.0.1:40000 -> 10.0.0.2:5432 established"
    # OTLP integers are signed 64-bit: a uint64 identifier keeps its bits, as in the store
    assert attributes(second.attributes)["flow_id"] == -1 and second.severity_text == "WARN"


def test_column_encoder_equals_the_sdks_encoder() -> None:
    odd = [flow(0, comm="", thread="worker-1", src="::1", dst="fe80::1", drop_reasons={"A": 1, "B_Ü": 70_000}),
           flow(1, comm="nöde✓", cgroup="/a b/c", outcome="reset", netns=(1 << 64) - 5, bytes_tx=(1 << 63) + 1),
           flow(2, proto="udp", outcome="udp_unanswered", bytes_rx=0, srtt_us=0, service=""),
           flow(3, direction="inbound", outcome="refused", pid=0, start_ns=0, end_ns=0, limited_by="congestion",
                kind="final", fidelity="polled", delivery_rate=(1 << 64) - 1),
           *[flow(4 + i, dst=f"10.0.{i % 3}.1", comm=("a", "b")[i % 2]) for i in range(40)]]
    batch = FlowBatch.from_records(odd)
    resource = Resource.create({"service.name": "meshnode", "host.name": "h", "meshnode.label.site": "ams1"})
    ours = encode_flow_logs(batch, node_id="id-1", host="h", resource=resource, observed_ns=7)
    sdk = encode_logs(sdk_log_records(batch, node_id="id-1", host="h", resource=resource, observed_ns=7))
    assert ours == sdk
    assert ours.SerializeToString() == sdk.SerializeToString()


def test_listener_queue_is_bounded_and_counts_what_it_drops() -> None:
    exporter = OtlpExporter("http://127.0.0.1:9", node_id="n", host="h", max_pending=250)  # never started
    for p in range(4):
        finals = [flow(p * 100 + i) for i in range(100)]
        interim = flow(999, kind="interim")
        exporter.on_period(_Period(p), FlowBatch.from_records([*finals, interim]))  # type: ignore[arg-type]
    assert exporter.pending == 250
    assert exporter.counters.records_dropped == 150  # the oldest: period 0 whole, half of period 1
    kept = FlowBatch.concat(batch for _, batch in exporter._inbox)
    assert kept["flow_id"].tolist() == list(range(151, 401))
    status = exporter.status()
    assert (status.name, status.target, status.counters["records_pending"], status.counters["records_dropped"]) == (
        "otlp", "http://127.0.0.1:9", 250, 150)


# -- meshctl status ----------------------------------------------------------------------------------------

def test_status_view_shows_exporters() -> None:
    doc = {"node_id": "n1", "host": "", "version": "0.1.0", "uptime_s": 60.0, "insecure": True,
           "listen": "127.0.0.1:7400", "sensor_mode": "ebpf", "fidelity": "exact", "sensor_reason": "",
           "scope": "/", "export_period_s": 10.0, "periods": 6, "active_flows": 2, "store_bytes": 0,
           "store_rows": 0, "data_dir": "/d", "labels": {}, "completeness": {},
           "exporters": [{"name": "otlp", "target": "http://127.0.0.1:4317",
                          "last_error": "Failed to export logs to 127.0.0.1:4317, error code: StatusCode.UNAVAILABLE",
                          "counters": {"records_exported": "12000", "records_failed": "1000", "records_dropped": "0",
                                       "records_pending": "5", "requests_ok": "40", "requests_failed": "2",
                                       "flows_folded": "7"}}]}
    out = render_text(status_view(doc, plain=True), width=80)
    assert textwrap.dedent("""\
        otlp     http://127.0.0.1:4317  exported 12,000 · failed 1,000 · dropped 0 ·
                 pending 5 · requests 40 ok, 2 failed · folded 7 · failing: Failed to
                 export logs to 127.0.0.1:4317, error code: StatusCode.UNAVAILABLE
        """) in out
