"""The ClickHouse exporter's send logic against a scripted client: what it asks and inserts, and when.

The real server's behaviour is proven in tests/integration/test_clickhouse_export.py; here, the decisions:
check before a resend, insert only the missing rows, plain inserts once a send succeeded, finals only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshnode._batch import FlowBatch
from meshnode.export import ClickHouseExporter, parse_clickhouse_url
from meshnode.export._clickhouse import COLUMNS, add_columns_sql, decode_batch, encode_batch, insert_columns
from tests.unit._flows import T0, flow


class ScriptedClient:
    """Answers SELECT row ... with ``present``; fails the next INSERT when ``fail_next``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.present: list[int] = []
        self.fail_next: Exception | None = None

    def execute(self, sql: str, params: Any = None, **_kw: Any) -> Any:
        if "system.columns" in sql:  # the table has every column (a table this meshnode made): not recorded
            return [(name,) for name, _type in COLUMNS]
        self.calls.append((sql.split()[0] + (" row" if sql.startswith("SELECT row") else ""), params))
        if sql.startswith("SELECT row"):
            return [(r,) for r in self.present]
        if sql.startswith("INSERT") and self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return []

    def disconnect(self) -> None:
        self.calls.append(("disconnect", None))


def exporter(tmp_path: Path, client: ScriptedClient) -> ClickHouseExporter:
    return ClickHouseExporter(parse_clickhouse_url("clickhouse://127.0.0.1:9000/net"), tmp_path, 1 << 20,
                              node_id=lambda: "n1", host="h1", client=lambda _t: client)  # type: ignore[arg-type,return-value]


def inserted_rows(call: tuple[str, Any]) -> list[int]:
    assert call[0] == "INSERT"
    return list(call[1][3])  # the row column


def test_first_batch_after_a_start_is_checked_and_only_missing_rows_go(tmp_path: Path) -> None:
    client = ScriptedClient()
    client.present = [0, 1]  # a previous run's insert of this batch got this far... or all of a smaller block
    ex = exporter(tmp_path, client)
    ex._spool(FlowBatch.from_records([flow(i) for i in range(5)]), "n1", T0)
    ex._spool(FlowBatch.from_records([flow(10 + i) for i in range(3)]), "n1", T0 + 10)
    ex._drain(deadline=None)
    kinds = [c[0] for c in client.calls]
    assert kinds == ["CREATE", "CREATE", "SELECT row", "INSERT", "INSERT"]  # the second batch: no check
    assert client.calls[2][1]["batch"] == T0 and client.calls[2][1]["node"] == "n1"
    assert client.calls[2][1]["first"] == (T0 + 0 * 10**9) // 10**9
    assert inserted_rows(client.calls[3]) == [2, 3, 4]
    assert inserted_rows(client.calls[4]) == [0, 1, 2]
    c = ex.status().counters
    assert (c["sent_batches"], c["sent_rows"], c["resent_rows_skipped"], c["queued_batches"]) == (2, 8, 2, 0)


def test_a_failed_insert_keeps_the_batch_and_the_retry_checks_first(tmp_path: Path) -> None:
    client = ScriptedClient()
    ex = exporter(tmp_path, client)
    ex._spool(FlowBatch.from_records([flow(i) for i in range(4)]), "n1", T0)
    ex._drain(deadline=None)  # checked (start), inserted
    client.calls.clear()
    ex._spool(FlowBatch.from_records([flow(i) for i in range(3)]), "n1", T0 + 10)
    client.fail_next = EOFError("Unexpected EOF while reading bytes")
    ex._drain(deadline=None)
    st = ex.status()
    assert [c[0] for c in client.calls] == ["INSERT", "disconnect"]
    assert (st.counters["send_failures"], st.counters["queued_batches"], st.counters["sent_batches"]) == (1, 1, 1)
    assert st.last_error == "EOFError: Unexpected EOF while reading bytes"
    client.calls.clear()
    client.present = [0, 1, 2]  # it had arrived after all
    ex._retry_at = 0.0
    ex._drain(deadline=None)
    assert [c[0] for c in client.calls] == ["CREATE", "CREATE", "SELECT row"]  # nothing inserted again
    st = ex.status()
    assert (st.counters["sent_batches"], st.counters["resent_rows_skipped"], st.last_error) == (2, 3, "")


def test_only_final_records_are_exported_and_empty_periods_make_no_batch(tmp_path: Path) -> None:
    client = ScriptedClient()
    ex = exporter(tmp_path, client)
    mixed = FlowBatch.from_records([flow(1), flow(2, kind="interim"), flow(3)])
    ex._spool(mixed, "n1", T0)
    ex._spool(FlowBatch.from_records([flow(4, kind="interim")]), "n1", T0 + 10)
    assert ex.status().counters["queued_batches"] == 1
    ex._drain(deadline=None)
    insert = next(c for c in client.calls if c[0] == "INSERT")
    assert inserted_rows(insert) == [0, 1]
    assert insert[1][17] == [100, 100]  # bytes_tx of flows 1 and 3 (column 17 in table order)


