"""The store's schema and its migrations, versioned with SQLite's ``user_version``.

Each migration is a list of statements that moves the schema from version ``i`` to ``i + 1``; the store runs
the missing ones in one transaction on open. Migrations are only ever appended: a released version's
statements never change, so a database written by any older meshnode opens in a newer one.

A FlowRecord field added to the model later gets its column automatically when a store opens
(``missing_columns``), so the model can grow without a hand-written migration.

Enumerated flow fields (``proto``, ``outcome``, ...) are stored as ``meshnode.v1``'s enum numbers
(``_model.ENUM_NUMBERS``, 0 for unknown): the kernel, the columnar batches, the file and the wire mean the
same thing by the same number. Stores written before schema version 3 held each value's index in the model's
tuple of names; migration 2 -> 3 renumbers them.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from meshnode._batch import TEXT_FIELDS
from meshnode._model import ENUM_NUMBERS, FlowRecord

#: FlowRecord fields stored as columns, in column order (``drop_reasons`` is stored as JSON text).
FLOW_FIELDS: Final = tuple(f.name for f in dataclasses.fields(FlowRecord) if f.name != "drop_reasons")
assert dataclasses.fields(FlowRecord)[-1].name == "drop_reasons", "rows are decoded positionally"

#: Fields stored as their wire enum number.
ENUM_FIELDS: Final = tuple(ENUM_NUMBERS)


def _renumber(table: str) -> str:
    """Schema 2 -> 3: a table's enumerated columns from the model's tuple indices to the wire's numbers
    (the tuples were ``PROTOS``, ``DIRECTIONS``, ``OUTCOMES``, ``LIMITS``, ``KINDS``, ``FIDELITIES``; an
    index of -1 meant a value the model did not know, 0 on the wire)."""
    return (
        f"UPDATE {table} SET proto = CASE proto WHEN 0 THEN 6 WHEN 1 THEN 17 ELSE 0 END, "
        "direction = CASE WHEN direction BETWEEN 0 AND 1 THEN direction + 1 ELSE 0 END, "
        "outcome = CASE WHEN outcome BETWEEN 0 AND 6 THEN outcome + 1 ELSE 0 END, "
        "limited_by = CASE WHEN limited_by BETWEEN 0 AND 3 THEN limited_by + 1 ELSE 0 END, "
        "kind = CASE WHEN kind BETWEEN 0 AND 1 THEN kind + 1 ELSE 0 END, "
        "fidelity = CASE WHEN fidelity BETWEEN 0 AND 1 THEN fidelity + 1 ELSE 0 END"
    )

_TEXT_FIELDS: Final = frozenset(TEXT_FIELDS)


def _column_type(name: str) -> str:
    return "TEXT" if name in _TEXT_FIELDS else "INTEGER"


def missing_columns(table: str, have: set[str]) -> list[str]:
    """``ALTER TABLE`` statements adding FlowRecord fields the table lacks (a newer model than the file).

    New fields get the model's zero value (0 or ''), so old rows read back as records without them.
    """
    out = []
    for name in FLOW_FIELDS:
        if name not in have:
            default = "''" if name in _TEXT_FIELDS else "0"
            kind = _column_type(name)
            out.append(f"ALTER TABLE {table} ADD COLUMN {name} {kind} NOT NULL DEFAULT {default}")
    return out


def _column_defs() -> str:
    cols = []
    for name in FLOW_FIELDS:
        cols.append(f"{name} {_column_type(name)} NOT NULL")
    cols.append("drop_reasons TEXT")
    return ", ".join(cols)


_COLS: Final = _column_defs()

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: flows, the latest interim record per active flow, periods and counters.
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE periods (seq INTEGER PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER, "
        "state TEXT NOT NULL, final_flows INTEGER NOT NULL DEFAULT 0, "
        "interim_flows INTEGER NOT NULL DEFAULT 0, summary TEXT)",
        f"CREATE TABLE flows (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, {_COLS})",
        "CREATE INDEX flows_end ON flows (end_ns)",
        f"CREATE TABLE interim (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, {_COLS})",
    ),
    # 1 -> 2: local address changes (seed 004) and why a period is incomplete.
    (
        "CREATE TABLE addr_changes (time_ns INTEGER NOT NULL, detail TEXT NOT NULL)",
        "CREATE INDEX addr_changes_time ON addr_changes (time_ns)",
        "ALTER TABLE periods ADD COLUMN incomplete_reason TEXT",
        "CREATE INDEX periods_end ON periods (end_ns)",
    ),
    # 2 -> 3: enumerated columns hold the wire's enum numbers.
    (_renumber("flows"), _renumber("interim")),
    # 3 -> 4: final flows by column, a chunk per period (``_chunks``); the rows of ``flows`` move into
    # chunks when the store opens (``Store._rows_to_chunks``), then the table is dropped.
    (
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, first_id INTEGER NOT NULL, "
        "n INTEGER NOT NULL, min_end INTEGER NOT NULL, max_end INTEGER NOT NULL, min_start INTEGER NOT NULL, "
        "max_start INTEGER NOT NULL, data BLOB NOT NULL, counts BLOB NOT NULL)",
        "CREATE INDEX chunks_max_end ON chunks (max_end)",
        "CREATE INDEX chunks_period ON chunks (period)",
    ),
    # 4 -> 5: active-task results (seed 003), a serialized meshnode.v1.MeasureResponse each.
    (
        "CREATE TABLE measurements (id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, target TEXT NOT NULL, "
        "data BLOB NOT NULL)",
        "CREATE INDEX measurements_time ON measurements (time_ns)",
    ),
    # 5 -> 6: DNS transactions by column, a chunk per period (``_dns``); times are the last answer's.
    (
        "CREATE TABLE dns_chunks (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, n INTEGER NOT NULL, "
        "min_time INTEGER NOT NULL, max_time INTEGER NOT NULL, data BLOB NOT NULL)",
        "CREATE INDEX dns_chunks_max_time ON dns_chunks (max_time)",
    ),
    # 6 -> 7: the sensor's low-level events, written with the period's flows (ids given by the node, in the
    # order it saw them; ``type`` is the wire's EventType number, ``flow`` the model's JSON of the event's flow).
    (
        "CREATE TABLE events (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, time_ns INTEGER NOT NULL, "
        "type INTEGER NOT NULL, value REAL NOT NULL, detail TEXT NOT NULL, flow TEXT NOT NULL)",
        "CREATE INDEX events_time ON events (time_ns)",
        # the events of periods written before this version were never kept
        "INSERT INTO meta (key, value) SELECT 'events_since_ns', COALESCE(MAX(COALESCE(end_ns, start_ns)), 0) "
        "FROM periods WHERE true ON CONFLICT (key) DO NOTHING",
    ),
    # 7 -> 8: anomaly baselines rolled up per clock hour: one row per hour and entity, ``data`` a JSON object
    # of the metrics' medians over that hour's periods (diagnosis reads them back at start).
    (
        "CREATE TABLE hour_baselines (hour_ns INTEGER NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, "
        "data TEXT NOT NULL, PRIMARY KEY (hour_ns, scope, key))",
    ),
    # 8 -> 9: each chunk's health rows (``_chunks.encode_health``), written with the chunk; NULL in chunks
    # written before, which Health reads in full as it did.
    ("ALTER TABLE chunks ADD COLUMN health BLOB",),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
