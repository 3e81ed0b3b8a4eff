"""Prometheus metrics: OpenTelemetry-style label names and what one period adds."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from meshnode.metrics import MetricsServer, NodeMetrics
from meshnode.sensor import Completeness
from tests.unit._flows import flow
from tests.unit._node import running_node


def test_period_metrics_use_otel_label_names() -> None:
    m = NodeMetrics()
    m.observe_period([flow(1), flow(2, outcome="refused"), flow(3, proto="udp", outcome="udp_answered")],
                     {"tcp": (200, 4000), "udp": (0, 10)}, {"lost_events": 2, "map_evictions": 0})
    m.set_store(size=4096, rows=3, evictions=1, incomplete=0)
    text = generate_latest(m.registry).decode()
    assert 'meshnode_flows_total{flow_direction="outbound",network_transport="tcp",outcome="refused"} 1.0' in text
    assert 'meshnode_flows_total{flow_direction="outbound",network_transport="udp",outcome="udp_answered"} 1.0' \
        in text
    assert 'meshnode_flow_bytes_total{network_io_direction="transmit",network_transport="tcp"} 200.0' in text
    assert 'meshnode_flow_bytes_total{network_io_direction="receive",network_transport="udp"} 10.0' in text
    assert 'meshnode_sensor_completeness_total{counter="lost_events"} 2.0' in text
    assert 'counter="map_evictions"' not in text  # zero counters are not invented
    assert "meshnode_periods_total 1.0" in text and "meshnode_store_bytes 4096.0" in text
    assert "meshnode_store_evictions 1.0" in text


def test_node_updates_metrics_and_serves_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_node(tmp_path) as h:
            h.sensor.add_completeness(Completeness(ringbuf_overruns=5))
            long = flow(9, kind="interim", bytes_tx=1000, bytes_rx=50)
            await h.period(flow(1), active=[long])
            await h.period(active=[long.replace(bytes_tx=1500, bytes_rx=80)])
            server = MetricsServer("127.0.0.1:0", h.node.metrics)
            await server.start()
            try:
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
                )
            finally:
                await server.stop()
            text = body.decode()
            # bytes per period: flow 1 (100 tx) + the long flow's 1000 then 500 more
            assert 'meshnode_flow_bytes_total{network_io_direction="transmit",network_transport="tcp"} 1600.0' \
                in text
            assert 'meshnode_sensor_completeness_total{counter="ringbuf_overruns"} 5.0' in text
            assert "meshnode_periods_total 2.0" in text and "meshnode_active_flows 1.0" in text
            assert "meshnode_store_rows 1.0" in text

    asyncio.run(main())
