"""The ClickHouse export against a real clickhouse-server (Debian's 18.16), started by the test on loopback.

What the table holds must equal what the exporter was given, to the byte: through a server restart, and
after a send whose outcome was lost (the rows are in the table, the acknowledgement never came).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.export import ClickHouseExporter, parse_clickhouse_url
from meshnode.export._clickhouse import ClickHouseTarget, default_client
from tests._support.clickhouse import ClickHouseServer

S = 1_000_000_000
T0 = 1_765_000_000 * S
SELECT = ("SELECT node_id, host, batch, row, src, sport, dst, dport, proto, direction, pid, comm, thread, cgroup, "
          "netns, start_ns, end_ns, bytes_tx, bytes_rx, packets_tx, packets_rx, outcome, retransmits, srtt_us, "
          "min_rtt_us, cwnd, limited_by, service, connect_us, toString(end_time) FROM meshnode.flows "
          "ORDER BY batch, row")


@pytest.fixture
def server() -> Iterator[ClickHouseServer]:
    srv = ClickHouseServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@dataclass
class Summary:
    period_end_ns: int


def period_flows(period: int, n: int) -> list[FlowRecord]:
    """``n`` flows that ended in period ``period``, every field distinct enough to catch a swapped column."""
    out = []
    for i in range(n):
        end = T0 + period * 10 * S + i * 1000 + 7
        udp = i % 3 == 2
        out.append(FlowRecord(
            flow_id=period * 1000 + i, src="10.0.0.1" if i % 2 else "fd00::1", sport=30000 + i,
            dst=f"10.9.{period}.{i % 250}" if i % 2 else "fd00::9", dport=53 if udp else 443 + i,
            proto="udp" if udp else "tcp", direction="inbound" if i % 4 == 1 else "outbound", pid=4000 + i,
            comm=f"app-{i % 5}", thread="worker" if i % 5 == 0 else "", cgroup="/system.slice/app.service",
            netns=4026531840 + i, start_ns=end - 5 * S, end_ns=end, bytes_tx=(2**33 + i) if i == 3 else 100 * i,
            bytes_rx=7 * i + 1, packets_tx=i + 2, packets_rx=i + 3,
            outcome="udp_answered" if udp else ("refused" if i % 7 == 4 else "established"), retransmits=i % 4,
            srtt_us=900 + i, min_rtt_us=800 + i, cwnd=10 + i, limited_by="congestion" if i % 6 == 0 else "app",
            service="dns" if udp else "https", connect_us=300 + i, kind="final"))
    return out


def expected_rows(node_id: str, host: str, periods: dict[int, list[FlowRecord]]) -> list[tuple[Any, ...]]:
    rows = []
    for period, flows in sorted(periods.items()):
        batch = T0 + period * 10 * S + 10 * S
        for i, f in enumerate(flows):
            rows.append((node_id, host, batch, i, f.src, f.sport, f.dst, f.dport, f.proto, f.direction, f.pid,
                         f.comm, f.thread, f.cgroup, f.netns, f.start_ns, f.end_ns, f.bytes_tx, f.bytes_rx,
                         f.packets_tx, f.packets_rx, f.outcome, f.retransmits, f.srtt_us, f.min_rtt_us, f.cwnd,
                         f.limited_by, f.service, f.connect_us,
                         time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.end_ns // S))))
    return rows


def feed(exporter: ClickHouseExporter, period: int, flows: list[FlowRecord]) -> None:
    """What the node does at a period's end: finals and interims in one batch (the exporter keeps finals)."""
    interim = FlowRecord(flow_id=99, src="10.0.0.1", sport=1, dst="10.0.0.2", dport=2, proto="tcp",
                         direction="outbound", kind="interim", bytes_tx=12345)
    exporter.on_period(Summary(T0 + period * 10 * S + 10 * S),  # type: ignore[arg-type]
                       FlowBatch.concat([FlowBatch.from_records(flows), FlowBatch.from_records([interim])]))


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class RecordingClient:
    """clickhouse-driver's client, recording the batch of each INSERT (and failing one on demand)."""

    def __init__(self, target: ClickHouseTarget, log: list[int], lose_ack_of: set[int]) -> None:
        self.inner = default_client(target)
        self.log = log
        self.lose_ack_of = lose_ack_of

    def execute(self, sql: str, params: Any = None, **kw: Any) -> Any:
        out = self.inner.execute(sql, params, **kw)
        if sql.startswith("INSERT"):
            batch = params[2][0]
            self.log.append(batch)
            if batch in self.lose_ack_of:  # the rows are in; the caller never hears so
                self.lose_ack_of.discard(batch)
                raise EOFError("Unexpected EOF while reading bytes")
        return out

    def disconnect(self) -> None:
        self.inner.disconnect()


