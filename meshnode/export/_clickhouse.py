"""Ended flows into ClickHouse: one row per flow in ``DATABASE.flows``, one INSERT per export period.

``meshnode run --clickhouse clickhouse://HOST:PORT/DATABASE`` adds a ``ClickHouseExporter`` as a record
listener: each closed period's final records are handed to the exporter's thread (the event loop never
waits on ClickHouse or the disk), which writes them to its spool (``_spool.Spool``, under
``<data_dir>/export/clickhouse``) and sends the spool's batches in order over the native protocol
(clickhouse-driver). While ClickHouse cannot be reached, batches wait in the spool (bounded, counted) and
the thread retries with a backoff of 1 s doubling to 30 s.

Nothing is sent twice. ClickHouse 18.16 deduplicates inserted blocks only on Replicated tables, so the
exporter does it itself: every row carries ``node_id``, ``batch`` (the export period's end, UTC ns: unique
per node) and ``row`` (its index in the period). A batch is sent plainly as long as every send before it
succeeded. After a failure whose outcome is unknown (a timeout or a broken connection after the block was
sent; and the first batch after a start, in case the last run died mid-insert), the exporter first asks
which rows of that batch the table already has and inserts only the others. Only the oldest batch can be
in that state, since batches leave one at a time, in order. A ReplacingMergeTree keyed on the same columns
would hide duplicates only after a merge, and every query would need FINAL; a plain MergeTree with the
check keeps the queries simple and the rows exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import numpy as np

from meshnode._batch import FlowBatch
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS
from meshnode.api import ExporterStatus
from meshnode.export._spool import Spool, SpoolEntry

if TYPE_CHECKING:
    from clickhouse_driver import Client

    from meshnode.summary import PeriodSummary

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 9000
TABLE: Final = "flows"
MAX_BATCH_ROWS: Final = 500_000
"""Rows per INSERT at most: under ClickHouse's max_insert_block_size (1,048,576), so that each INSERT is
one block, written whole or not at all. A period with more ended flows goes in several batches."""
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 30.0
STOP_FLUSH_S: Final = 5.0
"""At shutdown, how long the exporter keeps trying to send what is queued (the rest waits on disk)."""
_FINAL: Final = ENUM_NUMBERS["kind"]["final"]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _enum(field: str) -> str:
    return "Enum8(" + ", ".join(f"'{name}' = {num}" for num, name in sorted(ENUM_NAMES[field].items())) + ")"


# (column, ClickHouse type, FlowBatch field or None for the exporter's own columns), in table order.
# Names are the flow-record names; enumerations keep meshnode.v1's numbers (Enum8 shows the names).
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("node_id", "String"),
    ("host", "String"),
    ("batch", "UInt64"),
    ("row", "UInt32"),
    ("src", "String"),
    ("sport", "UInt16"),
    ("dst", "String"),
    ("dport", "UInt16"),
    ("proto", _enum("proto")),
    ("direction", _enum("direction")),
    ("pid", "UInt32"),
    ("comm", "String"),
    ("thread", "String"),
    ("cgroup", "String"),
    ("netns", "UInt64"),
    ("start_ns", "UInt64"),
    ("end_ns", "UInt64"),
    ("bytes_tx", "UInt64"),
    ("bytes_rx", "UInt64"),
    ("packets_tx", "UInt64"),
    ("packets_rx", "UInt64"),
    ("outcome", _enum("outcome")),
    ("retransmits", "UInt32"),
    ("srtt_us", "UInt32"),
    ("min_rtt_us", "UInt32"),
    ("cwnd", "UInt32"),
    ("limited_by", _enum("limited_by")),
    ("service", "String"),
    ("connect_us", "UInt32"),
    ("remote_name", "String"),
    ("delivery_rate", "UInt64"),
    ("lost", "UInt32"),
    ("first_byte_us", "UInt32"),
    ("responses", "UInt32"),
    ("response_us_sum", "UInt64"),
    ("response_us_max", "UInt32"),
    ("answer_us_sum", "UInt64"),
    ("icmp_unreachable", "UInt32"),
    ("icmp_unreachable_code", "UInt32"),
    ("icmp_frag_needed", "UInt32"),
    ("path_mtu", "UInt32"),
    ("icmp_time_exceeded", "UInt32"),
    ("attempts", "UInt32"),
    ("ports_probed", "UInt32"),
)
FLOW_COLUMNS: Final = tuple(name for name, _type in COLUMNS[4:])
_UINT_MAX: Final = {"UInt16": 0xFFFF, "UInt32": 0xFFFF_FFFF, "UInt64": 0xFFFF_FFFF_FFFF_FFFF}


def create_table_sql(database: str) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` statement (ClickHouse 18.16 and later).

    Daily partitions let a time range skip whole days and retention drop them (``ALTER TABLE ... DROP
    PARTITION``); within a day, rows sort by hour, then destination, so "the last hour" and "who talked to
    10.1.2.3:5432" both read a small range of the primary key.
    """
    cols = ",\n  ".join(f"`{name}` {typ}" for name, typ in COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{TABLE}` (\n  {cols},\n"
        "  `end_time` DateTime DEFAULT toDateTime(intDiv(end_ns, 1000000000))\n"
        ") ENGINE = MergeTree\n"
        "PARTITION BY toYYYYMMDD(end_time)\n"
        "ORDER BY (toStartOfHour(end_time), dst, dport, node_id, end_ns)"
    )


# -- the URL ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    """Where to export: a ClickHouse server's native-protocol port and a database."""

    host: str
    port: int
    database: str
    user: str = "default"
    password: str = ""

    @property
    def display(self) -> str:
        """The URL without credentials (for logs and ``meshctl status``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"clickhouse://{host}:{self.port}/{self.database}"


_EXAMPLE: Final = "e.g. clickhouse://127.0.0.1:9000/meshnode or clickhouse://USER:PASSWORD@HOST:9000/DATABASE"


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """``clickhouse://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE`` (port 9000 by default, the native protocol).

    Raises:
        ValueError: what is wrong with the URL and what one looks like.
    """
    text = str(url).strip()
    parts = urlsplit(text)
    if parts.scheme != "clickhouse":
        raise ValueError(f"{text!r} must start with clickhouse:// (the native protocol; {_EXAMPLE})")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: options after ? or # are not supported ({_EXAMPLE})")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port (a number 1-65535; {_EXAMPLE})") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{text!r} names no host ({_EXAMPLE})")
    if port == 0:
        raise ValueError(f"{text!r} has a bad port (a number 1-65535; {_EXAMPLE})")
    database = parts.path.strip("/")
    if not database:
        raise ValueError(f"{text!r} names no database: add /DATABASE ({_EXAMPLE})")
    if not _IDENT.match(database):
        raise ValueError(f"{text!r}: the database name {database!r} must be letters, digits and _, not starting "
                         "with a digit")
    return ClickHouseTarget(host=host, port=port or DEFAULT_PORT, database=database,
                            user=unquote(parts.username) if parts.username else "default",
                            password=unquote(parts.password or ""))


# -- batches ---------------------------------------------------------------------------------------------

def encode_batch(flows: FlowBatch, node_id: str, host: str, batch: int, row0: int = 0) -> bytes:
    """A spool payload: the flows' columns as ClickHouse will take them, with the batch's identity."""
    cols: dict[str, list[Any]] = {}
    types = dict(COLUMNS)
    for name in FLOW_COLUMNS:
        typ = types[name]
        col = flows[name]
        if typ == "String":
            cols[name] = ["" if v is None else str(v) for v in col.tolist()]
        elif typ.startswith("Enum8"):
            known = np.array([i in ENUM_NAMES[name] for i in range(256)])
            cols[name] = np.where(known[col], col, 0).tolist()  # a number the enum lacks: unknown
        else:
            cols[name] = np.clip(col, 0, _UINT_MAX[typ]).tolist() if col.dtype != np.uint64 else col.tolist()
    doc = {"node_id": node_id, "host": host, "batch": batch, "row0": row0, "rows": len(flows), "columns": cols}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


def decode_batch(payload: bytes) -> dict[str, Any]:
    """A spool payload back: ``node_id``, ``host``, ``batch``, ``row0``, ``rows``, ``columns``."""
    doc: dict[str, Any] = json.loads(zlib.decompress(payload))
    return doc


def insert_columns(doc: dict[str, Any], keep: Sequence[int] | None = None) -> list[list[Any]]:
    """The columns of an INSERT in ``COLUMNS`` order; only the rows at ``keep`` (indices in the batch)."""
    n = int(doc["rows"])
    index = range(n) if keep is None else keep
    rows = [int(doc["row0"]) + i for i in index]
    k = len(rows)
    out: list[list[Any]] = [[doc["node_id"]] * k, [doc["host"]] * k, [int(doc["batch"])] * k, rows]
    for name in FLOW_COLUMNS:
        col = doc["columns"].get(name)
        if col is None:  # a batch spooled by an older meshnode, before this column: its default
            col = [""] * n if dict(COLUMNS)[name] == "String" else [0] * n
        out.append(col if keep is None else [col[i] for i in index])
    return out


def add_columns_sql(database: str, existing: Iterable[str]) -> list[str]:
    """``ALTER TABLE`` statements adding the columns a table made by an older meshnode lacks (appended
    in ``COLUMNS`` order; ClickHouse 18.16 has no ``ADD COLUMN IF NOT EXISTS``)."""
    have = set(existing)
    return [f"ALTER TABLE `{database}`.`{TABLE}` ADD COLUMN `{name}` {typ}"
            for name, typ in COLUMNS if name not in have]


# -- the exporter ----------------------------------------------------------------------------------------

ClientFactory = Callable[[ClickHouseTarget], "Client"]


def default_client(target: ClickHouseTarget) -> Client:
    """A clickhouse-driver client (imported here: only a node that exports loads it)."""
    from clickhouse_driver import Client

    # The driver logs every failed connect as a warning with its traceback; while a server is down that is
    # one traceback per retry. The exporter logs each new failure once, with the spool's state.
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    return Client(host=target.host, port=target.port, database="default", user=target.user,
                  password=target.password, connect_timeout=3, send_receive_timeout=30,
                  client_name="meshnode")


class ClickHouseExporter:
    """A node service and record listener that exports each period's ended flows to ClickHouse.

    ``node_id`` is called per period (the mesh's key fingerprint, known once the mesh is built); ``host``
    is the node's host name.
    """

    name = "clickhouse"

    def __init__(self, target: ClickHouseTarget, spool_dir: Path, spool_bytes: int, *,
                 node_id: Callable[[], str], host: str, client: ClientFactory = default_client) -> None:
        self.target = target
        self.spool = Spool(spool_dir, spool_bytes)
        self.host = host
        self.send_failures = 0
        self.resent_rows_skipped = 0
        """Rows of a batch whose send failed ambiguously that the table turned out to have already."""
        self.cpu_s = 0.0
        """CPU seconds the exporter's thread used (encoding, spooling, sending)."""
        self.last_error = ""
        self._node_id = node_id
        self._client_factory = client
        self._client: Client | None = None
        self._ready = False  # database and table exist (checked once per connection)
        self._ambiguous = True  # the head batch may be in the table already (always so after a start)
        self._pending: list[tuple[FlowBatch, str, int]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S
        self._thread: threading.Thread | None = None
        if len(self.spool):
            log.info("clickhouse: %d batches (%d rows) wait in the spool from an earlier run", len(self.spool),
                     self.spool.counters()["queued_rows"])

    # -- node side (event loop) ---------------------------------------------------------------------------

    def on_period(self, summary: PeriodSummary, records: FlowBatch) -> None:
        """A record listener: hand the period's flows to the exporter's thread (never blocks; the thread
        picks the final records out, since even that copy takes tens of ms at 10,000 flows)."""
        if not records:
            return
        if self._thread is not None and not self._thread.is_alive():  # it failed (logged): count, keep nothing
            self.spool.count_dropped(int(np.count_nonzero(records["kind"] == _FINAL)))
            return
        with self._cond:
            self._pending.append((records, self._node_id(), int(summary.period_end_ns)))
            self._cond.notify()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meshnode-clickhouse", daemon=True)
        self._thread.start()
        log.info("clickhouse: exporting ended flows to %s.%s", self.target.display, TABLE)

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_FLUSH_S + 35.0)
        left = len(self.spool)
        if left:
            log.warning("clickhouse: %d batches wait in %s for the next start", left, self.spool.directory)

    def status(self) -> ExporterStatus:
        """Counters for ``meshctl status`` and the metrics."""
        counters = self.spool.counters()
        counters.update(send_failures=self.send_failures, resent_rows_skipped=self.resent_rows_skipped)
        return ExporterStatus(name=self.name, target=self.target.display, counters=counters,
                              last_error=self.last_error)

    # -- the thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        began = time.thread_time()
        try:
            self._loop(began)
        except Exception as exc:  # the node goes on without its export; the log and the counters say so
            log.exception("clickhouse: the exporter stopped; later periods are counted as dropped")
            self.last_error = f"the exporter stopped: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        finally:
            self.cpu_s = time.thread_time() - began
            if self._client is not None:
                self._client.disconnect()

    def _loop(self, began: float) -> None:
        try:  # the table at once, so that a wrong address or password shows in the log at start
            self._connect()
        except Exception as exc:  # batches wait in the spool until it works; this is no send yet
            self._failed(exc, counted=False)
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    wait = self._retry_at - time.monotonic() if len(self.spool) else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                pending, self._pending = self._pending, []
                stopping = self._stopping
            for flows, node_id, batch in pending:
                self._spool(flows, node_id, batch)
            if stopping:  # one more try, backoff or not; what is left waits on disk for the next start
                self._drain(deadline=time.monotonic() + STOP_FLUSH_S)
                return
            if time.monotonic() >= self._retry_at:
                self._drain(deadline=None)
            self.cpu_s = time.thread_time() - began

    def _spool(self, records: FlowBatch, node_id: str, batch: int) -> None:
        final = records["kind"] == _FINAL
        flows = records if final.all() else records.take(np.flatnonzero(final))
        for row0 in range(0, len(flows), MAX_BATCH_ROWS):  # a period without ended flows makes no batch
            part = flows if len(flows) <= MAX_BATCH_ROWS else \
                flows.take(np.arange(row0, min(row0 + MAX_BATCH_ROWS, len(flows))))
            payload = encode_batch(part, node_id, self.host, batch, row0)
            try:
                self.spool.append(payload, len(part))
            except OSError as exc:
                log.error("clickhouse: cannot spool a batch of %d rows in %s: %s", len(part),
                          self.spool.directory, exc)
                self.spool.count_dropped(len(part))

    def _drain(self, deadline: float | None) -> None:
        while (entry := self.spool.head()) is not None:
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                self._send(entry)
            except Exception as exc:  # any failure leaves the batch queued for the retry
                self._failed(exc)
                return
            self.spool.remove_sent(entry.seq)
            self._ambiguous = False
            self._backoff = RETRY_FIRST_S
            if self.last_error:
                log.info("clickhouse: %s reachable again; sending the %d queued batches", self.target.display,
                         len(self.spool))
                self.last_error = ""

    def _failed(self, exc: BaseException, *, counted: bool = True) -> None:
        self.send_failures += counted
        self._ambiguous = True
        self._ready = False
        if self._client is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close too
                self._client.disconnect()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if message != self.last_error:
            log.warning("clickhouse: cannot export to %s (%s); %d batches wait in %s, retrying", self.target.display,
                        message, len(self.spool), self.spool.directory)
        self.last_error = message
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)

    def _connect(self) -> Client:
        if self._client is None:
            self._client = self._client_factory(self.target)
        if not self._ready:
            db = self.target.database
            self._client.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
            self._client.execute(create_table_sql(db))
            have = [name for (name,) in self._client.execute(
                "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(table)s",
                {"db": db, "table": TABLE})]
            for sql in add_columns_sql(db, have):
                self._client.execute(sql)
            self._ready = True
        return self._client

    def _send(self, entry: SpoolEntry) -> None:
        client = self._connect()
        doc = decode_batch(entry.payload)
        keep: list[int] | None = None
        if self._ambiguous:
            # The rows' own end times bound the search: whole days and hours of the table are skipped.
            ends = doc["columns"]["end_ns"]
            present = {r for (r,) in client.execute(
                f"SELECT row FROM `{self.target.database}`.`{TABLE}` WHERE end_time >= toDateTime(%(first)s) "
                "AND end_time <= toDateTime(%(last)s) AND node_id = %(node)s AND batch = %(batch)s",
                {"first": min(ends) // 1_000_000_000, "last": max(ends) // 1_000_000_000, "node": doc["node_id"],
                 "batch": int(doc["batch"])})}
            if present:
                row0 = int(doc["row0"])
                keep = [i for i in range(int(doc["rows"])) if row0 + i not in present]
                self.resent_rows_skipped += int(doc["rows"]) - len(keep)
                log.info("clickhouse: %d of the %d rows of batch %s were in the table already; sending the rest",
                         int(doc["rows"]) - len(keep), doc["rows"], doc["batch"])
                if not keep:
                    return
        columns = ", ".join(f"`{name}`" for name, _type in COLUMNS)
        client.execute(f"INSERT INTO `{self.target.database}`.`{TABLE}` ({columns}) VALUES",
                       insert_columns(doc, keep), columnar=True, types_check=False)
