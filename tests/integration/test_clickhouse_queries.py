"""The README's ClickHouse queries, run as written against ClickHouse 18.16 on rows the exporter wrote.

Two nodes export a handful of flows that ended a few minutes ago and one that ended two hours ago (which no
"last hour" query may show); each query's answer is checked value for value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.export import ClickHouseExporter, parse_clickhouse_url
from tests._support.clickhouse import ClickHouseServer

README = Path(__file__).resolve().parents[2] / "README.md"
S = 1_000_000_000


def readme_queries() -> list[str]:
    text = README.read_text()
    section = text[text.index("## ClickHouse export"):]
    section = section[:section.index("\n## ", 1)]
    return [q.replace("net.flows", "meshnode.flows") for q in re.findall(r"```sql\n(.*?)```", section, re.S)]


@dataclass
class Summary:
    period_end_ns: int


def f(i: int, comm: str, dst: str, dport: int, outcome: str, end: int, **kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(flow_id=i, src="10.0.0.1", sport=40000 + i, dst=dst, dport=dport, proto="tcp",
                                direction="outbound", pid=100 + i, comm=comm, start_ns=end - S, end_ns=end,
                                outcome=outcome, kind="final")
    base.update(kw)
    return FlowRecord(**base)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseServer, int]]:
    srv = ClickHouseServer()
    try:
        srv.start()
        recent = (time.time_ns() // S - 600) * S  # ten minutes ago, on a whole second
        old = recent - 2 * 3600 * S
        flows = {
            ("node-a", "host-a"): [
                f(1, "curl", "10.1.2.3", 5432, "established", recent, bytes_tx=1000, bytes_rx=5000, retransmits=2,
                  packets_tx=10, service="postgresql", connect_us=400, srtt_us=900, remote_name="db.example",
                  responses=4, response_us_sum=8000, answer_us_sum=6000, response_us_max=3000),
                f(2, "curl", "10.1.2.3", 5432, "refused", recent, packets_tx=1, service="postgresql",
                  remote_name="db.example"),
                f(3, "nginx", "10.9.9.9", 443, "timeout", recent, packets_tx=3, retransmits=3, service="https",
                  remote_name="web.example"),
            ],
            ("node-b", "host-b"): [
                f(4, "java", "10.9.9.9", 443, "established", recent, bytes_tx=100, bytes_rx=100, packets_tx=4,
                  service="https", connect_us=200, srtt_us=500, remote_name="web.example",
                  responses=2, response_us_sum=100_000, answer_us_sum=20_000, response_us_max=60_000),
                f(5, "java", "10.1.2.3", 5432, "refused", recent, packets_tx=1, service="postgresql"),
                f(6, "dig", "10.0.0.53", 53, "udp_unanswered", recent, proto="udp", bytes_tx=40, packets_tx=1,
                  service="dns"),
                f(7, "java", "10.7.7.7", 80, "established", old, bytes_tx=10**9, retransmits=50, packets_tx=10**6,
                  connect_us=99999, service="http", responses=1, response_us_sum=9 * 10**6, response_us_max=9 * 10**6),
            ],
        }

        async def export() -> None:
            for (node_id, host), recs in flows.items():
                exporter = ClickHouseExporter(parse_clickhouse_url(srv.url), tmp_path_factory.mktemp("spool"),
                                              1 << 20, node_id=lambda n=node_id: n, host=host)  # type: ignore[misc]
                await exporter.start()
                exporter.on_period(Summary(recent + S), FlowBatch.from_records(recs))  # type: ignore[arg-type]
                await exporter.stop()
                assert exporter.status().counters["sent_rows"] == len(recs)

        asyncio.run(export())
        yield srv, recent
    finally:
        srv.close()


def test_the_readme_has_the_queries() -> None:
    assert len(readme_queries()) == 8


def run(loaded: tuple[ClickHouseServer, int], n: int) -> list[tuple[Any, ...]]:
    """Query ``n``'s rows, DateTime values as Unix seconds (the driver returns them in the server's zone)."""
    srv, _recent = loaded
    return [tuple(int(v.timestamp()) if isinstance(v, dt.datetime) else v for v in row)
            for row in srv.query(readme_queries()[n])]


def test_top_talkers(loaded: tuple[ClickHouseServer, int]) -> None:
    rows = run(loaded, 0)
    assert rows[:3] == [("host-a", "curl", "10.1.2.3", 5432, 6000, 2), ("host-b", "java", "10.9.9.9", 443, 200, 1),
                        ("host-b", "dig", "10.0.0.53", 53, 40, 1)]
    assert sorted(rows[3:]) == [("host-a", "nginx", "10.9.9.9", 443, 0, 1), ("host-b", "java", "10.1.2.3", 5432, 0, 1)]


def test_failed_connections_by_destination(loaded: tuple[ClickHouseServer, int]) -> None:
    assert run(loaded, 1) == [("10.1.2.3", 5432, "refused", 2, 2), ("10.0.0.53", 53, "udp_unanswered", 1, 1),
                              ("10.9.9.9", 443, "timeout", 1, 1)]


def test_retransmits_by_service(loaded: tuple[ClickHouseServer, int]) -> None:
    assert run(loaded, 2) == [("https", 3, 7, 42.86, 1), ("postgresql", 2, 12, 16.67, 1)]


def test_who_talked_to_a_destination(loaded: tuple[ClickHouseServer, int]) -> None:
    rows = run(loaded, 3)
    assert rows[0] == ("host-a", "curl", "established", 1, 1000, 5000, 900)
    assert sorted(rows[1:]) == [("host-a", "curl", "refused", 1, 0, 0, 0), ("host-b", "java", "refused", 1, 0, 0, 0)]


def test_connect_time_percentiles(loaded: tuple[ClickHouseServer, int]) -> None:
    _srv, recent = loaded
    seconds = recent // S
    bucket = seconds - seconds % 300
    assert run(loaded, 4) == [(bucket, "10.1.2.3", 5432, 1, [400, 400, 400]),
                              (bucket, "10.9.9.9", 443, 1, [200, 200, 200])]


def test_every_node_still_exporting(loaded: tuple[ClickHouseServer, int]) -> None:
    _srv, recent = loaded
    last = recent // S
    assert sorted(run(loaded, 7)) == [("host-a", "node-a", last, 3), ("host-b", "node-b", last, 3)]


def test_failures_by_dns_name(loaded: tuple[ClickHouseServer, int]) -> None:
    assert run(loaded, 5) == [("db.example", "10.1.2.3", 2, 1), ("web.example", "10.9.9.9", 2, 1)]


def test_slow_to_answer_or_slow_to_carry(loaded: tuple[ClickHouseServer, int]) -> None:
    assert run(loaded, 6) == [("10.9.9.9", 443, 2, 50.0, 10.0, 60.0), ("10.1.2.3", 5432, 4, 2.0, 1.5, 3.0)]