def test_exporters_share_one_set_of_metric_families_per_registry() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from meshnode.api import ExporterStatus
    from meshnode.export import register_exporter

    registry = CollectorRegistry()
    counts = {"sent_batches": 3, "sent_rows": 120, "dropped_batches": 1, "dropped_rows": 7, "queued_batches": 2,
              "queued_rows": 50, "queued_bytes": 4096, "send_failures": 4}
    register_exporter(registry, lambda: ExporterStatus("clickhouse", "clickhouse://h:9000/net", dict(counts)))
    register_exporter(registry, lambda: ExporterStatus("otlp", "http://h:4317", {"sent_rows": 9}))  # no clash
    text = generate_latest(registry).decode()
    for line in ('meshnode_export_batches_total{exporter="clickhouse",result="sent"} 3.0',
                 'meshnode_export_rows_total{exporter="clickhouse",result="dropped"} 7.0',
                 'meshnode_export_queued_rows{exporter="clickhouse"} 50.0',
                 'meshnode_export_queued_bytes{exporter="clickhouse"} 4096.0',
                 'meshnode_export_send_failures_total{exporter="clickhouse"} 4.0',
                 'meshnode_export_rows_total{exporter="otlp",result="sent"} 9.0',
                 'meshnode_export_rows_total{exporter="otlp",result="dropped"} 0.0'):
        assert line in text, line
    counts["sent_rows"] = 200  # read at scrape time: no second count to drift
    assert 'meshnode_export_rows_total{exporter="clickhouse",result="sent"} 200.0' in generate_latest(registry).decode()


def test_a_dead_exporter_thread_counts_later_periods_as_dropped(tmp_path: Path) -> None:
    import asyncio
    from dataclasses import dataclass

    @dataclass
    class Summary:
        period_end_ns: int

    def broken(_began: float) -> None:
        raise RuntimeError("a bug")

    ex = exporter(tmp_path, ScriptedClient())
    ex._loop = broken  # type: ignore[method-assign]

    async def run() -> None:
        await ex.start()
        assert ex._thread is not None
        ex._thread.join(5)
        ex.on_period(Summary(T0), FlowBatch.from_records([flow(1), flow(2), flow(3, kind="interim")]))  # type: ignore[arg-type]
        await ex.stop()

    asyncio.run(run())
    st = ex.status()
    assert (st.counters["dropped_batches"], st.counters["dropped_rows"]) == (1, 2)
    assert st.last_error == "the exporter stopped: RuntimeError: a bug"
    assert ex._pending == []


def test_a_table_made_before_remote_name_gains_the_column_and_old_spooled_batches_insert_empty_names() -> None:
    old = [name for name, _type in COLUMNS if name != "remote_name"]
    assert add_columns_sql("net", old) == ["ALTER TABLE `net`.`flows` ADD COLUMN `remote_name` String"]
    assert add_columns_sql("net", [name for name, _type in COLUMNS]) == []
    doc = decode_batch(encode_batch(FlowBatch.from_records([flow(1, remote_name="db.example"), flow(2)]), "n1",
                                    "h1", T0))
    at = [name for name, _type in COLUMNS].index("remote_name")
    assert insert_columns(doc)[at] == ["db.example", ""]
    del doc["columns"]["remote_name"]  # as an older meshnode spooled it
    assert insert_columns(doc)[at] == ["", ""]


def test_timing_and_icmp_fields_are_columns_and_a_table_from_before_them_gains_them_in_order() -> None:
    before = [name for name, _type in COLUMNS][:[name for name, _type in COLUMNS].index("delivery_rate")]
    added = add_columns_sql("net", before)
    assert [sql.split("`")[5] for sql in added] == [
        "delivery_rate", "lost", "first_byte_us", "responses", "response_us_sum", "response_us_max", "answer_us_sum",
        "icmp_unreachable", "icmp_unreachable_code", "icmp_frag_needed", "path_mtu", "icmp_time_exceeded",
        "attempts", "ports_probed"]
    rec = flow(1, responses=3, response_us_sum=600_000, response_us_max=250_000, answer_us_sum=590_000,
               first_byte_us=210_000, icmp_frag_needed=2, path_mtu=1280, delivery_rate=125_000, lost=1)
    doc = decode_batch(encode_batch(FlowBatch.from_records([rec]), "n1", "h1", T0))
    names = [name for name, _type in COLUMNS]
    got = {n: insert_columns(doc)[names.index(n)][0] for n in (
        "responses", "response_us_sum", "response_us_max", "answer_us_sum", "first_byte_us", "icmp_frag_needed",
        "path_mtu", "delivery_rate", "lost", "attempts")}
    assert got == {"responses": 3, "response_us_sum": 600_000, "response_us_max": 250_000, "answer_us_sum": 590_000,
                   "first_byte_us": 210_000, "icmp_frag_needed": 2, "path_mtu": 1280, "delivery_rate": 125_000,
                   "lost": 1, "attempts": 0}
