"""The node's local history: embedded SQLite in WAL mode, one transaction per export period.

Layout (see ``_schema``): ``flows`` holds FINAL records, appended once; ``interim`` holds the latest INTERIM
record of each still-active flow, keyed by ``flow_id`` and replaced every period (the row is deleted when the
flow's FINAL record arrives), so nothing is ever stored twice; ``periods`` holds one row per export period;
``dns_chunks`` holds each period's DNS transactions (``_dns``), written in the period's transaction.

Crash safety: a period is opened with a marker row (``state='open'``) and closed, together with all its
records and the next period's marker, in one transaction. After a SIGKILL the last open marker has no close;
``Store`` turns it into an ``incomplete`` period when it reopens. Every committed period is in the WAL, which
``synchronous=NORMAL`` keeps safe against a process crash (not against power loss, which may lose the last
periods but never corrupts the file).

Retention runs inside the period transaction: rows older than ``max_age_s`` and, when the live pages exceed
``max_bytes``, the oldest rows go (DNS transactions and events with their period's flows); the count is kept in ``meta``
(``store_evictions``, DNS transactions also in ``dns_evictions``). Freed pages are
reused by later periods, so the file stays at its high-water mark instead of shrinking and regrowing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import json
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, overload

import numpy as np

from meshnode._batch import TEXT_FIELDS, U64_FIELDS, FlowBatch, factorize
from meshnode._dns import DnsBatch
from meshnode._exceptions import StoreError
from meshnode._files import private_dir, private_file
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS, EVENT_TYPE_NAMES, EVENT_TYPE_NUMBERS, FAILED_OUTCOMES, FlowRecord
from meshnode.store._chunks import (
    COUNTED,
    HEALTH_FIELDS,
    Chunk,
    ChunkRef,
    decode_counts,
    encode_chunk,
    encode_counts,
    encode_health,
    merge_in_key_order,
)
from meshnode.store._dns import DnsChunk, DnsQuery, dns_mask, encode_dns, newest
from meshnode.store._schema import ENUM_FIELDS, FLOW_FIELDS, MIGRATIONS, SCHEMA_VERSION, missing_columns

if TYPE_CHECKING:
    from numpy.typing import NDArray

DEFAULT_MAX_AGE_S: Final = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES: Final = 1 << 30
MAX_MEASUREMENTS: Final = 10_000
"""Active-task results kept at most (a few hundred bytes each)."""
MAX_EVENTS: Final = 100_000
"""Low-level events kept at most (a few hundred bytes each with their flow): the oldest go first."""
MAX_HOUR_BASELINES: Final = 500_000
"""Hourly baseline rows kept at most (one per hour and entity; a week of 3,000 entities)."""

READER_MMAP_BYTES: Final = 1 << 30
"""How much of the file a read-only connection maps (the default size bound; beyond it pages are read)."""

TABLE_FINAL: Final = 0
TABLE_INTERIM: Final = 1

_ENUM_CODES: Final = ENUM_NUMBERS
_TEXT_COLUMNS: Final = frozenset(TEXT_FIELDS)
_OUTCOME_SLOTS: Final = 9
_ENUM_POS: Final = tuple((FLOW_FIELDS.index(name), ENUM_NAMES[name]) for name in ENUM_FIELDS)
# u64 identifiers (socket and netns cookies, cgroup ids) are kept in SQLite's signed 64-bit integers.
_STORED_SIGNED: Final = (*U64_FIELDS, "bytes_tx", "bytes_rx", "delivery_rate")
"""The u64 fields a row keeps in SQLite's signed 64-bit integers (values from 2**63 up wrap, and unwrap on
reading): identifiers, and the byte counters and rate the kernel counts in u64."""
_U64_POS: Final = tuple(FLOW_FIELDS.index(n) for n in _STORED_SIGNED)
_I64: Final = 1 << 63
_U64: Final = 1 << 64
_END_COL: Final = 2 + FLOW_FIELDS.index("end_ns")


_GET_ALL: Final = attrgetter(*FLOW_FIELDS)
_ROW_COLS: Final = ", ".join(("id", "period", *FLOW_FIELDS, "drop_reasons"))
_INSERT_PLACEHOLDERS: Final = ", ".join("?" * (len(FLOW_FIELDS) + 3))


class StoreTimeout(StoreError):
    """A query ran past its deadline."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history the store keeps."""

    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True, slots=True)
class StoredFlow:
    """A record as stored: ``key`` orders and pages query results, ``period`` is the export period's seq."""

    key: tuple[int, int, int]
    period: int
    record: FlowRecord


@dataclass(frozen=True, slots=True)
class PeriodRow:
    """One export period as stored; ``summary`` is the summary layer's JSON (empty when incomplete)."""

    seq: int
    start_ns: int
    end_ns: int
    state: str
    final_flows: int
    interim_flows: int
    summary: str
    incomplete_reason: str


