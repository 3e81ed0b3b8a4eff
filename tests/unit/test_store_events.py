"""The store's low-level events (written with the period's flows, bounded, read back in the order the node saw
them) and its hourly anomaly baselines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshnode._model import EVENT_TYPE_NAMES, EVENT_TYPE_NUMBERS
from meshnode.sensor import EVENT_TYPES, EventRecord
from meshnode.store import FlowQuery, Retention, Store
from meshnode.store import _store as store_module
from meshnode.store._schema import MIGRATIONS
from meshnode.v1 import flow_pb2
from tests.unit._flows import T0, S, flow


def _event(i: int, kind: str = "connect_failed", detail: str = "refused") -> EventRecord:
    f = flow(i, outcome=detail if detail in ("refused", "timeout") else "established", dport=5432)
    return EventRecord(kind, T0 + i * S, f, 1.0, detail)


def test_event_type_numbers_are_the_wire_numbers() -> None:
    wire = {name.lower(): n for name, n in flow_pb2.EventType.items() if n}
    assert wire == EVENT_TYPE_NUMBERS and set(EVENT_TYPES) == set(wire)
    assert all(EVENT_TYPE_NAMES[n] == name for name, n in wire.items())


def test_events_are_written_with_their_period_and_read_back_as_they_were(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store:
        assert store.last_event_id() == 0 and store.events_held_since() == 0
        seq = store.open_period(T0)
        evs = [_event(1), _event(2, detail="timeout"), _event(3, "dns_failed", "NXDOMAIN nope.example A"),
               _event(4, "anomaly", "destination 10.0.0.2:5432: failure rate 100.0 % vs baseline 0.0 %")]
        _, nxt, _ = store.close_period(seq, T0 + 10 * S, [flow(1)], [], "{}", next_start_ns=T0 + 10 * S,
                                       events=list(enumerate(evs, start=7)))
        got = store.events()
        assert [(e.id, e.period) for e in got] == [(7, seq), (8, seq), (9, seq), (10, seq)]
        assert [EventRecord(e.type, e.time_ns, e.flow, e.value, e.detail) for e in got] == evs
        assert store.last_event_id() == 10 and store.events_held_since() == T0
        # since, below an id, the newest n that match; oldest first
        assert [e.id for e in store.events(T0 + 2 * S)] == [8, 9, 10]
        assert [e.id for e in store.events(before_id=9)] == [7, 8]
        assert [e.id for e in store.events(number=2, match=lambda e: e.type == "connect_failed")] == [7, 8]
        assert [e.id for e in store.events(number=1, match=lambda e: e.flow.outcome == "refused")] == [7]
        assert [e.id for e in store.events(types=("anomaly", "dns_failed"))] == [9, 10]
        # a failed period write keeps nothing of it
        assert nxt is not None
        with pytest.raises(Exception, match="not open"):
            store.close_period(seq, T0 + 20 * S, [], [], "{}", events=[(11, _event(11))])
        assert store.last_event_id() == 10


def test_events_are_bounded_and_the_bound_says_what_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_EVENTS", 5)
    with Store(tmp_path / "m.db", Retention(max_age_s=100.0, max_bytes=0)) as store:
        seq = store.open_period(T0)
        _, seq2, evicted = store.close_period(seq, T0 + 10 * S, [], [], "{}", next_start_ns=T0 + 10 * S,
                                              now_ns=T0 + 10 * S, events=[(i, _event(i)) for i in range(1, 9)])
        assert seq2 is not None
        assert evicted == 3 and [e.id for e in store.events()] == [4, 5, 6, 7, 8]
        assert store.events_held_since() == T0 + 3 * S + 1  # event 3 went: what came until it is not all held
        assert store.stats().evictions == 3
        # age: events older than max_age_s go, as flows do
        _, _, evicted = store.close_period(seq2, T0 + 106 * S, [], [], "{}", now_ns=T0 + 106 * S)
        assert evicted == 2 and [e.id for e in store.events()] == [6, 7, 8]
        assert store.events_held_since() == T0 + 5 * S + 1


def test_a_store_from_before_events_says_it_holds_none_from_before(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmts in MIGRATIONS[:5]:
        for stmt in stmts:
            conn.execute(stmt)
    conn.execute("PRAGMA user_version = 5")
    conn.execute("INSERT INTO periods (seq, start_ns, end_ns, state, summary) VALUES (1, ?, ?, 'closed', '')",
                 (T0, T0 + 10 * S))
    conn.close()
    with Store(path) as store:
        assert store.events() == [] and store.events_held_since() == T0 + 10 * S


def test_hour_baselines_are_kept_replaced_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_HOUR_BASELINES", 3)
    hour = 3600 * S
    with Store(tmp_path / "m.db") as store:
        assert store.record_hour_baselines([]) == 0
        store.record_hour_baselines([(T0, "destination", "10.0.0.2:443", '{"flows":200.0}'),
                                     (T0, "process", "curl/7", '{"flows":20.0}')])
        store.record_hour_baselines([(T0, "destination", "10.0.0.2:443", '{"flows":210.0}')])  # replaced
        assert store.hour_baselines() == [(T0, "destination", "10.0.0.2:443", '{"flows":210.0}'),
                                          (T0, "process", "curl/7", '{"flows":20.0}')]
        assert store.record_hour_baselines([(T0 + hour, "destination", "10.0.0.2:443", "{}"),
                                            (T0 + 2 * hour, "destination", "10.0.0.2:443", "{}")]) == 2
        # four rows: the oldest hour's go first (both of them)
        assert [r[0] for r in store.hour_baselines()] == [T0 + hour, T0 + 2 * hour]
        assert [r[0] for r in store.hour_baselines(T0 + hour, T0 + 2 * hour)] == [T0 + hour]


def test_events_count_in_the_size_bound_and_go_with_their_period(tmp_path: Path) -> None:
    """A flood of events (a local process failing connects) must not hold the store over ``max_bytes`` nor
    push every flow out: size retention evicts whole periods oldest first, their events with their flows."""
    limit = 256 * 1024
    with Store(tmp_path / "m.db", Retention(max_age_s=0, max_bytes=limit)) as store:
        seq = store.open_period(T0)
        eid = 0
        for p in range(12):  # ~60 KB of events a period
            evs = [(eid + i, _event(eid + i, detail=f"refused {p}-{i} " + "x" * 40)) for i in range(1, 151)]
            eid += 150
            nxt = T0 + (p + 1) * S
            _, seq, _ = store.close_period(seq, nxt, [flow(p * 10 + i) for i in range(1, 11)], [], "{}",
                                           next_start_ns=nxt, now_ns=nxt, events=evs)
            assert seq is not None
            assert store._live_bytes() <= limit, p
            # the newest period's flows and events are held
            assert len(store.events(T0 + (eid - 149) * S)) == 150
            assert store.stats().rows >= 10
        kept = store.events()
        assert kept and kept[-1].id == eid and [e.id for e in kept] == list(range(kept[0].id, eid + 1))
        assert kept[0].id > 1 and T0 + (kept[0].id - 1) * S < store.events_held_since() <= kept[0].time_ns


def test_a_schema_5_store_upgraded_in_place_keeps_its_data_and_gains_the_new_tables(tmp_path: Path) -> None:
    """A store of the release before DNS transactions, events and hourly baselines (schema 5: flow chunks,
    interim rows, measurements) opens in place: its flows, periods and measurements are still there, and it
    takes DNS transactions, events and baselines."""
    from meshnode._dns import DnsBatch

    path = tmp_path / "m.db"
    with Store(path) as store:
        seq = store.open_period(T0)
        _, seq, _ = store.close_period(seq, T0 + 10 * S, [flow(i) for i in range(1, 6)], [flow(9, kind="interim")],
                                       '{"n":5}', next_start_ns=T0 + 10 * S)
        store.record_measurement(T0 + S, "10.0.0.2:443", b"m1")
    # as schema 5 wrote it: its tables and columns only, holding what the store wrote into them
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmts in MIGRATIONS[:5]:
        for stmt in stmts:
            conn.execute(stmt)
    conn.execute("DROP TABLE flows")  # moved into chunks when a schema-4 store opened
    conn.execute("PRAGMA user_version = 5")
    conn.execute("ATTACH ? AS cur", (str(path),))
    for (table,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'").fetchall():
        cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
        conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM cur.{table}")
    conn.execute("DELETE FROM meta WHERE key = 'events_since_ns'")
    conn.execute("DETACH cur")
    conn.close()
    path = old
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        with store.reader() as conn:
            held = sorted(r.record.flow_id for r in store.query_flows(FlowQuery(include_interim=True), conn))
        assert held == [1, 2, 3, 4, 5, 9]
        assert store.measurements() == ([(1, b"m1")], 0)
        assert [p.seq for p in store.periods()] == [seq, seq - 1]
        assert store.events() == [] and store.events_held_since() == T0 + 10 * S  # none kept before
        dns = DnsBatch({"time_ns": [T0 + 11 * S], "server": ["10.0.0.53"], "query": ["a.test"], "rcode": ["NOERROR"]})
        seq = store.open_period(T0 + 10 * S)  # the open one before the stop is incomplete now
        store.close_period(seq, T0 + 20 * S, [flow(6)], [], "{}", dns=dns, events=[(1, _event(11))])
        assert store.stats().dns_rows == 1 and [e.id for e in store.events()] == [1]
        store.record_hour_baselines([(T0, "process", "curl", "{}")])
        assert store.hour_baselines() == [(T0, "process", "curl", "{}")]
