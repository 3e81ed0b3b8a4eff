"""Prometheus metrics: OpenTelemetry-style label names and what one period adds."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from meshnode._exceptions import ConfigError
from meshnode.daemon import load_config
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
    # a zero counter has its series from the start, so that an alert on its increase has something to read
    assert 'meshnode_sensor_completeness_total{counter="map_evictions"} 0.0' in text
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
            # per service: the long flow's connection counted once across both periods, its bytes per period
            https = 'flow_direction="outbound",network_transport="tcp",service="https"'
            assert f"meshnode_service_connections_total{{{https}}} 2.0" in text
            assert 'meshnode_service_bytes_total{flow_direction="outbound",network_io_direction="transmit",' \
                   'network_transport="tcp",service="https"} 1600.0' in text
            assert 'meshnode_process_rtt_seconds_count{flow_direction="outbound",process="curl"} 3.0' in text
            assert "process_resident_memory_bytes " in text

    asyncio.run(main())


def test_metrics_top_k_settings_are_config_keys() -> None:
    cfg = load_config({"metrics_services": "7"}, environ={"MESHNODE_METRICS_PROCESSES": "0"})
    assert (cfg.metrics_services, cfg.metrics_processes) == (7, 0)
    with pytest.raises(ConfigError,
                       match=r"metrics_services: .*out of range \[0, 10000\] \(from flag --metrics-services\)"):
        load_config({"metrics_services": "20000"}, environ={})
    with pytest.raises(ConfigError, match=r"metrics_processes: 'many' is not a whole number"):
        load_config({}, environ={"MESHNODE_METRICS_PROCESSES": "many"})