class EventLike(Protocol):
    """The fields of a low-level event (``meshnode.sensor.EventRecord``) the store keeps."""

    @property
    def type(self) -> str: ...
    @property
    def time_ns(self) -> int: ...
    @property
    def flow(self) -> FlowRecord: ...
    @property
    def value(self) -> float: ...
    @property
    def detail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A low-level event as stored: ``id`` is the node's number for it (the order it was seen in), ``period``
    the seq of the export period that wrote it; the rest are ``meshnode.sensor.EventRecord``'s fields."""

    id: int
    period: int
    type: str
    time_ns: int
    flow: FlowRecord
    value: float
    detail: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Size and counters, for ``Status`` and the metrics."""

    path: str
    bytes: int
    rows: int
    interim_rows: int
    periods: int
    evictions: int
    incomplete_periods: int
    schema_version: int
    dns_rows: int = 0
    """DNS transactions held."""
    dns_evictions: int = 0
    """DNS transactions retention evicted (also in ``evictions``)."""


@dataclass(frozen=True, slots=True)
class RowFilter:
    """One filter applied in SQL: the set fields are ANDed, the values inside a field ORed.

    ``equals`` maps a FlowRecord field to its allowed values (enumerated fields by their string values);
    ``any_port`` matches either port; ``cgroup_prefixes`` match a cgroup path or anything below it;
    ``dst`` matches the remote address exactly or by CIDR (``"10.0.0.0/8"``). An empty filter matches all.
    """

    equals: Mapping[str, Sequence[int | str]] = field(default_factory=dict)
    any_port: Sequence[int] = ()
    cgroup_prefixes: Sequence[str] = ()
    dst: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class FlowQuery:
    """What ``Store.query_flows`` selects.

    ``equals`` maps a FlowRecord field to the values it may take (ORed); enumerated fields take their string
    values. ``after`` is a key from a previous result: only later records are returned. ``max_period`` bounds
    the result to periods closed at a snapshot (see ``Store.last_closed_period``). ``allow``/``deny`` are
    Hubble-style filter lists: a record passes when it matches any ``allow`` filter (or there are none) and
    no ``deny`` filter. ``min_group = (columns, distinct, n)`` keeps only records whose group (same values of
    ``columns`` among the records the rest of the query selects) has at least ``n`` members, or ``n``
    distinct values of column ``distinct`` when it is not empty: "processes failing to one destination at
    least 3 times", "sources failing on at least 5 local ports".
    """

    since_ns: int = 0
    until_ns: int = 0
    include_interim: bool = False
    equals: Mapping[str, Sequence[int | str]] | None = None
    after: tuple[int, int, int] | None = None
    max_period: int | None = None
    allow: Sequence[RowFilter] = ()
    deny: Sequence[RowFilter] = ()
    min_group: tuple[tuple[str, ...], str, int] | None = None


def _encode(flows: FlowBatch, ids: NDArray[np.int64], period: int) -> list[tuple[Any, ...]]:
    """A batch as rows of ``flows``/``interim``, column by column (``encode_row`` of each record, ~20x
    cheaper: one ``tolist`` a column instead of one attribute read and conversion a value)."""
    if not flows.n:
        return []
    cols = [flows[name].view(np.int64).tolist() if name in _STORED_SIGNED else flows[name].tolist()
            for name in FLOW_FIELDS]
    drops = [json.dumps(d, separators=(",", ":")) if d else None for d in flows["drop_reasons"].tolist()]
    return list(zip(ids.tolist(), itertools.repeat(period, flows.n), *cols, drops, strict=False))


class StoredFlows(Sequence[StoredFlow]):
    """A closed period's stored records with their keys, in key order; the order, a ``StoredFlow`` and its
    record are made only where one is read (a follow stream)."""

    def __init__(self, period: int, flows: FlowBatch, end_ns: NDArray[np.int64], tables: NDArray[np.int64],
                 ids: NDArray[np.int64]) -> None:
        self.period = period
        self.flows = flows
        self._end, self._tables, self._ids = end_ns, tables, ids
        self._order: list[int] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> StoredFlow: ...
    @overload
    def __getitem__(self, i: slice) -> list[StoredFlow]: ...
    def __getitem__(self, i: int | slice) -> StoredFlow | list[StoredFlow]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._order is None:
            self._order = np.lexsort((self._ids, self._tables, self._end)).tolist()
        at = self._order[i]
        key = (int(self._end[at]), int(self._tables[at]), int(self._ids[at]))
        return StoredFlow(key, self.period, self.flows.records()[at])

    def matching(self, q: FlowQuery) -> list[StoredFlow]:
        """The records ``q`` selects (``since_ns``, ``include_interim``, ``allow``/``deny``), in key order.

        The filters are judged on the batch's columns as a history read judges a stored chunk's (text
        conditions once per distinct value), so a follow stream costs numpy work per period, not a Python
        match per record; only the selected records are read as records.
        """
        if q.until_ns or q.after is not None or q.min_group is not None or q.max_period is not None:
            raise ValueError("a closed period's records are matched by since, interim and filters only")
        mask = _chunk_mask(_BatchColumns(self.flows, self._ids), q)
        if not q.include_interim:
            mask &= self._tables != TABLE_INTERIM
        if self._order is None:
            self._order = np.lexsort((self._ids, self._tables, self._end)).tolist()
        order = np.asarray(self._order, dtype=np.intp)
        picked = order[mask[order]].tolist()
        records = self.flows.records()
        return [StoredFlow((int(self._end[at]), int(self._tables[at]), int(self._ids[at])), self.period,
                           records[at]) for at in picked]


class _BatchColumns:
    """A flow batch as ``_chunk_mask`` reads a chunk: its columns by name, text conditions judged once per
    distinct value."""

    __slots__ = ("_ids", "flows", "n")

    def __init__(self, flows: FlowBatch, ids: NDArray[np.int64]) -> None:
        self.flows = flows
        self.n = flows.n
        self._ids = ids

    def col(self, name: str) -> NDArray[Any]:
        out: NDArray[Any] = self.flows.cols[name]
        return out

    def ids(self) -> NDArray[np.int64]:
        return self._ids

    def text_mask(self, name: str, predicate: Callable[[str], bool]) -> NDArray[np.bool_]:
        codes, values = factorize(self.flows.cols[name])
        hits = np.fromiter((bool(predicate(v)) for v in values), dtype=bool, count=len(values))
        out: NDArray[np.bool_] = hits[codes]
        return out


def encode_row(row_id: int, period: int, rec: FlowRecord) -> tuple[Any, ...]:
    """A flow record as a row of ``flows``/``interim``."""
    values = list(_GET_ALL(rec))
    for pos in _U64_POS:
        if values[pos] >= _I64:
            values[pos] -= _U64
    for pos, _ in _ENUM_POS:
        values[pos] = _ENUM_CODES[FLOW_FIELDS[pos]].get(values[pos], 0)
    drops = json.dumps(rec.drop_reasons, separators=(",", ":")) if rec.drop_reasons else None
    return (row_id, period, *values, drops)


def decode_row(row: Sequence[Any]) -> FlowRecord:
    """Inverse of ``encode_row`` (without the id and period columns)."""
    values = list(row[2:-1])
    for pos, names in _ENUM_POS:
        values[pos] = names.get(values[pos], "unknown")
    for pos in _U64_POS:
        if values[pos] < 0:
            values[pos] += _U64
    # FLOW_FIELDS follow the dataclass's field order (drop_reasons, the last field, excluded).
    if row[-1]:
        values.append(json.loads(row[-1]))
    return FlowRecord(*values)


#: The fields of a ``Store.query_rows`` row, in order (then the ``fixed`` flag and the key).
ROW_FIELDS: Final = (*FLOW_FIELDS, "drop_reasons")
_DROPS_COL: Final = len(FLOW_FIELDS)
_FIXED_COL: Final = _DROPS_COL + 1


def _wire_columns() -> str:
    """The SELECT list of ``query_rows``: every field as stored (enumerated ones are the wire's numbers), and
    a ``fixed`` column that is 1 when the row needs Python (drop reasons to parse, a u64 above 2**63)."""
    u64 = " OR ".join(f"{FLOW_FIELDS[pos]} < 0" for pos in _U64_POS)
    return ", ".join((*FLOW_FIELDS, "drop_reasons", f"drop_reasons IS NOT NULL OR {u64}"))


_WIRE_COLUMNS: Final = _wire_columns()


def _fix_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = list(row)
    for pos in _U64_POS:
        if values[pos] < 0:
            values[pos] += _U64
    drops = values[_DROPS_COL]
    values[_DROPS_COL] = json.loads(drops) if drops else None
    return tuple(values)


_REQUIRED: Final = object()
_FLOW_DEFAULTS: Final = tuple(
    (f.name, f.default if f.default is not dataclasses.MISSING
     else f.default_factory() if f.default_factory is not dataclasses.MISSING else _REQUIRED)
    for f in dataclasses.fields(FlowRecord))
_FLOW_VALUES: Final = attrgetter(*(name for name, _ in _FLOW_DEFAULTS))


def _sparse_json(flow: FlowRecord) -> str:
    """An event's flow as the model's JSON without the fields at their default (``FlowRecord.from_json``
    gives them back): an event's flow names the socket and carries a few counters, a third of the full text."""
    return json.dumps({name: v for (name, default), v in zip(_FLOW_DEFAULTS, _FLOW_VALUES(flow), strict=True)
                       if v != default}, separators=(",", ":"))


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=10.0)
            # a chunk's counts and health rows sit behind its data in the row: reaching them walks the data's
            # overflow pages, one pread each (~0.4 ms a chunk), where mapped pages are a pointer away. A
            # reader lives for one query, so the mapping (and its pages in RSS) goes with it.
            conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.create_function("meshnode_in_nets", 2, _in_nets, deterministic=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store at {path}: {exc}") from exc
    return conn


class Store:
    """The node's SQLite history. One writer (the node loop); any number of readers (``query_*``).

    Write methods are called from one thread at a time; query methods open their own read-only connection
    and may run concurrently in other threads.
    """

    FILE_NAME: Final = "meshnode.db"

    def __init__(self, path: Path | str, retention: Retention | None = None) -> None:
        self.path = Path(path)
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}
        try:  # private whoever started the node: flows name processes, peers and what they sent
            private_dir(self.path.parent)
        except OSError as exc:
            raise StoreError(f"cannot make the data directory {self.path.parent} private (mode 0700): {exc}") from exc
        try:  # SQLite gives the -wal and -shm files the database's mode; ones left by an older node are tightened
            private_file(self.path)
            for side in (self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm")):
                if side.exists():
                    private_file(side)
        except OSError as exc:
            raise StoreError(f"cannot make the store {self.path} private (mode 0600): {exc}") from exc
        self._db = _connect(self.path)
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"the store at {self.path} cannot use WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            with self._transaction():
                self._add_new_fields()
            self._rows_to_chunks()
            self.recovered_incomplete = self._recover()
            with self._transaction():
                self._db.execute("DELETE FROM meta WHERE key = 'max_duration_ns'")  # chunks hold min_start
                self._db.execute(
                    "INSERT INTO meta (key, value) SELECT 'flow_rows', COALESCE(SUM(n), 0) FROM chunks "
                    "WHERE true ON CONFLICT (key) DO NOTHING"
                )
            # ids are never given twice: retention may cut a chunk's last rows, so the next id is kept
            self._next_id = max(self._meta(self._db, "next_flow_id"), int(self._db.execute(
                "SELECT COALESCE(MAX(first_id + n), 1) FROM chunks").fetchone()[0]))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    @classmethod
    def in_dir(cls, data_dir: Path | str, retention: Retention | None = None) -> Store:
        """The store of a data directory (``<data_dir>/meshnode.db``)."""
        return cls(Path(data_dir) / cls.FILE_NAME, retention)

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store at {self.path} has schema version {version}, newer than this meshnode "
                f"({SCHEMA_VERSION}); upgrade meshnode or move the data directory away"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            # Must precede the first table: lets freed pages be returned to the OS on demand.
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        with self._transaction():
            for target in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[target]:
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _add_new_fields(self) -> None:
        """Add a column for each FlowRecord field newer than the table (the model only ever grows; chunks
        read a field they lack as its zero value)."""
        for table in ("flows", "interim"):
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if have:
                for stmt in missing_columns(table, have):
                    self._db.execute(stmt)

    def _rows_to_chunks(self) -> None:
        """Move the final flows of a store written before chunks (one row a flow) into chunks, a chunk per
        period and run of consecutive ids (keys are kept), then drop the row table; once, on open."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'flows'").fetchone():
            return
        with self._transaction():
            cur = self._db.execute(f"SELECT {_ROW_COLS} FROM flows ORDER BY period, id")
            run: list[tuple[Any, ...]] = []
            for row in [*cur, None]:
                if run and (row is None or row[1] != run[-1][1] or row[0] != run[-1][0] + 1):
                    self._insert_chunk(run[0][1], run[0][0], FlowBatch.from_records(decode_row(r) for r in run))
                    run = []
                if row is not None:
                    run.append(row)
            self._db.execute("DROP TABLE flows")

    def _insert_chunk(self, period: int, first_id: int, flows: FlowBatch) -> None:
        self._db.execute(
            "INSERT INTO chunks (period, first_id, n, min_end, max_end, min_start, max_start, data, counts, health) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (period, first_id, flows.n, int(flows["end_ns"].min()), int(flows["end_ns"].max()),
             int(flows["start_ns"].min()), int(flows["start_ns"].max()), encode_chunk(flows), encode_counts(flows),
             encode_health(flows)),
        )

    def _recover(self) -> int:
        """Turn periods left open by a crash into incomplete ones; returns how many."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE periods SET state = 'incomplete', "
                "incomplete_reason = 'node stopped before the period closed (crash or kill)' "
                "WHERE state = 'open'"
            )
        return cur.rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:  # the write connection serves one thread at a time
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Checkpoint the WAL and close; safe to call twice."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------

    def open_period(self, start_ns: int) -> int:
        """Write the marker of a new period (its own small transaction); returns its seq."""
        try:
            with self._transaction():
                return self._open_period(start_ns)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the store at {self.path}: {exc}") from exc

    def _open_period(self, start_ns: int) -> int:
        cur = self._db.execute("INSERT INTO periods (start_ns, state) VALUES (?, 'open')", (start_ns,))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def close_period(
        self,
        seq: int,
        end_ns: int,
        finals: FlowBatch | Sequence[FlowRecord],
        interims: FlowBatch | Sequence[FlowRecord],
        summary: str | Callable[[int], str] = "",
        *,
        next_start_ns: int | None = None,
        now_ns: int | None = None,
        dns: DnsBatch | None = None,
        events: Sequence[tuple[int, EventLike]] = (),
    ) -> tuple[StoredFlows, int | None, int]:
        """Close period ``seq`` in one transaction: its records, its DNS transactions (``dns``), its events,
        its summary, retention and the next marker.

        ``summary`` is the period's summary text, or a function of the number of rows retention evicted
        in this transaction that returns it. ``events`` are the low-level events seen since the last close,
        each with the node's id for it (ids only grow; ``last_event_id`` says where to go on from). Returns
        the stored records (with their keys, in key order), the next period's seq (when ``next_start_ns``
        is given) and how many rows retention evicted.
        """
        fin = finals if isinstance(finals, FlowBatch) else FlowBatch.from_records(finals)
        inter = interims if isinstance(interims, FlowBatch) else FlowBatch.from_records(interims)
        first_id = self._next_id
        final_ids = np.arange(first_id, first_id + fin.n, dtype=np.int64)
        interim_ids = inter["flow_id"].view(np.int64)
        interim_rows = _encode(inter, interim_ids, seq)
        try:
            with self._transaction():
                if fin.n:
                    self._insert_chunk(seq, first_id, fin)
                    # an interim row goes when its flow's final record comes; few finals had one
                    held = np.fromiter((r[0] for r in self._db.execute("SELECT id FROM interim")), dtype=np.int64)
                    fin_ids = fin["flow_id"].view(np.int64)
                    ended = fin_ids[np.isin(fin_ids, held)]
                    if ended.size:
                        self._db.executemany("DELETE FROM interim WHERE id = ?", [(i,) for i in ended.tolist()])
                if interim_rows:
                    self._db.executemany(
                        f"INSERT OR REPLACE INTO interim ({_ROW_COLS}) VALUES ({_INSERT_PLACEHOLDERS})",
                        interim_rows,
                    )
                if dns is not None and dns.n:
                    times = dns["time_ns"]
                    self._db.execute(
                        "INSERT INTO dns_chunks (period, n, min_time, max_time, data) VALUES (?, ?, ?, ?, ?)",
                        (seq, dns.n, int(times.min()), int(times.max()), encode_dns(dns)))
                if events:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO events (id, period, time_ns, type, value, detail, flow) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(i, seq, ev.time_ns, EVENT_TYPE_NUMBERS.get(ev.type, 0), float(ev.value), ev.detail,
                          _sparse_json(ev.flow)) for i, ev in events])
                if fin.n:
                    self._bump("flow_rows", fin.n)
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('next_flow_id', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (first_id + fin.n,))
                evicted = self._retain(now_ns if now_ns is not None else end_ns)
                text = summary(evicted) if callable(summary) else summary
                cur = self._db.execute(
                    "UPDATE periods SET end_ns = ?, state = 'closed', final_flows = ?, interim_flows = ?, "
                    "summary = ? WHERE seq = ? AND state = 'open'",
                    (end_ns, fin.n, len(interim_rows), text, seq),
                )
                if cur.rowcount != 1:
                    raise StoreError(f"period {seq} is not open in the store at {self.path}")
                next_seq = self._open_period(next_start_ns) if next_start_ns is not None else None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write period {seq} to the store at {self.path}: {exc}") from exc
        self._next_id = first_id + fin.n
        stored = StoredFlows(
            seq, FlowBatch.concat([fin, inter]), np.concatenate([fin["end_ns"], inter["end_ns"]]),
            np.concatenate([np.full(fin.n, TABLE_FINAL), np.full(inter.n, TABLE_INTERIM)]),
            np.concatenate([final_ids, interim_ids]),
        )
        return stored, next_seq, evicted

    def record_address_change(self, time_ns: int, detail: str) -> None:
        """Remember that a local address appeared or went away (seed 004: failures right after a change)."""
        with self._transaction():
            self._db.execute("INSERT INTO addr_changes (time_ns, detail) VALUES (?, ?)", (time_ns, detail))

    def record_measurement(self, time_ns: int, target: str, data: bytes) -> int:
        """Keep one active-task result (opaque bytes: a serialized ``MeasureResponse``); its row id.

        At most ``MAX_MEASUREMENTS`` are kept: the oldest go first, counted in ``measurements_evicted``.
        Age retention removes them with the flows."""
        with self._transaction():
            cur = self._db.execute("INSERT INTO measurements (time_ns, target, data) VALUES (?, ?, ?)",
                                   (time_ns, target, data))
            row_id = int(cur.lastrowid or 0)
            gone = self._db.execute("DELETE FROM measurements WHERE id <= ?", (row_id - MAX_MEASUREMENTS,)).rowcount
            if gone:
                self._bump("measurements_evicted", gone)
            return row_id

    def measurements(self, since_ns: int = 0, number: int = 100) -> tuple[list[tuple[int, bytes]], int]:
        """Up to ``number`` stored results (row id, bytes) that ended at or after ``since_ns``, newest
        first, and how many the bounds evicted since the store was made."""
        with self.reader() as conn:
            rows = conn.execute("SELECT id, data FROM measurements WHERE time_ns >= ? ORDER BY id DESC LIMIT ?",
                                (since_ns, number)).fetchall()
            evicted = self._meta(conn, "measurements_evicted")
        return [(int(r[0]), bytes(r[1])) for r in rows], evicted

    def last_event_id(self) -> int:
        """The largest event id ever stored (0 when none): the node numbers its events on from it."""
        with self.reader() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def events(self, since_ns: int = 0, *, before_id: int = 0, number: int = 0, types: Sequence[str] = (),
               match: Callable[[StoredEvent], bool] | None = None,
               deadline: float | None = None) -> list[StoredEvent]:
        """Stored events at or after ``since_ns`` (with an id below ``before_id`` when not 0, of ``types`` when
        given) that ``match`` accepts, in the order the node saw them; only the newest ``number`` when not 0."""
        where, args = ["time_ns >= ?"], [since_ns]
        if before_id:
            where.append("id < ?")
            args.append(before_id)
        if types:
            where.append(_in("type", types))
            args += [EVENT_TYPE_NUMBERS.get(t, -1) for t in types]
        out: list[StoredEvent] = []
        with self.reader(deadline) as conn:
            cur = conn.execute("SELECT id, period, time_ns, type, value, detail, flow FROM events "
                               f"WHERE {' AND '.join(where)} ORDER BY id DESC", args)
            for row in cur:
                ev = StoredEvent(int(row[0]), int(row[1]), EVENT_TYPE_NAMES.get(int(row[3]), "unknown"), int(row[2]),
                                 FlowRecord.from_json(json.loads(row[6])), float(row[4]), row[5])
                if match is None or match(ev):
                    out.append(ev)
                    if number and len(out) >= number:
                        break
        out.reverse()
        return out

    def events_held_since(self) -> int:
        """The time from which the store holds every event the node saw (0 when it holds no period): the
        start of its oldest period, unless events were evicted (or not yet kept: a store made before it kept
        events) after it."""
        with self.reader() as conn:
            first = conn.execute("SELECT MIN(start_ns) FROM periods").fetchone()[0]
            if first is None:
                return 0
            return max(int(first), self._meta(conn, "events_evicted_until_ns"), self._meta(conn, "events_since_ns"))

    def record_hour_baselines(self, rows: Iterable[tuple[int, str, str, str]]) -> int:
        """Keep hourly baselines, ``(hour_ns, scope, key, data)`` each (a row for the same hour and entity is
        replaced); at most ``MAX_HOUR_BASELINES`` are kept, the oldest hours go first, counted in
        ``hour_baselines_evicted``. Returns how many rows that bound evicted now."""
        rows = list(rows)
        if not rows:
            return 0
        gone = 0
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO hour_baselines (hour_ns, scope, key, data) "
                                 "VALUES (?, ?, ?, ?)", rows)
            row = self._db.execute("SELECT hour_ns FROM hour_baselines ORDER BY hour_ns DESC LIMIT 1 OFFSET ?",
                                   (MAX_HOUR_BASELINES,)).fetchone()
            if row is not None:
                gone = self._db.execute("DELETE FROM hour_baselines WHERE hour_ns <= ?", (row[0],)).rowcount
                self._bump("hour_baselines_evicted", gone)
        return int(gone)

    def hour_baselines(self, since_ns: int = 0, until_ns: int = 0) -> list[tuple[int, str, str, str]]:
        """Hourly baselines with ``since_ns <= hour_ns < until_ns`` (no upper bound when 0), oldest first."""
        with self.reader() as conn:
            rows = conn.execute("SELECT hour_ns, scope, key, data FROM hour_baselines WHERE hour_ns >= ? "
                                "AND (? = 0 OR hour_ns < ?) ORDER BY hour_ns, scope, key",
                                (since_ns, until_ns, until_ns)).fetchall()
        return [(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def apply_retention(self, now_ns: int | None = None) -> int:
        """Run retention now (it also runs with every period); returns rows evicted."""
        with self._transaction():
            return self._retain(now_ns if now_ns is not None else time.time_ns())

    def _bump(self, key: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, by),
        )

    def _retain(self, now_ns: int) -> int:
        evicted = flows = dns = 0
        cutoff = now_ns - int(self.retention.max_age_s * 1e9)
        if self.retention.max_age_s > 0:
            flows += self._retain_age(cutoff)
            evicted += self._db.execute("DELETE FROM interim WHERE end_ns < ?", (cutoff,)).rowcount
            self._db.execute("DELETE FROM periods WHERE end_ns < ?", (cutoff,))
            self._db.execute("DELETE FROM addr_changes WHERE time_ns < ?", (cutoff,))
            self._db.execute("DELETE FROM measurements WHERE time_ns < ?", (cutoff,))
            dns += self._retain_dns_age(cutoff)
            evicted += self._evict_events("time_ns < ?", cutoff)
            self._db.execute("DELETE FROM hour_baselines WHERE hour_ns < ?", (cutoff,))
        evicted += self._retain_events()
        if self.retention.max_bytes > 0:
            got, dns_got, events_got = self._retain_size()
            flows += got
            dns += dns_got
            evicted += events_got
        if dns:
            self._bump("dns_evictions", dns)
        evicted += flows + dns
        if flows:
            self._bump("flow_rows", -flows)
        if evicted:
            self._bump("store_evictions", evicted)
        return evicted

    def _retain_events(self) -> int:
        """Keep the newest ``MAX_EVENTS`` events; the time of the newest evicted one is kept in ``meta``
        (``events_evicted_until_ns``): the events before it are no longer all held."""
        low, high = self._db.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        if low is None or high - low < MAX_EVENTS:  # ids only grow: fewer than MAX_EVENTS rows (cheap to ask)
            return 0
        row = self._db.execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", (MAX_EVENTS,)).fetchone()
        return 0 if row is None else self._evict_events("id <= ?", row[0])

    def _evict_events(self, where: str, arg: int) -> int:
        """Delete the events ``where`` selects, and remember the newest time they had."""
        until = self._db.execute(f"SELECT MAX(time_ns) FROM events WHERE {where}", (arg,)).fetchone()[0]
        if until is None:
            return 0
        gone = self._db.execute(f"DELETE FROM events WHERE {where}", (arg,)).rowcount
        self._db.execute("INSERT INTO meta (key, value) VALUES ('events_evicted_until_ns', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)", (int(until) + 1,))
        return int(gone)

    def _live_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _retain_age(self, cutoff: int) -> int:
        """Evict final flows that ended before ``cutoff``: whole chunks, and the old rows of a chunk that
        straddles it (rewritten with the rest, ids kept)."""
        evicted = self._db.execute("SELECT COALESCE(SUM(n), 0) FROM chunks WHERE max_end < ?",
                                   (cutoff,)).fetchone()[0]
        self._db.execute("DELETE FROM chunks WHERE max_end < ?", (cutoff,))
        for chunk_id, period, first_id, data in self._db.execute(
                "SELECT id, period, first_id, data FROM chunks WHERE min_end < ?", (cutoff,)).fetchall():
            chunk = Chunk(period, first_id, data)
            keep = np.flatnonzero(chunk.col("end_ns") >= cutoff)
            evicted += chunk.n - len(keep)
            flows = chunk.batch(keep)
            self._db.execute(
                "UPDATE chunks SET n = ?, min_end = ?, max_end = ?, min_start = ?, max_start = ?, data = ?, "
                "counts = ?, health = ? WHERE id = ?",
                (len(keep), int(flows["end_ns"].min()), int(flows["end_ns"].max()), int(flows["start_ns"].min()),
                 int(flows["start_ns"].max()), encode_chunk(flows, ids=chunk.ids()[keep]), encode_counts(flows),
                 encode_health(flows), chunk_id),
            )
        return int(evicted)

    def _retain_dns_age(self, cutoff: int) -> int:
        """Evict DNS transactions older than ``cutoff``: whole chunks, and the old rows of a chunk that
        straddles it (rewritten with the rest)."""
        evicted = self._db.execute("SELECT COALESCE(SUM(n), 0) FROM dns_chunks WHERE max_time < ?",
                                   (cutoff,)).fetchone()[0]
        self._db.execute("DELETE FROM dns_chunks WHERE max_time < ?", (cutoff,))
        for chunk_id, period, data in self._db.execute(
                "SELECT id, period, data FROM dns_chunks WHERE min_time < ?", (cutoff,)).fetchall():
            chunk = DnsChunk(period, 0, data)
            kept = chunk.dns(np.flatnonzero(chunk.col("time_ns") >= cutoff))
            evicted += chunk.n - kept.n
            self._db.execute("UPDATE dns_chunks SET n = ?, min_time = ?, max_time = ?, data = ? WHERE id = ?",
                             (kept.n, int(kept["time_ns"].min()), int(kept["time_ns"].max()), encode_dns(kept),
                              chunk_id))
        return int(evicted)

    def _retain_size(self) -> tuple[int, int, int]:
        """Evict the oldest periods' flows, DNS transactions and events while the live pages exceed ``max_bytes``
        (the excess share of rows plus 5 % headroom at a time, so this runs rarely). Returns flows, DNS
        transactions and events evicted. Events go with their period: left out, a flood of them (a process
        failing connects) held the store over its bound and pushed every flow out."""
        flows = dns = events = 0
        limit = self.retention.max_bytes
        held = "SELECT period FROM chunks UNION SELECT period FROM dns_chunks UNION SELECT period FROM events"
        while (live := self._live_bytes()) > limit:
            total = sum(self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM {table}").fetchone()[0]
                        for table in ("chunks", "dns_chunks"))
            total += self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if total == 0:
                break
            want = max(1, int(total * ((live - limit) / live + 0.05)))
            gone = 0
            for (period,) in self._db.execute(f"{held} ORDER BY period").fetchall():
                if gone >= want:
                    break
                got = [self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM {table} WHERE period = ?",
                                        (period,)).fetchone()[0] for table in ("chunks", "dns_chunks")]
                self._db.execute("DELETE FROM chunks WHERE period = ?", (period,))
                self._db.execute("DELETE FROM dns_chunks WHERE period = ?", (period,))
                ev = self._evict_events("period = ?", period)
                flows, dns, events = flows + got[0], dns + got[1], events + ev
                gone += got[0] + got[1] + ev
            oldest = self._db.execute(f"SELECT MIN(period) FROM ({held})").fetchone()
            if oldest is not None and oldest[0] is not None:
                self._db.execute("DELETE FROM periods WHERE seq < ? AND state != 'open'", (oldest[0],))
        return int(flows), int(dns), int(events)

    # -- reading -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self, deadline: float | None = None) -> Iterator[sqlite3.Connection]:
        """A read-only connection inside one read transaction (a consistent snapshot).

        With a ``deadline`` (a ``time.monotonic()`` value) SQLite itself interrupts any statement still
        running past it, and the read raises ``StoreTimeout``: a scan that matches nothing stops too.
        """
        conn = _connect(self.path, readonly=True)
        if deadline is not None:
            key, deadlines = id(conn), self._deadlines
            deadlines[key] = deadline  # chunk reads check it between chunks; expire_readers moves it
            conn.set_progress_handler(lambda: int(time.monotonic() > deadlines.get(key, 0.0)), 20_000)
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.OperationalError as exc:
            if deadline is not None and time.monotonic() > self._deadlines.get(id(conn), deadline):
                raise StoreTimeout("the query ran past its deadline") from exc
            raise StoreError(f"cannot read the store at {self.path}: {exc}") from exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
            self._deadlines.pop(id(conn), None)
            conn.close()

    def expire_readers(self) -> None:
        """Move the deadline of every open reader that has one to now: their queries stop with
        ``StoreTimeout`` at their next check (a node shutting down does not wait for them to finish)."""
        for key in list(self._deadlines):
            self._deadlines[key] = 0.0

    @staticmethod
    def last_closed_period(conn: sqlite3.Connection) -> int:
        """The newest closed period's seq in ``conn``'s snapshot (0 when none)."""
        row = conn.execute("SELECT MAX(seq) FROM periods WHERE state = 'closed'").fetchone()
        return int(row[0] or 0)

    def query_flows(
        self, query: FlowQuery, conn: sqlite3.Connection, *, deadline: float | None = None
    ) -> Iterator[StoredFlow]:
        """Records matching ``query`` in key order (end_ns, table, id); lazily, within ``conn``'s snapshot.

        ``deadline`` is a ``time.monotonic()`` value; past it the iterator raises ``StoreTimeout``.
        """
        streams = [self._final_flows(conn, query)]
        if query.include_interim:
            streams.append(self._interim_flows(conn, query))
        merged = streams[0] if len(streams) == 1 else _merge(streams)
        for n, item in enumerate(merged):
            if deadline is not None and n % 256 == 0 and time.monotonic() > deadline:
                raise StoreTimeout("the query ran past its deadline")
            yield item

    def query_rows(
        self,
        query: FlowQuery,
        conn: sqlite3.Connection,
        *,
        deadline: float | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """``query_flows`` without decoding a ``FlowRecord``: the bulk read path (Flows RPC).

        Each row is ``(*values, drop_reasons, fixed, end_ns, table, id)``: ``values`` in ``ROW_FIELDS`` order,
        ready to use (u64 identifiers unsigned; enumerated fields as their wire numbers, as stored), ``drop_reasons`` a
        dict or None when empty, ``fixed`` true when Python had to touch the row, and the last three the
        record's key. ``zip(ROW_FIELDS, row)`` stops before ``fixed``. The rows are the records
        ``query_flows`` returns, in the same order, and carry the same values.
        """
        streams = [self._final_rows(conn, query)]
        if query.include_interim:
            streams.append(self._interim_rows(conn, query))
        merged = streams[0] if len(streams) == 1 else _merge_rows(streams)
        for n, row in enumerate(merged):
            if deadline is not None and n % 256 == 0 and time.monotonic() > deadline:
                raise StoreTimeout("the query ran past its deadline")
            yield row

    def query_columns(
        self, query: FlowQuery, columns: Sequence[str], conn: sqlite3.Connection, *, max_rows: int = 0
    ) -> dict[str, NDArray[Any]]:
        """Columns of the FINAL records ``query`` selects, in no particular order, no record decoded: what an
        analysis over many flows reads (health's retry and scan patterns). ``min_group`` and ``after`` are
        not applied here (an analysis groups on the columns itself).

        When ``query`` can only select a chunk's health rows (failed flows, or flows with fragmentation
        needed) and tests and reads only their columns, those are read instead of the whole chunk. Equal
        texts are one string object across chunks (grouping by identity then sorts integers, not strings).

        Raises OverflowError when more than ``max_rows`` (if not 0) records are selected.
        """
        _check_fields(columns, "")
        inner = dataclasses.replace(query, min_group=None, after=None)
        parts: dict[str, list[NDArray[Any]]] = {c: [] for c in columns}
        texts: dict[str, dict[Any, int]] = {c: {} for c in columns if c in _TEXT_COLUMNS}
        health = _health_rows_answer(inner, columns)
        rows_seen = 0
        for ref in self._chunk_refs(conn, inner):
            chunk = (self._health_chunk(conn, ref) if health else None) or self._chunk(conn, ref)
            rows = np.flatnonzero(_chunk_mask(chunk, inner))
            if not len(rows):
                continue
            rows_seen += len(rows)
            if max_rows and rows_seen > max_rows:
                raise OverflowError(f"more than {max_rows} records selected")
            for c in columns:
                if c in texts:  # query-wide ids of the chunk's dictionary; strings made once, at the end
                    codes, values = chunk.group_codes(c)
                    parts[c].append(node_ids(texts[c], values)[codes[rows]])
                else:
                    parts[c].append(chunk.col(c)[rows])
        empty = FlowBatch.empty()
        out: dict[str, NDArray[Any]] = {}
        for c, got in parts.items():
            if not got:
                out[c] = empty[c]
            elif c in texts:
                table = np.empty(len(texts[c]), dtype=object)
                table[:] = list(texts[c])
                out[c] = table[np.concatenate(got)]
            else:
                out[c] = np.concatenate(got)
        return out

    # -- final flows, from chunks -------------------------------------------------------------------------

    def _chunk_refs(self, conn: sqlite3.Connection, q: FlowQuery) -> list[ChunkRef]:
        """The chunks that may hold a final flow ``q`` selects (by time, period and paging key)."""
        where: list[str] = []
        args: list[Any] = []
        if q.since_ns:
            where.append("max_end >= ?")
            args.append(q.since_ns)
        if q.until_ns:
            where.append("min_start <= ?")
            args.append(q.until_ns)
        if q.max_period is not None:
            where.append("period <= ?")
            args.append(q.max_period)
        if q.after is not None:
            where.append("max_end >= ?")
            args.append(q.after[0])
        sql = "SELECT id, period, first_id, n, min_end, max_end, max_start FROM chunks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        try:
            return [ChunkRef(*r) for r in conn.execute(sql, args)]
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc

    def _read(self, conn: sqlite3.Connection, ref: ChunkRef, column: str) -> bytes:
        """One chunk's ``data``, ``counts`` or ``health``; the reader's deadline is checked before each chunk."""
        deadline = self._deadlines.get(id(conn))
        if deadline is not None and time.monotonic() > deadline:
            raise StoreTimeout("the query ran past its deadline")
        try:
            row = conn.execute(f"SELECT {column} FROM chunks WHERE id = ?", (ref.chunk_id,)).fetchone()
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc
        blob: bytes = row[0]
        if blob is None and column != "health":
            raise StoreError(f"chunk {ref.chunk_id} has no {column} in the store at {self.path}")
        return blob

    def _chunk(self, conn: sqlite3.Connection, ref: ChunkRef) -> Chunk:
        return Chunk(ref.period, ref.first_id, self._read(conn, ref, "data"))

    def _health_chunk(self, conn: sqlite3.Connection, ref: ChunkRef) -> Chunk | None:
        """A chunk's health rows as a chunk of their own (no ids: not for keyed reads); None for a chunk
        written before they were kept."""
        blob: bytes | None = self._read(conn, ref, "health")
        return Chunk(ref.period, ref.first_id, blob) if blob is not None else None

    def _selected(self, conn: sqlite3.Connection, q: FlowQuery) -> Iterator[tuple[int, int, Chunk, int, int]]:
        """``(end_ns, id, chunk, row, pos)`` of the final flows ``q`` selects, in key order (``pos``: the row's
        place in ``chunk.selected``, see ``merge_in_key_order``)."""
        groups = self._min_groups(conn, q) if q.min_group is not None else None

        def load(ref: ChunkRef) -> tuple[Chunk, NDArray[np.intp]]:
            chunk = self._chunk(conn, ref)
            rows = np.flatnonzero(_chunk_mask(chunk, q))
            if groups is not None and q.min_group is not None:
                rows = _in_groups(chunk, rows, q.min_group[0], groups)
            chunk.selected = rows
            return chunk, rows

        return merge_in_key_order(self._chunk_refs(conn, q), load)

    def _min_groups(self, conn: sqlite3.Connection, q: FlowQuery) -> set[tuple[Any, ...]]:
        """The groups of ``q.min_group`` with enough members among the final flows the rest of ``q`` selects
        (paging aside)."""
        assert q.min_group is not None
        cols, distinct, least = q.min_group
        _check_fields(cols, distinct)
        inner = dataclasses.replace(q, min_group=None, after=None)
        counts: Counter[tuple[Any, ...]] = Counter()
        pairs: set[tuple[tuple[Any, ...], Any]] = set()
        for ref in self._chunk_refs(conn, inner):
            chunk = self._chunk(conn, ref)
            rows = np.flatnonzero(_chunk_mask(chunk, inner))
            keys = zip(*(chunk.col(c)[rows].tolist() for c in cols), strict=True)
            if distinct:  # each (group, value) once over all chunks, then groups counted
                pairs.update(zip(keys, chunk.col(distinct)[rows].tolist(), strict=True))
            else:
                counts.update(keys)  # Counter's C loop, not one dict update a row in Python
        if distinct:
            counts = Counter(map(itemgetter(0), pairs))
        return {k for k, n in counts.items() if n >= least}

    def _final_flows(self, conn: sqlite3.Connection, q: FlowQuery) -> Iterator[StoredFlow]:
        for end, row_id, chunk, row, _ in self._selected(conn, q):
            if chunk.cache is None:  # a chunk's selected records, made together when the merge first reaches it
                rows = chunk.selected if chunk.selected is not None else np.array([row])
                chunk.cache = dict(zip(rows.tolist(), chunk.batch(rows).records(), strict=True))
            yield StoredFlow((end, TABLE_FINAL, row_id), chunk.period, chunk.cache[row])

    def _final_rows(self, conn: sqlite3.Connection, q: FlowQuery) -> Iterator[tuple[Any, ...]]:
        for end, row_id, chunk, _, pos in self._selected(conn, q):
            # the selected rows are made into Python values _WIRE_SLICE at a time in key order, and only the
            # run being read is kept: a whole 20,000-row chunk at once was ~800,000 objects in one go (a GC
            # pause and a long hold of the GIL that every other request waited behind), and runs kept until
            # the chunk was done were as many objects for every full collection to visit, per stream
            at, i = divmod(pos, _WIRE_SLICE)
            if chunk.cache is None or chunk.cache[0] != at:
                assert chunk.selected is not None
                chunk.cache = (at, _wire_lists(chunk, chunk.selected[at * _WIRE_SLICE:(at + 1) * _WIRE_SLICE]))
            cols, drops, fixed = chunk.cache[1]
            yield (*[c[i] for c in cols], drops[i], fixed[i], end, TABLE_FINAL, row_id)

    # -- interim flows, from rows ---------------------------------------------------------------------------

    def _interim_rows(self, conn: sqlite3.Connection, q: FlowQuery) -> Iterator[tuple[Any, ...]]:
        where, args = _interim_where(q)
        sql = f"SELECT {_WIRE_COLUMNS}, end_ns, {TABLE_INTERIM}, id FROM interim{where} ORDER BY end_ns, id"
        try:
            for row in conn.execute(sql, args):
                yield _fix_row(row) if row[_FIXED_COL] else row
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc

    def _interim_flows(self, conn: sqlite3.Connection, q: FlowQuery) -> Iterator[StoredFlow]:
        where, args = _interim_where(q)
        sql = f"SELECT {_ROW_COLS} FROM interim{where} ORDER BY end_ns, id"
        try:
            for row in conn.execute(sql, args):
                yield StoredFlow((row[_END_COL], TABLE_INTERIM, row[0]), row[1], decode_row(row))
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc

    def count_outcomes(
        self, query: FlowQuery, group_by: Sequence[str], conn: sqlite3.Connection, *, top: int = 0
    ) -> list[tuple[tuple[Any, ...], dict[str, int]]]:
        """FINAL records matching ``query``, counted by outcome per ``group_by`` columns (or ``"period"``).

        Returns ``(group values, {outcome: count})``, the largest groups first (then by the group's values),
        at most ``top`` of them (0: all): what health fractions need, counted on the chunks' columns
        without decoding a record.
        """
        return self.count_outcomes_many(query, [group_by], conn, tops=[top])[0]

    def count_outcomes_many(
        self, query: FlowQuery, group_bys: Sequence[Sequence[str]], conn: sqlite3.Connection, *,
        tops: Sequence[int] = (),
    ) -> list[list[tuple[tuple[Any, ...], dict[str, int]]]]:
        """``count_outcomes`` for each of ``group_bys`` (with the ``top`` at the same place in ``tops``; all
        groups when absent), in one pass over the chunks: a chunk's kept counts or its columns are read
        once for all of them (Health asks three)."""
        tallies = [_Tally(tuple(g)) for g in group_bys]
        groups = self._min_groups(conn, query) if query.min_group is not None else None
        # A chunk wholly inside an unfiltered query gives its kept counts (``encode_counts``), not its rows.
        plain = not (query.equals or query.allow or query.deny or query.min_group or query.after)
        for ref in self._chunk_refs(conn, query):
            kept = plain and self._whole(ref, query)
            if kept and any(t.counted for t in tallies):
                got = self._counts(conn, ref)
                for t in tallies:
                    if t.counted:
                        t.add_counts(ref.period, got)
            rest = [t for t in tallies if not (kept and t.counted)]
            if not rest:
                continue
            chunk = self._chunk(conn, ref)
            rows = np.flatnonzero(_chunk_mask(chunk, query))
            if groups is not None and query.min_group is not None:
                rows = _in_groups(chunk, rows, query.min_group[0], groups)
            if not len(rows):
                continue
            outcome = chunk.col("outcome")[rows].astype(np.int64)
            for t in rest:
                t.add_rows(chunk, rows, outcome)
        return [t.result(tops[i] if i < len(tops) else 0) for i, t in enumerate(tallies)]

    @staticmethod
    def _whole(ref: ChunkRef, q: FlowQuery) -> bool:
        """True when every flow of the chunk is inside ``q``'s time window."""
        return (not q.since_ns or ref.min_end >= q.since_ns) and (not q.until_ns or ref.max_start <= q.until_ns)

    def _counts(self, conn: sqlite3.Connection, ref: ChunkRef) -> dict[tuple[str, str], Any]:
        return decode_counts(self._read(conn, ref, "counts"))

    def periods(self, since_ns: int = 0, until_ns: int = 0, number: int = 100) -> list[PeriodRow]:
        """Periods (any state except open) overlapping the range, newest first."""
        where = ["state != 'open'"]
        args: list[Any] = []
        if since_ns:
            where.append("(end_ns >= ? OR end_ns IS NULL)")
            args.append(since_ns)
        if until_ns:
            where.append("start_ns <= ?")
            args.append(until_ns)
        sql = (
            "SELECT seq, start_ns, end_ns, state, final_flows, interim_flows, summary, incomplete_reason "
            f"FROM periods WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        )
        with self.reader() as conn:
            rows = conn.execute(sql, [*args, number]).fetchall()
        return [
            PeriodRow(r[0], r[1], r[2] or 0, r[3], r[4], r[5], r[6] or "", r[7] or "") for r in rows
        ]

    def address_changes(self, since_ns: int = 0, until_ns: int = 0) -> list[int]:
        """Times of local address changes in the range, oldest first."""
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT time_ns FROM addr_changes WHERE time_ns >= ? AND (? = 0 OR time_ns <= ?) "
                "ORDER BY time_ns",
                (since_ns, until_ns, until_ns),
            ).fetchall()
        return [int(r[0]) for r in rows]

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def size_on_disk(self) -> int:
        """Bytes of the database and its WAL (two ``stat`` calls: cheap enough for the event loop)."""
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(str(self.path) + suffix).stat().st_size
        return size

    def stats(self) -> StoreStats:
        """Size on disk (database plus WAL), row counts and counters."""
        with self.reader() as conn:
            rows = self._meta(conn, "flow_rows")
            interim = conn.execute("SELECT COUNT(*) FROM interim").fetchone()[0]
            periods = conn.execute("SELECT COUNT(*) FROM periods WHERE state != 'open'").fetchone()[0]
            incomplete = conn.execute("SELECT COUNT(*) FROM periods WHERE state = 'incomplete'").fetchone()[0]
            evictions = self._meta(conn, "store_evictions")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            dns_rows = conn.execute("SELECT COALESCE(SUM(n), 0) FROM dns_chunks").fetchone()[0]
            dns_evictions = self._meta(conn, "dns_evictions")
        return StoreStats(
            path=str(self.path), bytes=self.size_on_disk(), rows=int(rows), interim_rows=int(interim),
            periods=int(periods), evictions=evictions, incomplete_periods=int(incomplete), schema_version=version,
            dns_rows=int(dns_rows), dns_evictions=dns_evictions,
        )

    def query_dns(self, query: DnsQuery, conn: sqlite3.Connection, *, limit: int,
                  deadline: float | None = None) -> tuple[DnsBatch, int]:
        """The ``limit`` newest DNS transactions ``query`` selects, in time order, and how many it selects
        in all (within ``conn``'s snapshot). ``deadline`` is a ``time.monotonic()`` value; past it the read
        raises ``StoreTimeout``."""
        # times past what the store holds (signed 64-bit nanoseconds) select as its largest
        query = dataclasses.replace(query, since_ns=min(query.since_ns, _I64 - 1),
                                    until_ns=min(query.until_ns, _I64 - 1))
        where, args = ["1"], []
        if query.since_ns:
            where.append("max_time >= ?")
            args.append(query.since_ns)
        if query.until_ns:
            where.append("min_time <= ?")
            args.append(query.until_ns)
        kept: list[DnsBatch] = []
        held = matched = 0
        try:
            cur = conn.execute(f"SELECT period, data FROM dns_chunks WHERE {' AND '.join(where)} ORDER BY id",
                               args)
            for period, data in cur:
                if deadline is not None and time.monotonic() > deadline:
                    raise StoreTimeout("the query ran past its deadline")
                chunk = DnsChunk(period, 0, data)
                rows = np.flatnonzero(dns_mask(chunk, query))
                if not len(rows):
                    continue
                matched += len(rows)
                kept.append(chunk.dns(rows))
                held += len(rows)
                if held > limit + max(1024, limit // 4):  # memory for the newest: older rows cannot come back
                    kept = [newest(DnsBatch.concat(kept), limit)]
                    held = kept[0].n
        except sqlite3.Error as exc:
            raise _read_error(self.path, exc) from exc
        return newest(DnsBatch.concat(kept), limit), matched


class _Tally:
    """One group-by of ``count_outcomes``: (group, outcome, weight) entries gathered chunk by chunk, then
    counted once in numpy. Each group column's values get node-wide ids (a chunk's dictionary maps through
    a dict: a few hundred strings a chunk); the number of a kept group-by (``COUNTED``) is its own id."""

    def __init__(self, group_by: tuple[str, ...]) -> None:
        for col in group_by:
            if col not in FLOW_FIELDS and col != "period":
                raise ValueError(f"unknown flow field {col!r}")
        self.group_by = group_by
        self.counted = group_by in (*COUNTED, ("period",))
        self.ids: list[dict[Any, int]] = [{} for _ in group_by]
        self.keys: list[list[NDArray[np.int64]]] = [[] for _ in group_by]
        self.outcomes: list[NDArray[np.int64]] = []
        self.weights: list[NDArray[np.float64]] = []

    def add_counts(self, period: int, got: dict[tuple[str, str], Any]) -> None:
        """A chunk's kept counts (``decode_counts``)."""
        keys: list[NDArray[np.int64]]
        if self.group_by == ("period",):
            group_counts = (sum(c.sum(axis=0) for _, _, c in got.values()) // len(COUNTED)).reshape(1, -1)
            keys = [node_ids(self.ids[0], [period])]
        else:
            texts, pairs, group_counts = got[(self.group_by[0], self.group_by[1])]
            keys = [node_ids(self.ids[0], texts)[pairs[:, 0]], pairs[:, 1]]
        g, o = np.nonzero(group_counts)
        for i, k in enumerate(keys):
            self.keys[i].append(k[g])
        self.outcomes.append(o.astype(np.int64))
        self.weights.append(group_counts[g, o].astype(np.float64))

    def add_rows(self, chunk: Chunk, rows: NDArray[np.intp], outcome: NDArray[np.int64]) -> None:
        """The selected ``rows`` of a chunk, one entry each."""
        for i, c in enumerate(self.group_by):
            if c == "period":
                self.keys[i].append(node_ids(self.ids[i], [chunk.period])[np.zeros(len(rows), dtype=np.intp)])
            elif self.counted and i == 1:  # a number counted as itself, as kept counts hold it
                self.keys[i].append(chunk.col(c)[rows].astype(np.int64))
            else:
                all_codes, values = chunk.group_codes(c)
                self.keys[i].append(node_ids(self.ids[i], values)[all_codes[rows]])
        self.outcomes.append(outcome)
        self.weights.append(np.ones(len(rows), dtype=np.float64))

    def result(self, top: int) -> list[tuple[tuple[Any, ...], dict[str, int]]]:
        """The groups with their counts by outcome name, largest first (then by value), at most ``top``."""
        if not self.outcomes:
            return []
        group_by = self.group_by
        n = sum(len(o) for o in self.outcomes)
        values_of: list[list[Any]] = []
        stacked = np.zeros((n, max(1, len(group_by))), dtype=np.int64)
        for i in range(len(group_by)):
            group_ids: NDArray[np.int64] = np.concatenate(self.keys[i])
            if self.counted and i == 1:
                distinct, group_ids = _distinct_ints(group_ids)
                values_of.append(distinct.tolist())
            else:
                values_of.append(list(self.ids[i]))
            stacked[:, i] = group_ids
        width = _OUTCOME_SLOTS  # outcome numbers 0..7; anything else counts as unknown, in the last slot
        slot = np.minimum(np.concatenate(self.outcomes), width - 1)
        weights = np.concatenate(self.weights)
        sizes = [max(1, len(v)) for v in values_of] or [1]
        space = math.prod(sizes)
        radix = np.cumprod([1, *sizes[:0:-1]])[::-1].astype(np.int64) if space < 1 << 62 else None
        if radix is not None and space * width <= max(1 << 16, 4 * n):  # few possible groups: one bincount
            flat = stacked @ radix
            dense = np.bincount(flat * width + slot, weights=weights, minlength=space * width).reshape(space, width)
            present = np.flatnonzero(dense.sum(axis=1))  # every entry weighs at least one flow
            uniq_rows = np.stack([(present // r) % size for r, size in zip(radix, sizes, strict=True)], axis=1)
            counts = dense[present]
        else:
            if radix is not None:  # one int64 key a row (a mixed radix): a 1-d sort
                flat, inverse = np.unique(stacked @ radix, return_inverse=True)
                uniq_rows = np.stack([(flat // r) % size for r, size in zip(radix, sizes, strict=True)], axis=1)
            else:  # wide group-bys: distinct rows (no product to overflow)
                uniq_rows, inverse = np.unique(stacked, axis=0, return_inverse=True)
            key = inverse.reshape(n)
            counts = np.bincount(key * width + slot, weights=weights, minlength=len(uniq_rows) * width)
            counts = counts.reshape(len(uniq_rows), width)
        # weights are whole counts, so their float64 sums are exact below 2^53 flows: no rounding to do
        counts = counts.astype(np.int64)
        totals = counts.sum(axis=1)
        chosen = np.arange(len(counts))
        if top and len(counts) > top:  # only groups that can be in the top (ties at its edge kept) become tuples
            edge = np.partition(totals, len(totals) - top)[len(totals) - top]
            chosen = np.flatnonzero(totals >= edge)
        out = []
        for codes_row, row, total in zip(uniq_rows[chosen].tolist(), counts[chosen], totals[chosen].tolist(),
                                         strict=True):
            group = tuple(values_of[i][code] for i, code in enumerate(codes_row[:len(group_by)]))
            out.append((group, row, total))
        out.sort(key=lambda kv: (-kv[2], kv[0]))
        if top:
            out = out[:top]
        names = ENUM_NAMES["outcome"]
        named = [i for i in range(width) if i in names and i != 0]  # unknown: in the group's size, no name
        return [(group, {names[i]: int(row[i]) for i in named if row[i]}) for group, row, _ in out]


def _distinct_ints(values: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``np.unique(values, return_inverse=True)``; by a presence table, not a sort, for small non-negative
    numbers (ports)."""
    if len(values) and values.min() >= 0 and values.max() < 1 << 22:
        present = np.bincount(values) > 0
        distinct = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        return distinct.astype(np.int64), rank[values].astype(np.int64)
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, inverse.reshape(len(values)).astype(np.int64)


_HEALTH_FIELDS: Final = frozenset(HEALTH_FIELDS)


def _filter_fields(f: RowFilter) -> set[str]:
    """The fields a filter tests."""
    fields = {name for name, values in f.equals.items() if values}
    if f.any_port:
        fields |= {"sport", "dport"}
    if f.cgroup_prefixes:
        fields.add("cgroup")
    if f.dst:
        fields.add("dst")
    return fields


def _health_rows_answer(q: FlowQuery, columns: Sequence[str]) -> bool:
    """True when a chunk's health rows give ``q``'s answer exactly: every row ``q`` selects is one
    (``q.equals`` allows failed outcomes only, or a deny filter drops the flows without fragmentation
    needed) and every field it tests or reads is kept there."""
    equals = RowFilter(equals=q.equals or {})
    fields = {*columns, "start_ns", "end_ns"}
    for f in (equals, *q.allow, *q.deny):
        fields |= _filter_fields(f)
    if not fields <= _HEALTH_FIELDS:
        return False
    outcomes = equals.equals.get("outcome")
    if outcomes and {str(o) for o in outcomes} <= FAILED_OUTCOMES:
        return True
    return any(_filter_fields(f) == {"icmp_frag_needed"}
               and any(_is_int(v) and int(v) == 0 for v in f.equals["icmp_frag_needed"]) for f in q.deny)


def _chunk_mask(chunk: Chunk | _BatchColumns, q: FlowQuery) -> NDArray[np.bool_]:
    """Which rows of a chunk ``q`` selects, as ``_where`` selects rows of a table (``min_group`` aside)."""
    mask = np.ones(chunk.n, dtype=bool)
    if q.since_ns:
        mask &= chunk.col("end_ns") >= q.since_ns
    if q.until_ns:
        mask &= chunk.col("start_ns") <= q.until_ns
    if q.after is not None:
        end, table, row_id = q.after
        ends = chunk.col("end_ns")
        if table == TABLE_FINAL:
            mask &= (ends > end) | ((ends == end) & (chunk.ids() > row_id))
        elif table < TABLE_FINAL:
            mask &= ends >= end
        else:
            mask &= ends > end
    if q.equals:
        mask &= _filter_mask(chunk, RowFilter(equals=q.equals))
    if q.allow:
        allowed = np.zeros(chunk.n, dtype=bool)
        for f in q.allow:
            allowed |= _filter_mask(chunk, f)
        mask &= allowed
    for f in q.deny:
        mask &= ~_filter_mask(chunk, f)
    return mask


def _filter_mask(chunk: Chunk | _BatchColumns, f: RowFilter) -> NDArray[np.bool_]:
    """``_filter_sql`` over a chunk's columns: text conditions are judged once per distinct value."""
    mask = np.ones(chunk.n, dtype=bool)
    for name, values in f.equals.items():
        if name not in FLOW_FIELDS:
            raise ValueError(f"unknown flow field {name!r}")
        if not values:
            continue
        if name in _ENUM_CODES:
            numbers = [_ENUM_CODES[name].get(str(v), -1) for v in values]
            mask &= np.isin(chunk.col(name), numbers)
        elif name in _TEXT_COLUMNS:
            wanted = {str(v) for v in values}
            mask &= chunk.text_mask(name, wanted.__contains__)
        else:
            col = chunk.col(name)
            info = np.iinfo(col.dtype)
            ints = [int(v) for v in values if _is_int(v)]
            wanted_ints = np.array([v for v in ints if info.min <= v <= info.max], dtype=col.dtype)
            mask &= np.isin(col, wanted_ints)
    if f.any_port:
        ports = list(f.any_port)
        mask &= np.isin(chunk.col("dport"), ports) | np.isin(chunk.col("sport"), ports)
    if f.cgroup_prefixes:
        prefixes = [p.rstrip("/") for p in f.cgroup_prefixes]
        if "" not in prefixes:
            mask &= chunk.text_mask("cgroup", lambda c: any(c == p or c.startswith(p + "/") for p in prefixes))
    if f.dst:
        exact = {d for d in f.dst if "/" not in d}
        nets = ",".join(d for d in f.dst if "/" in d)
        mask &= chunk.text_mask("dst", lambda d: d in exact or bool(nets and _in_nets(d, nets)))
    return mask


def _is_int(value: object) -> bool:
    """An integer, or text SQLite would compare as one (``'100'``); not a bool or a float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("+-").isdigit()


_WIRE_SLICE: Final = 1024
"""Selected rows of a chunk made into ``query_rows`` values at a time (in key order)."""


def _wire_lists(chunk: Chunk, rows: NDArray[np.intp]) -> tuple[list[list[Any]], list[Any], list[bool]]:
    """Rows ``rows`` of a chunk as lists of ``query_rows`` values (enums as wire numbers, u64 unsigned),
    their drop reasons (None when empty) and each row's ``fixed`` flag."""
    cols = [chunk.col(name)[rows].tolist() for name in FLOW_FIELDS]
    drops = [d or None for d in chunk.col("drop_reasons")[rows].tolist()]
    big = np.zeros(len(drops), dtype=bool)
    for name in _STORED_SIGNED:
        big |= chunk.col(name)[rows] >= np.uint64(1 << 63)
    fixed = (big | np.array([d is not None for d in drops], dtype=bool)).tolist()
    return cols, drops, fixed


def _interim_where(q: FlowQuery) -> tuple[str, list[Any]]:
    """``q`` as the WHERE clause of the interim table (the latest record of each live flow)."""
    where: list[str] = []
    args: list[Any] = []
    if q.since_ns:
        where.append("end_ns >= ?")
        args.append(q.since_ns)
    if q.until_ns:
        where.append("start_ns <= ?")
        args.append(q.until_ns)
    if q.max_period is not None:
        where.append("period <= ?")
        args.append(q.max_period)
    if q.after is not None:
        end, table, row_id = q.after
        if table == TABLE_INTERIM:
            where.append("(end_ns, id) > (?, ?)")
            args += [end, row_id]
        else:  # a final's key comes before an interim's at the same end_ns
            where.append("end_ns >= ?")
            args.append(end)
    if q.equals:
        cond, cargs = _filter_sql(RowFilter(equals=q.equals))
        where.append(cond)
        args += cargs
    if q.allow:
        parts = [_filter_sql(f) for f in q.allow]
        where.append("(" + " OR ".join(c for c, _ in parts) + ")")
        for _, cargs in parts:
            args += cargs
    for f in q.deny:
        cond, cargs = _filter_sql(f)
        where.append(f"NOT {cond}")
        args += cargs
    if q.min_group is not None:
        cols, distinct, n = q.min_group
        _check_fields(cols, distinct)
        inner, inner_args = _interim_where(dataclasses.replace(q, min_group=None, after=None))
        group = ", ".join(cols)
        count = f"COUNT(DISTINCT {distinct})" if distinct else "COUNT(*)"
        where.append(f"({group}) IN (SELECT {group} FROM interim{inner} GROUP BY {group} HAVING {count} >= ?)")
        args += [*inner_args, n]
    return (" WHERE " + " AND ".join(where) if where else ""), args


def node_ids(table: dict[Any, int], values: list[Any]) -> NDArray[np.int64]:
    """Ids of ``values`` in ``table``, new values numbered on from ``len(table)`` (insertion order): one set
    difference and one mapped lookup, C loops both, instead of a Python call a value (a chunk of distinct
    addresses has as many values as rows)."""
    missing = set(values).difference(table)
    if missing:
        table.update(zip(missing, itertools.count(len(table))))
    return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))


def _check_fields(cols: Sequence[str], distinct: str) -> None:
    for col in (*cols, *([distinct] if distinct else [])):
        if col not in FLOW_FIELDS:
            raise ValueError(f"unknown flow field {col!r}")


def _in_groups(chunk: Chunk, rows: NDArray[np.intp], cols: Sequence[str],
               groups: set[tuple[Any, ...]]) -> NDArray[np.intp]:
    """The ``rows`` of a chunk whose values of ``cols`` make one of ``groups`` (min_group's second pass)."""
    keys = zip(*(chunk.col(c)[rows].tolist() for c in cols), strict=True)
    kept: NDArray[np.intp] = rows[np.fromiter((k in groups for k in keys), dtype=bool, count=len(rows))]
    return kept


def _read_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if "interrupted" in str(exc):
        return StoreTimeout("the query ran past its deadline")
    return StoreError(f"cannot read the store at {path}: {exc}")


def _in(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})"


def _filter_sql(f: RowFilter) -> tuple[str, list[Any]]:
    """One filter as a parenthesised SQL condition and its arguments."""
    conds: list[str] = []
    args: list[Any] = []
    for name, values in f.equals.items():
        if name not in FLOW_FIELDS:
            raise ValueError(f"unknown flow field {name!r}")
        if not values:
            continue
        if name in _ENUM_CODES:
            values = [_ENUM_CODES[name].get(str(v), -1) for v in values]
        conds.append(_in(name, values))
        args += list(values)
    if f.any_port:
        conds.append(f"({_in('dport', f.any_port)} OR {_in('sport', f.any_port)})")
        args += [*f.any_port, *f.any_port]
    if f.cgroup_prefixes:
        alts = []
        for prefix in f.cgroup_prefixes:
            p = prefix.rstrip("/")
            if not p:
                alts.append("1")
                continue
            alts.append("(cgroup = ? OR substr(cgroup, 1, ?) = ?)")
            args += [p, len(p) + 1, p + "/"]
        conds.append("(" + " OR ".join(alts) + ")")
    if f.dst:
        exact = [d for d in f.dst if "/" not in d]
        nets = [d for d in f.dst if "/" in d]
        alts = []
        if exact:
            alts.append(_in("dst", exact))
            args += exact
        if nets:
            alts.append("meshnode_in_nets(dst, ?)")
            args.append(",".join(nets))
        conds.append("(" + " OR ".join(alts) + ")")
    return ("(" + " AND ".join(conds) + ")" if conds else "(1)"), args


@lru_cache(maxsize=256)
def _parse_nets(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in text.split(","))


@lru_cache(maxsize=65536)
def _parse_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _in_nets(dst: str, nets: str) -> int:
    """SQL function ``meshnode_in_nets(dst, "net,net")``: 1 when the address is in any network."""
    addr = _parse_addr(dst)
    return int(addr is not None and any(addr in n for n in _parse_nets(nets)))


def _merge_rows(streams: Iterable[Iterator[tuple[Any, ...]]]) -> Iterator[tuple[Any, ...]]:
    import heapq

    return heapq.merge(*streams, key=lambda r: r[-3:])


def _merge(streams: Iterable[Iterator[StoredFlow]]) -> Iterator[StoredFlow]:
    import heapq

    return heapq.merge(*streams, key=lambda s: s.key)
