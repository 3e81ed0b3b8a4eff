"""The store: round trips, WAL, one transaction per period, migrations, retention, crash safety."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshnode._exceptions import StoreError
from meshnode.store import SCHEMA_VERSION, FlowQuery, Retention, Store
from meshnode.store._schema import MIGRATIONS
from tests.unit._flows import T0, S, flow


def _all(store: Store, **kw: object) -> list:
    with store.reader() as conn:
        return list(store.query_flows(FlowQuery(**kw), conn))  # type: ignore[arg-type]


def test_round_trip_every_field(tmp_path: Path) -> None:
    rich = flow(7, drop_reasons={"TCP_CSUM": 2}, limited_by="congestion", fidelity="polled", cwnd=10,
                netns=2**64 - 5, cgroup_id=2**63 + 1, service="https", rttvar_us=3, delivery_rate=10**12)
    udp = flow(8, proto="udp", outcome="udp_unanswered", direction="inbound", dst="fe80::1", comm="")
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        stored, nxt, evicted = store.close_period(seq, T0 + 10 * S, [rich, udp], [], "{}")
        assert nxt is None and evicted == 0
        assert [s.record for s in stored] == [rich, udp]
        assert [s.record for s in _all(store)] == [rich, udp]


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db"):
        pass
    conn = sqlite3.connect(tmp_path / "m.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_one_transaction_per_period(tmp_path: Path) -> None:
    """Readers see a period entirely or not at all; a failed period leaves nothing behind."""
    store = Store(tmp_path / "m.db")
    seq = store.open_period(T0)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    _, nxt, _ = store.close_period(seq, T0 + S, [flow(i) for i in range(1, 101)], [flow(500, kind="interim")],
                                   "{}", next_start_ns=T0 + S)
    store._db.set_trace_callback(None)
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
    # closing a period that is not open fails and writes nothing
    with pytest.raises(StoreError, match="not open"):
        store.close_period(seq, T0 + 2 * S, [flow(1000)], [], "{}")
    assert len(_all(store)) == 100
    assert nxt == seq + 1
    store.close()


def test_interim_replaced_then_finalised_nothing_duplicated(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    seq = store.open_period(T0)
    long = flow(1, end_ns=T0 + S, kind="interim", bytes_tx=10)
    _, seq, _ = store.close_period(seq, T0 + S, [], [long], "", next_start_ns=T0 + S)
    _, seq, _ = store.close_period(seq, T0 + 2 * S, [], [long.replace(end_ns=T0 + 2 * S, bytes_tx=20)], "",
                                   next_start_ns=T0 + 2 * S)
    got = _all(store, include_interim=True)
    assert [(r.record.kind, r.record.bytes_tx) for r in got] == [("interim", 20)]
    assert _all(store) == []  # final records only by default
    assert seq is not None
    store.close_period(seq, T0 + 3 * S, [long.replace(kind="final", end_ns=T0 + 3 * S, bytes_tx=30)], [], "")
    got = _all(store, include_interim=True)
    assert [(r.record.kind, r.record.bytes_tx) for r in got] == [("final", 30)]
    store.close()


def test_query_range_equals_and_after(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    seq = store.open_period(T0)
    recs = [flow(i, dport=443 if i % 2 else 80) for i in range(1, 11)]
    store.close_period(seq, T0 + 11 * S, recs, [], "")
    assert [r.record.flow_id for r in _all(store, since_ns=T0 + 3 * S, until_ns=T0 + 5 * S)] == [3, 4, 5]
    odd = _all(store, equals={"dport": [443], "outcome": ["established"]})
    assert [r.record.flow_id for r in odd] == [1, 3, 5, 7, 9]
    after = _all(store, after=odd[2].key, equals={"dport": [443]})
    assert [r.record.flow_id for r in after] == [7, 9]
    store.close()


def _create_v1(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO periods (seq, start_ns, end_ns, state, summary) VALUES (1, 1, 2, 'closed', '')")
    conn.close()


def test_migration_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    _create_v1(path)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [p.seq for p in store.periods()] == [1]
        store.record_address_change(T0, "+10.0.0.9")
        assert store.address_changes() == [T0]


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this meshnode"):
        Store(path)


def test_retention_by_age_counts_evictions(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db", Retention(max_age_s=5.0, max_bytes=0))
    seq = store.open_period(T0)
    _, _, evicted = store.close_period(seq, T0 + 10 * S, [flow(i) for i in range(1, 11)], [], "",
                                       now_ns=T0 + 10 * S)
    # cutoff = T0 + 5 s: flows 1..4 ended before it
    assert evicted == 4
    assert [r.record.flow_id for r in _all(store)] == [5, 6, 7, 8, 9, 10]
    stats = store.stats()
    assert stats.evictions == 4 and stats.rows == 6
    store.close()


def test_retention_by_size_evicts_oldest(tmp_path: Path) -> None:
    limit = 256 * 1024
    store = Store(tmp_path / "m.db", Retention(max_age_s=0, max_bytes=limit))
    seq = store.open_period(T0)
    total_evicted = 0
    fid = 0
    for p in range(20):  # ~1.4 MB of flows by column (distinct values in every row: nothing shrinks to a constant)
        batch = [flow(fid + i, comm=f"proc-{p}", pid=fid + i, bytes_tx=fid + i, bytes_rx=3 * (fid + i),
                      packets_tx=i, srtt_us=7 * i, cwnd=i, cgroup=f"/c{i}") for i in range(1, 1001)]
        fid += 1000
        _, seq, ev = store.close_period(seq, T0 + (p + 1) * S, batch, [], "", next_start_ns=T0 + (p + 1) * S)
        total_evicted += ev
        assert store._live_bytes() <= limit
    rows = _all(store)
    stats = store.stats()
    assert total_evicted > 0 and stats.evictions == total_evicted
    assert len(rows) + total_evicted == 20000 and stats.rows == len(rows)
    ids = [r.record.flow_id for r in rows]
    assert ids == list(range(20001 - len(rows), 20001))  # the newest survive, oldest went first
    store.close()


def test_stale_open_period_becomes_incomplete(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    seq = store.open_period(T0)
    store._db.close()  # as if killed: no close
    store = Store(tmp_path / "m.db")
    assert store.recovered_incomplete == 1
    [row] = store.periods()
    assert row.seq == seq and row.state == "incomplete" and "crash" in row.incomplete_reason
    assert store.stats().incomplete_periods == 1
    store.close()


_WRITER = textwrap.dedent("""
    import sys, time
    from meshnode._dns import DnsBatch
    from meshnode.sensor import EventRecord
    from meshnode.store import Store
    from tests.unit._flows import flow, T0, S
    store = Store(sys.argv[1])
    seq = store.open_period(T0)
    fid = 0
    p = 0
    while True:
        batch = [flow(fid + i) for i in range(1, 501)]
        # the period's DNS transactions and events, in its transaction: all of a period or none
        dns = DnsBatch({"time_ns": [T0 + p * S + i for i in range(50)], "server": ["10.0.0.53"] * 50,
                        "query": [f"q{fid + i}.test" for i in range(50)], "rcode": ["NOERROR"] * 50})
        events = [(fid + i, EventRecord("connect_failed", T0 + p * S, flow(fid + i), 1.0, "refused"))
                  for i in range(1, 21)]
        fid += 500
        p += 1
        _, seq, _ = store.close_period(seq, T0 + p * S, batch, [], "{}", next_start_ns=T0 + p * S, dns=dns,
                                       events=events)
        print(p, fid, flush=True)
        if p >= 5:
            time.sleep(0.002)  # the kill lands mid-period or mid-transaction