def test_rows_equal_the_exported_flows_to_the_byte(server: ClickHouseServer, tmp_path: Path) -> None:
    periods = {0: period_flows(0, 40), 1: period_flows(1, 1), 2: period_flows(2, 25)}

    async def run() -> ClickHouseExporter:
        exporter = ClickHouseExporter(parse_clickhouse_url(server.url), tmp_path / "spool", 1 << 20,
                                      node_id=lambda: "node-a", host="host-a")
        await exporter.start()
        for period, flows in periods.items():
            feed(exporter, period, flows)
        await exporter.stop()
        return exporter

    exporter = asyncio.run(run())
    assert server.query(SELECT) == expected_rows("node-a", "host-a", periods)
    c = exporter.status().counters
    assert (c["sent_batches"], c["sent_rows"], c["queued_batches"], c["dropped_batches"]) == (3, 66, 0, 0)
    assert exporter.status().last_error == ""
    assert server.query("SELECT engine, sorting_key, partition_key FROM system.tables WHERE database = 'meshnode' "
                        "AND name = 'flows'") == [("MergeTree", "toStartOfHour(end_time), dst, dport, node_id, end_ns",
                                                   "toYYYYMMDD(end_time)")]


def test_export_across_a_clickhouse_restart_arrives_once_and_in_order(server: ClickHouseServer,
                                                                     tmp_path: Path) -> None:
    inserts: list[int] = []
    target = parse_clickhouse_url(server.url)
    periods = {p: period_flows(p, 10 + p) for p in range(8)}

    async def run() -> ClickHouseExporter:
        exporter = ClickHouseExporter(target, tmp_path / "spool", 1 << 20, node_id=lambda: "node-b", host="host-b",
                                      client=lambda t: RecordingClient(t, inserts, set()))  # type: ignore[arg-type,return-value]
        await exporter.start()
        for p in (0, 1):
            feed(exporter, p, periods[p])
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["sent_batches"] == 2, 30, "2 batches")
        await asyncio.to_thread(server.stop)
        for p in range(2, 6):  # the node keeps closing periods while ClickHouse is down
            feed(exporter, p, periods[p])
            await asyncio.sleep(0.3)
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["queued_batches"] == 4, 30,
                                "4 batches queued")
        down = exporter.status()
        assert down.counters["send_failures"] >= 1 and down.last_error
        assert (down.counters["queued_rows"], down.counters["sent_batches"]) == (12 + 13 + 14 + 15, 2)
        await asyncio.to_thread(server.start)
        for p in (6, 7):
            feed(exporter, p, periods[p])
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["sent_batches"] == 8, 60,
                                "all 8 batches sent after the restart")
        await exporter.stop()
        return exporter

    exporter = asyncio.run(run())
    batches = [T0 + p * 10 * S + 10 * S for p in range(8)]
    assert inserts == batches  # in order, each once
    assert server.query(SELECT) == expected_rows("node-b", "host-b", periods)
    c = exporter.status().counters
    assert (c["sent_batches"], c["sent_rows"], c["queued_batches"], c["dropped_batches"]) == (8, sum(
        len(f) for f in periods.values()), 0, 0)
    assert exporter.status().last_error == ""


