"""OTLP export against a receiver on 127.0.0.1 built on opentelemetry-proto's services: what arrives equals what
the node exported, a receiver that is down costs bounded, counted losses, metric series stay bounded, and a
real ``meshnode run --otlp`` (fake sensor, then the eBPF sensor with real loopback HTTP traffic) sends
exactly the flows ``meshctl flows --json`` shows."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.export import OtlpExporter
from tests._support.env import require_kernel
from tests._support.otlp import Receiver

ROOT = Path(__file__).resolve().parents[2]


class _Period:
    def __init__(self, end_ns: int) -> None:
        self.period_end_ns = end_ns


def _flows(period: int, n: int, **kw: Any) -> list[FlowRecord]:
    out = []
    for i in range(n):
        fid = period * 100_000 + i + 1
        inbound = i % 5 == 0
        base: dict[str, Any] = dict(
            flow_id=fid, src="127.0.0.1", sport=8080 if inbound else 30_000 + i % 30_000,
            dst=f"127.0.{i % 7}.{1 + i % 200}", dport=40_000 + i if inbound else (5432, 443, 53)[i % 3],
            proto="udp" if i % 3 == 2 and not inbound else "tcp", direction="inbound" if inbound else "outbound",
            pid=100 + i % 4, comm=("curl", "psql", "nginx", "python3")[i % 4], start_ns=10**18 + fid,
            end_ns=10**18 + fid + 5_000, bytes_tx=1_000 + i, bytes_rx=70_000 + 3 * i, packets_tx=3 + i % 2,
            packets_rx=5, outcome=("established", "refused", "established", "timeout")[i % 4],
            retransmits=i % 3, srtt_us=100 + i, connect_us=200 + i, kind="final", cgroup="/system.slice/x",
            netns=4026531840, drop_reasons={"TCP_CSUM": 1} if i % 50 == 0 else {})
        if base["proto"] == "udp":
            base.update(outcome="udp_answered", srtt_us=0, connect_us=0, retransmits=0)
        base.update(kw)
        out.append(FlowRecord(**base))
    return out


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sum(receiver: Receiver, name: str, **match: Any) -> int:
    return sum(p.as_int for k, p in receiver.points(name).items() if match.items() <= dict(k).items())


def test_received_equals_exported() -> None:
    with Receiver() as receiver:
        exporter = OtlpExporter(receiver.url, node_id="node-abc", host="web1", labels={"site": "ams1"},
                                timeout=30, chunk=700)

        async def run() -> list[FlowRecord]:
            await exporter.start()
            sent: list[FlowRecord] = []
            for p in range(3):
                finals = _flows(p, 1_500)
                interims = _flows(p, 10, kind="interim", flow_id=999_999, outcome="in_progress")
                exporter.on_period(_Period(2 * 10**18 + p), FlowBatch.from_records([*finals, *interims]))  # type: ignore[arg-type]
                sent += finals
                await asyncio.sleep(0.05)
            await exporter.stop()
            return sent

        sent = asyncio.run(run())
        got = receiver.flows()
        assert len(got) == len(sent) == 4_500  # one record per ended flow; interim records are not exported
        assert got == [{**f.to_json(), "node_id": "node-abc", "host": "web1"} for f in sent]
        records = receiver.log_records()
        resource = records[0][0]
        assert {k: resource[k] for k in ("service.name", "service.instance.id", "host.name",
                                         "meshnode.label.site")} == {
            "service.name": "meshnode", "service.instance.id": "node-abc", "host.name": "web1",
            "meshnode.label.site": "ams1"}
        assert [r.time_unix_nano for _, r in records] == [f.end_ns for f in sent]
        assert {r.observed_time_unix_nano for _, r in records[:1_500]} == {2 * 10**18}
        assert [r.severity_text for _, r in records[:4]] == ["INFO", "WARN", "INFO", "WARN"]
        assert records[0][1].event_name == "meshnode.flow.ended"
        assert len(receiver.log_requests) == 3 * 3  # 1,500 per period in requests of 700

        # metrics: cumulative, so the newest points hold the totals of all three periods
        assert _sum(receiver, "meshnode.flow.connections") == 4_500
        for outcome in ("established", "refused", "timeout", "udp_answered"):
            assert _sum(receiver, "meshnode.flow.connections", **{"meshnode.flow.outcome": outcome}) == sum(
                f.outcome == outcome for f in sent)
        assert _sum(receiver, "meshnode.flow.bytes", **{"network.io.direction": "transmit"}) == sum(
            f.bytes_tx for f in sent)
        assert _sum(receiver, "meshnode.flow.bytes", **{"network.io.direction": "receive"}) == sum(
            f.bytes_rx for f in sent)
        assert _sum(receiver, "meshnode.flow.packets") == sum(f.packets_tx + f.packets_rx for f in sent)
        assert _sum(receiver, "meshnode.flow.retransmits") == sum(f.retransmits for f in sent)
        rtt = receiver.points("meshnode.flow.rtt")
        assert sum(p.count for p in rtt.values()) == sum(f.proto == "tcp" for f in sent)
        assert sum(p.count for p in receiver.points("meshnode.flow.connect.duration").values()) == sum(
            f.proto == "tcp" for f in sent)
        # inbound flows are keyed by the local listener: one series per (listener, process), no client ports
        inbound = {dict(k).get("network.local.port") for k in receiver.points("meshnode.flow.connections")}
        assert inbound == {None, 8080}
        c = exporter.counters
        assert (c.records_exported, c.records_failed, c.records_dropped) == (4_500, 0, 0)
        assert c.log_requests_ok == 9 and c.metric_exports_ok >= 1 and c.metric_exports_failed == 0  # periods coalesce
        assert receiver.bytes > 0


def test_receiver_down_is_bounded_counted_and_recovers() -> None:
    port = _free_port()  # nothing listens here until the receiver starts below
    exporter = OtlpExporter(f"http://127.0.0.1:{port}", node_id="n", host="h", timeout=1, max_pending=300)
    highest = 0

    async def feed(periods: range, n: int) -> None:
        nonlocal highest
        for p in periods:
            exporter.on_period(_Period(p), FlowBatch.from_records(_flows(p, n)))  # type: ignore[arg-type]
            highest = max(highest, exporter.pending)
            await asyncio.sleep(0.2)  # a period's recording takes milliseconds: the sender is what falls behind

    async def run() -> None:
        await exporter.start()
        await feed(range(8), 200)
        await asyncio.to_thread(_wait, lambda: exporter.pending == 0, 30, "the queue to empty")
        c = exporter.counters
        assert c.records_exported == 0
        assert c.records_failed + c.records_dropped == 1_600
        assert c.records_dropped > 0 and c.records_failed > 0 and c.log_requests_failed > 0
        assert c.metric_exports_failed > 0
        assert re.match(rf"Failed to export (logs|metrics) to 127\.0\.0\.1:{port}, error code: StatusCode\.",
                        c.last_error), c.last_error
        with Receiver(port) as receiver:
            # the channel reconnects on its own within its reconnect backoff, which the exporter caps at 5 s
            # (+20 % jitter); a request before that fails at once, and this test's exporter (timeout 1 s) does
            # not wait for it
            await asyncio.sleep(6.5)
            await feed(range(8, 9), 100)
            await asyncio.to_thread(_wait, lambda: exporter.counters.records_exported == 100, 30,
                                    "the flows after the receiver came back")
            await exporter.stop()
            assert [f["flow_id"] for f in receiver.flows()] == [8 * 100_000 + i + 1 for i in range(100)]
            # metrics were recorded while the receiver was down: the first export after it carries all (but
            # what the recorder itself could not keep up with, counted apart; none at this pace)
            assert _sum(receiver, "meshnode.flow.connections") == 1_700 - exporter.counters.flows_unrecorded
            assert exporter.counters.flows_unrecorded < 1_600

    asyncio.run(run())
    # never more than max_pending waiting, plus the one period each of the two threads holds, however long
    # the receiver was down
    assert highest <= 300 + 2 * 200


def test_series_stay_bounded_under_ten_thousand_remote_addresses() -> None:
    with Receiver() as receiver:
        exporter = OtlpExporter(receiver.url, node_id="n", host="h", timeout=30)
        registry = CollectorRegistry()
        exporter.register_metrics(registry)
        flows = [FlowRecord(flow_id=i + 1, src="127.0.0.1", sport=20_000 + i % 40_000,
                            dst=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", dport=443, proto="tcp",
                            direction="outbound", comm="scanner", outcome="timeout", kind="final")
                 for i in range(10_000)]

        async def run() -> None:
            await exporter.start()
            exporter.on_period(_Period(1), FlowBatch.from_records(flows))  # type: ignore[arg-type]
            await exporter.stop()

        asyncio.run(run())
        points = receiver.points("meshnode.flow.connections")
        assert len(points) == 1_001  # 1,000 destinations, then one overflow series
        overflow = [p for k, p in points.items() if dict(k).get("otel.metric.overflow") is True]
        assert [p.as_int for p in overflow] == [9_000]
        assert sum(p.as_int for p in points.values()) == 10_000
        assert len(receiver.flows()) == 10_000  # the log records keep every flow
        text = generate_latest(registry).decode()
        assert "meshnode_otlp_flows_folded_total 9000.0" in text
        assert 'meshnode_otlp_records_total{result="exported"} 10000.0' in text
        assert 'meshnode_otlp_records_total{result="dropped"} 0.0' in text


def test_bad_url_is_refused_at_startup(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "diag", "--data-dir",
         str(tmp_path), "--otlp", "127.0.0.1:4317"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("meshnode run: otlp: '127.0.0.1:4317' is not a URL: write the scheme and the "
                           "collector's address, e.g. http://127.0.0.1:4317 (plaintext) or "
                           "https://collector.example:4317 (TLS) (from flag --otlp)\n")
    assert not (tmp_path / "meshnode.db").exists()


# -- a real node ------------------------------------------------------------------------------------------

def _start_node(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", *args],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if m := re.search(r"listening on (\S+),", line):
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
            return proc, m.group(1), lines
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("meshnode run did not start:\n" + "".join(lines))


def _meshctl(node: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "meshnode.cli.main", "--node", node, *args], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_node_exports_what_meshctl_shows_and_reports_it(tmp_path: Path) -> None:
    metrics_port = _free_port()
    with Receiver() as receiver:
        proc, node, log = _start_node(
            ["--sensor", "fake", "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics_port}",
             "--export-period", "1", "--data-dir", str(tmp_path), "--node-id", "host-a"],
            {"MESHNODE_ALLOW_FAKE_SENSOR": "1", "MESHNODE_FAKE_FLOWS_PER_POLL": "5", "MESHNODE_OTLP": receiver.url})
        try:
            _wait(lambda: len(receiver.flows()) >= 20, 30, "flows at the receiver")
            status = json.loads(_meshctl(node, "status", "--json"))
            shown = [json.loads(line) for line in _meshctl(node, "flows", "--since", "10m", "--limit", "100000",
                                                           "--json").splitlines()]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
                prom = resp.read().decode()
        finally:
            _stop(proc)
        got = {f["flow_id"]: f for f in receiver.flows()}
        assert len(got) == len(receiver.flows())  # nothing sent twice
        assert shown and all(f["kind"] == "final" for f in shown)
        for f in shown:  # every flow meshctl shows arrived, field for field, with the node's id and host
            assert got[f["flow_id"]] == {**f, "node_id": status["node_id"], "host": "host-a"}
        [export] = status["exporters"]
        assert export["name"] == "otlp" and export["target"] == receiver.url
        counts = {k: int(v) for k, v in export["counters"].items()}
        assert 0 < counts["records_exported"] <= len(got)
        assert (counts["records_failed"], counts["records_dropped"]) == (0, 0)
        assert 'meshnode_otlp_records_total{result="exported"}' in prom
        assert 'meshnode_otlp_requests_total{result="ok",signal="logs"}' in prom
        final = re.search(r"otlp: (\d+) ended flows exported, 0 failed, 0 dropped", "".join(log))
        assert final and int(final.group(1)) == len(got)  # the last period was sent before the node stopped
        assert _sum(receiver, "meshnode.flow.connections") == len(got)


def test_ebpf_node_exports_real_loopback_flows(tmp_path: Path) -> None:
    require_kernel()
    http_port = _free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "blob").write_bytes(b"z" * 123_457)
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
                               "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _connects(http_port), 20, "the HTTP server")
        with Receiver() as receiver:
            proc, node, _ = _start_node(
                ["--sensor", "ebpf", "--listen", "127.0.0.1:0", "--metrics", "off", "--export-period", "1",
                 "--data-dir", str(tmp_path / "data")], {"MESHNODE_OTLP": receiver.url})
            try:
                for _ in range(3):
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/blob", timeout=10) as resp:
                        assert len(resp.read()) == 123_457
                time.sleep(3)  # > two export periods
                shown = [json.loads(line) for line in _meshctl(
                    node, "flows", "--since", "5m", "--port", str(http_port), "--json").splitlines()]
                status = json.loads(_meshctl(node, "status", "--json"))
            finally:
                _stop(proc)
            mine = [f for f in shown if http_port in (f["sport"], f["dport"])]
            # three connections seen from both ends: the client's outbound and the server's inbound flow
            assert sorted(f["direction"] for f in mine) == ["inbound"] * 3 + ["outbound"] * 3
            assert sorted(f["bytes_rx"] for f in mine if f["direction"] == "outbound")[0] > 123_457
            got = {f["flow_id"]: f for f in receiver.flows() if http_port in (f["sport"], f["dport"])}
            assert len(got) == 6
            for f in mine:
                assert got[f["flow_id"]] == {**f, "node_id": status["node_id"], "host": status["host"]}
            served = _sum(receiver, "meshnode.flow.bytes", **{"network.local.port": http_port,
                                                                "network.io.direction": "transmit"})
            assert served == sum(f["bytes_tx"] for f in mine if f["direction"] == "inbound")
    finally:
        server.terminate()
        server.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_node_with_receiver_down_keeps_running_and_stops_in_bounded_time(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
    proc, node, log = _start_node(
        ["--sensor", "fake", "--listen", "127.0.0.1:0", "--metrics", "off", "--export-period", "1",
         "--data-dir", str(tmp_path), "--otlp", dead],
        {"MESHNODE_ALLOW_FAKE_SENSOR": "1", "MESHNODE_FAKE_FLOWS_PER_POLL": "5", "MESHNODE_OTLP_TIMEOUT": "2s"})
    try:
        export: dict[str, Any] = {}

        def failed() -> bool:
            nonlocal export
            [export] = json.loads(_meshctl(node, "status", "--json"))["exporters"]
            return bool(int(export["counters"].get("records_failed", 0)))

        t0 = time.monotonic()
        _wait(failed, 30, "a failed export (the SDK retries for otlp_timeout, 2 s, first)")
        first_failure = time.monotonic() - t0
        flows = json.loads(_meshctl(node, "health", "--json"))  # the node answers as usual
    finally:
        began = time.monotonic()
        _stop(proc)
        stopped = time.monotonic() - began
    assert flows is not None
    counts = {k: int(v) for k, v in export["counters"].items()}
    assert export["target"] == dead and counts.get("records_exported", 0) == 0
    assert counts["records_failed"] > 0 and counts["requests_failed"] > 0 and counts.get("requests_ok", 0) == 0
    assert "Failed to export" in export["last_error"]
    assert counts.get("records_pending", 0) <= 50_000
    assert first_failure < 2 + 1 + 5  # one timeout, one export period, start-up
    assert stopped < 2 * 2 + 5 + 5  # two export timeouts, then the SDK's retries are cut short
    final = re.search(r"otlp: 0 ended flows exported, (\d+) failed, (\d+) dropped", "".join(log))
    assert final and int(final.group(1)) + int(final.group(2)) >= counts["records_failed"]