""")


def test_sigkill_mid_period_loses_nothing_exported(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line.split()[1])
        if int(line.split()[0]) >= 8:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(path)
    ids = [r.record.flow_id for r in _all(store)]
    assert len(ids) == len(set(ids)), "duplicated records"
    assert len(ids) >= reported and len(ids) % 500 == 0, "lost or torn periods"
    assert ids == list(range(1, len(ids) + 1))
    assert store.stats().dns_rows == 50 * len(ids) // 500, "a period's flows without its DNS transactions"
    assert [e.id for e in store.events()] == [p * 500 + i for p in range(len(ids) // 500) for i in range(1, 21)]
    periods = store.periods(number=1000)
    assert store.recovered_incomplete == 1
    assert periods[0].state == "incomplete"
    assert all(p.state == "closed" for p in periods[1:])
    # the reopened store keeps working
    seq = store.open_period(T0 + 100 * S)
    store.close_period(seq, T0 + 101 * S, [flow(10**9, end_ns=T0 + 101 * S)], [], "")
    assert len(_all(store)) == len(ids) + 1
    store.close()


def test_new_model_fields_get_columns(tmp_path: Path) -> None:
    """A store written before a FlowRecord field existed: the interim table gains the column (zero value) on
    open, and a chunk without the field reads it as its zero value."""
    path = tmp_path / "m.db"
    with Store(path) as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [flow(1, reordering=3)], [], "")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE interim DROP COLUMN reordering")
    (data,) = conn.execute("SELECT data FROM chunks").fetchone()
    head_len = int.from_bytes(data[4:8], "little")
    head = json.loads(data[8:8 + head_len])
    del head["cols"]["reordering"]  # as a chunk written before the field existed
    new_head = json.dumps(head).encode()
    conn.execute("UPDATE chunks SET data = ?",
                 (data[:4] + len(new_head).to_bytes(4, "little") + new_head + data[8 + head_len:],))
    conn.close()
    with Store(path) as store:
        seq = store.open_period(T0 + S)
        store.close_period(seq, T0 + 2 * S, [flow(2, reordering=5)], [flow(3, kind="interim", reordering=4)], "")
        assert [r.record.reordering for r in _all(store, include_interim=True)] == [0, 5, 4]


def test_a_row_store_is_moved_into_chunks_and_renumbered_on_open(tmp_path: Path) -> None:
    """Schema 2 held a row per final flow and enums as the model's tuple indices: on open the rows become
    chunks (keys kept) and every value reads back as written."""
    from meshnode.store._store import encode_row

    path = tmp_path / "m.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmt in (*MIGRATIONS[0], *MIGRATIONS[1]):
        conn.execute(stmt)
    recs = [flow(1), flow(2, outcome="timeout", direction="inbound", proto="udp", limited_by="app"),
            flow(3, outcome="refused", drop_reasons={"NO_SOCKET": 1}, drops=1), flow(4, fidelity="polled")]
    cols = len(encode_row(1, 1, recs[0]))
    for period, (row_id, rec) in ((1, (10, recs[0])), (1, (11, recs[1])), (2, (12, recs[2])), (2, (20, recs[3]))):
        conn.execute(f"INSERT INTO flows VALUES ({', '.join('?' * cols)})", encode_row(row_id, period, rec))
    interim = flow(5, kind="interim", outcome="in_progress", limited_by="unknown")
    conn.execute(f"INSERT INTO interim VALUES ({', '.join('?' * cols)})", encode_row(5, 2, interim))
    for table in ("flows", "interim"):  # what schema 2 held: indices in PROTOS, DIRECTIONS, OUTCOMES, ...
        conn.execute(f"UPDATE {table} SET proto = CASE proto WHEN 6 THEN 0 ELSE 1 END, direction = direction - 1, "
                     "outcome = outcome - 1, kind = kind - 1, fidelity = fidelity - 1, "
                     "limited_by = CASE limited_by WHEN 0 THEN 4 ELSE limited_by - 1 END")
    conn.execute("INSERT INTO periods (seq, start_ns, end_ns, state) VALUES (1, 1, 2, 'closed'), (2, 2, 3, 'closed')")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with Store(path) as store:
        got = _all(store, include_interim=True)
        assert [g.record for g in got] == [*recs, interim]
        assert [g.key[2] for g in got][:4] == [10, 11, 12, 20] and [g.period for g in got][:4] == [1, 1, 2, 2]
        assert store.stats().rows == 4
        seq = store.open_period(T0 + 100 * S)
        store.close_period(seq, T0 + 101 * S, [flow(6, end_ns=T0 + 101 * S)], [], "")
        assert _all(store)[-1].key[2] == 21  # ids go on after the moved rows
        with store.reader() as c:
            assert not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'flows'").fetchone()


def test_writes_from_two_threads_are_serialised(tmp_path: Path) -> None:
    """The address watcher and the node loop write from different threads."""
    import threading

    store = Store(tmp_path / "m.db")
    seq = store.open_period(T0)
    errors: list[BaseException] = []

    def changes() -> None:
        try:
            for i in range(200):
                store.record_address_change(T0 + i, f"+10.0.0.{i % 250}")
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    t = threading.Thread(target=changes)
    t.start()
    for p in range(50):
        _, seq, _ = store.close_period(seq, T0 + (p + 1) * S, [flow(p * 10 + i) for i in range(1, 11)], [], "",
                                       next_start_ns=T0 + (p + 1) * S)
    t.join()
    assert errors == []
    assert len(store.address_changes()) == 200 and store.stats().rows == 500
    store.close()


def test_window_queries_find_long_flows(tmp_path: Path) -> None:
    """The end_ns bound from the longest stored flow never hides a long flow overlapping the window."""
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        long = flow(1, start_ns=T0, end_ns=T0 + 3600 * S)
        short = [flow(i, start_ns=T0 + i * S, end_ns=T0 + i * S + S // 10) for i in range(2, 100)]
        store.close_period(seq, T0 + 3600 * S, [long, *short], [], "")
        got = [r.record.flow_id for r in _all(store, since_ns=T0 + 50 * S, until_ns=T0 + 52 * S)]
        assert got == [50, 51, 52, 1]
    # a store without the bound (older meshnode) gets it computed on open
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    conn.execute("DELETE FROM meta WHERE key = 'max_duration_ns'")
    conn.close()
    with Store(tmp_path / "m.db") as store:
        got = [r.record.flow_id for r in _all(store, since_ns=T0 + 50 * S, until_ns=T0 + 52 * S)]
        assert got == [50, 51, 52, 1]