def test_a_send_whose_acknowledgement_was_lost_is_not_inserted_twice(server: ClickHouseServer,
                                                                    tmp_path: Path) -> None:
    inserts: list[int] = []
    periods = {p: period_flows(p, 20) for p in range(3)}
    lose = {T0 + 1 * 10 * S + 10 * S}  # period 1's rows go in, then the connection breaks

    async def run() -> ClickHouseExporter:
        exporter = ClickHouseExporter(parse_clickhouse_url(server.url), tmp_path / "spool", 1 << 20,
                                      node_id=lambda: "node-c", host="host-c",
                                      client=lambda t: RecordingClient(t, inserts, lose))  # type: ignore[arg-type,return-value]
        await exporter.start()
        for p, flows in periods.items():
            feed(exporter, p, flows)
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["sent_batches"] == 3, 30,
                                "3 batches sent")
        await exporter.stop()
        return exporter

    exporter = asyncio.run(run())
    assert server.query(SELECT) == expected_rows("node-c", "host-c", periods)
    c = exporter.status().counters
    assert (c["send_failures"], c["resent_rows_skipped"], c["sent_rows"]) == (1, 20, 60)
    assert inserts == [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S]  # period 1 was not inserted again


def test_batches_left_on_disk_by_a_stopped_node_are_sent_by_the_next_start(server: ClickHouseServer,
                                                                          tmp_path: Path) -> None:
    url = f"clickhouse://127.0.0.1:{server.tcp_port}/meshnode"
    periods = {p: period_flows(p, 5) for p in range(3)}
    server.stop()

    async def first_run() -> dict[str, int]:
        exporter = ClickHouseExporter(parse_clickhouse_url(url), tmp_path / "spool", 1 << 20,
                                      node_id=lambda: "node-d", host="host-d")
        await exporter.start()
        for p, flows in periods.items():
            feed(exporter, p, flows)
        await exporter.stop()
        return exporter.status().counters

    left = asyncio.run(first_run())
    assert (left["queued_batches"], left["queued_rows"], left["sent_batches"]) == (3, 15, 0)
    server.start()

    async def second_run() -> dict[str, int]:
        exporter = ClickHouseExporter(parse_clickhouse_url(url), tmp_path / "spool", 1 << 20,
                                      node_id=lambda: "node-d", host="host-d")
        await exporter.start()
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["queued_batches"] == 0, 30,
                                "the spool to empty")
        await exporter.stop()
        return exporter.status().counters

    again = asyncio.run(second_run())
    assert (again["sent_batches"], again["sent_rows"], again["resent_rows_skipped"]) == (3, 15, 0)
    assert server.query(SELECT) == expected_rows("node-d", "host-d", periods)


def test_the_event_loop_never_waits_on_an_unreachable_server(tmp_path: Path) -> None:
    # A port on 127.0.0.1 that nothing listens on: every send fails, in the exporter's thread.
    from tests._support.clickhouse import free_port

    url = f"clickhouse://127.0.0.1:{free_port()}/meshnode"
    stalls: list[float] = []

    async def run() -> dict[str, int]:
        exporter = ClickHouseExporter(parse_clickhouse_url(url), tmp_path / "spool", 1 << 20,
                                      node_id=lambda: "node-e", host="host-e")
        await exporter.start()
        batches = [FlowBatch.from_records(period_flows(p, 2000)) for p in range(3)]
        for p, flows in enumerate(batches):
            began = time.monotonic()
            exporter.on_period(Summary(T0 + p * 10 * S + 10 * S), flows)  # type: ignore[arg-type]
            stalls.append(time.monotonic() - began)
            await asyncio.sleep(0.2)
        await asyncio.to_thread(wait_for, lambda: exporter.status().counters["queued_batches"] == 3, 30, "3 queued")
        await exporter.stop()
        return exporter.status().counters

    c = asyncio.run(run())
    assert (c["queued_batches"], c["queued_rows"], c["sent_batches"]) == (3, 6000, 0)
    assert c["send_failures"] >= 1
    assert max(stalls) < 0.05, stalls  # handing 2,000 flows over is a filter and a list append
