"""The ``thread`` field (the name of the thread that used the socket where it differs from ``comm``) through
every shape a flow takes: the model and its JSON, the columnar batch, the store (also one written before the
field existed), the wire message and meshctl's views."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord, flow_proto_to_json
from meshnode.cli._convert import FLOW_FIELDS, flow_dict, flow_json_line
from meshnode.cli._flowtext import flows_text
from meshnode.cli._output import render_text
from meshnode.cli._units import process
from meshnode.cli._views import events_table, flows_table
from meshnode.store import FlowQuery, Store
from meshnode.store._schema import missing_columns
from tests.unit._flows import T0, S, flow

DIG = dict(comm="dig", thread="isc-net-0000", pid=42, proto="udp", dport=53, outcome="udp_answered")


def _stored(store: Store) -> list[FlowRecord]:
    with store.reader() as conn:
        return [s.record for s in store.query_flows(FlowQuery(include_interim=True), conn)]


def test_model_json_and_wire_round_trip() -> None:
    rec = flow(1, **DIG)
    doc = rec.to_json()
    assert list(doc)[list(doc).index("comm") + 1] == "thread" and doc["thread"] == "isc-net-0000"
    assert rec.to_json_text() == json.dumps(doc)
    assert FlowRecord.from_json(doc) == rec
    assert flow(2).thread == "" and '"thread": ""' in flow(2).to_json_text()
    msg = rec.to_proto()
    assert msg.thread == "isc-net-0000" and msg.comm == "dig"
    assert FlowRecord.from_proto(msg) == rec
    assert flow_proto_to_json(msg)["thread"] == flow_dict(msg)["thread"] == "isc-net-0000"
    assert list(flow_proto_to_json(msg)) == list(FLOW_FIELDS)
    assert json.loads(flow_json_line(msg)) == flow_proto_to_json(msg)


def test_batch_keeps_thread_as_text() -> None:
    recs = [flow(1, **DIG), flow(2), flow(3, thread='a"b')]
    batch = FlowBatch.from_records(recs)
    assert batch["thread"].dtype == object and batch["thread"].tolist() == ["isc-net-0000", "", 'a"b']
    assert FlowBatch(batch.cols).records() == recs
    assert FlowBatch({"flow_id": [1]}).records()[0].thread == ""


def test_store_round_trip(tmp_path: Path) -> None:
    final, interim = flow(1, **DIG), flow(2, thread="event_engine", kind="interim")
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        stored, _, _ = store.close_period(seq, T0 + 10 * S, [final], [interim], "{}")
        assert sorted((s.record for s in stored), key=lambda r: r.flow_id) == [final, interim]
        assert sorted(_stored(store), key=lambda r: r.flow_id) == [final, interim]


def test_a_store_written_before_the_field_gains_a_text_column(tmp_path: Path) -> None:
    """Old rows read back with an empty thread; new ones keep theirs."""
    assert "ALTER TABLE interim ADD COLUMN thread TEXT NOT NULL DEFAULT ''" in missing_columns("interim", {"comm"})
    path = tmp_path / "m.db"
    old = flow(1, kind="interim")
    with Store(path) as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [], [old], "{}", next_start_ns=T0 + S)
    conn = sqlite3.connect(path, isolation_level=None)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if any(c[1] == "thread" for c in conn.execute(f"PRAGMA table_info({t})"))]
    assert "interim" in tables
    for t in tables:
        conn.execute(f"ALTER TABLE {t} DROP COLUMN thread")
    conn.close()
    with Store(path) as store:
        assert _stored(store) == [old]
        seq = store.open_period(T0 + 2 * S)
        new = flow(3, **DIG)
        store.close_period(seq, T0 + 3 * S, [new], [], "{}")
        assert new in _stored(store)
    conn = sqlite3.connect(path)
    for t in tables:
        cols = {c[1]: (c[2], c[4]) for c in conn.execute(f"PRAGMA table_info({t})")}
        assert cols["thread"] == ("TEXT", "''"), t
    conn.close()


def test_process_cell_shows_the_thread_and_keeps_the_pid() -> None:
    assert process("dig", 4242, thread="isc-net-0000") == "dig[isc-net-0000]/4242"
    assert process("dig", 4242, 20, "isc-net-0000") == "dig[isc-net-0…]/4242"
    assert process("dig", 12345, 14, "isc-net-0000") == "dig[is…]/12345"
    assert process("averyveryverylongname", 12345, 14, "t") == "averyve…/12345"  # no room: thread dropped
    assert process("curl", 42, 14, "") == "curl/42" and process("", 0, 14, "w") == "?[w]"


def test_flow_views_show_the_thread() -> None:
    msg = flow(1, **DIG).to_proto()
    got = flows_text([msg], wide=True, width=200)
    assert got is not None and "dig[isc-net-0000]/42" in got[0][1]
    text = render_text(flows_table([flow_dict(msg)], wide=True, plain=True), width=200)
    assert text.splitlines()[1] == got[0][1]  # rich lays it out as flows_text does (brackets are not markup)
    text += render_text(events_table([{"type": "drop", "time_ns": T0, "value": 1.0, "detail": "x",
                                       "flow": flow_dict(msg)}], wide=True, plain=True), width=200)
    assert text.count("dig[isc-net-0000]/42") == 2
