"""Store engines side by side (issue 12, item 5): today's row store, columnar chunks in SQLite, DuckDB.

    .venv/bin/python bench/bench_store_engines.py                  # 3.6 M rows: one hour at 1,000 flows/s
    .venv/bin/python bench/bench_store_engines.py --rows 600000    # scaled down

Every engine gets the same flows: 10 s export periods of ``--period-rows`` flows (1,000 flows/s), built as
``FlowBatch`` columns with numpy from a seed per period (so each engine's process regenerates exactly the
same data without holding the whole hour in memory; generation is not timed). Each engine runs in its own
process, so that its RSS (import, buffers, caches) is measured alone:

- ``rows``: today's ``meshnode.store.Store``, ``close_period`` once per period (one row per flow, 44 columns).
  Health runs the store's ``count_outcomes``; history pages run the store's own WHERE clause and columns,
  ordered newest first (the best this layout can do).
- ``chunks``: a prototype written here: one SQLite row per (period, chunk of flows), each column its own
  blob (numeric columns frame-of-reference in the narrowest unsigned width, constants as a header only, text
  dictionary-encoded per chunk), a per-chunk summary (row count, min/max end_ns, min start_ns) and per
  period pre-aggregated outcome counts by (comm, pid) and by (dst, dport) for Health. Key order
  (end_ns, table, id) holds inside a chunk (rows sorted by end_ns, ids given in that order).
- ``duckdb``: one table, one row per flow, inserted per period from a dict of numpy arrays, text as object
  arrays into VARCHAR (the fastest of the insert paths compared in the "duckdb insert paths" lines;
  ``memory_limit`` 512 MB).

Queries: Health = outcome counts grouped by (comm, pid), by (dst, dport) and by period over the newest
15 minutes (since not on a period edge, so partial periods are exercised); history = the 1,000 newest rows
(key order reversed) matching ``dport = 5432`` (~5 % of flows), ``dst = <rare address>`` (~0.1 %), and a
since/until window in the middle of the history with no filter. Pages are returned as Python rows.
Crash check (chunks, duckdb): a child writes periods, is SIGKILLed mid-run, the parent reopens and counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# The meshnode measured (``--rev``): a revision extracted by the parent, or the tree this file is in.
sys.path.insert(0, os.environ.get("BENCH_MESHNODE_SRC") or str(Path(__file__).resolve().parent.parent))

from meshnode._batch import FIELDS, TEXT_FIELDS, FlowBatch
from meshnode._model import ENUM_NUMBERS

REPO = Path(__file__).resolve().parent.parent
S = 1_000_000_000
T0 = 1_800_000_000 * S
PERIOD_NS = 10 * S
HEALTH_WINDOW_NS = 15 * 60 * S
PAGE = 1_000
MODERATE_PORT = 5432
RARE_DST = "10.250.0.9"
OUTCOME_NUMS = sorted(ENUM_NUMBERS["outcome"].values())  # 1..7
N_OUT = max(OUTCOME_NUMS) + 1
_OUT = ENUM_NUMBERS["outcome"]

# -- synthetic flows ------------------------------------------------------------------------------------

_NAMES = ["nginx", "envoy", "curl", "python3", "java", "node", "postgres", "redis-server", "sshd", "chronyd",
          "systemd-resolve", "kubelet", "containerd", "dockerd", "prometheus", "grafana", "etcd", "coredns",
          "apt", "git", "ruby", "php-fpm", "haproxy", "memcached", "kafka", "zookeeper", "vault", "consul"]
_RNG0 = np.random.default_rng(12)
N_PROCS = 300
PROC_COMM = np.array([_NAMES[i % len(_NAMES)] if i < 60 else f"{_NAMES[i % len(_NAMES)]}-w{i}"
                      for i in range(N_PROCS)], dtype=object)
PROC_PID = _RNG0.integers(300, 4_000_000, N_PROCS)
_CGROUPS = np.array([f"/system.slice/{n}.service" for n in _NAMES]
                    + [f"/kubepods.slice/kubepods-burstable.slice/pod{_RNG0.integers(1 << 62):016x}/c{i}"
                       for i in range(170)], dtype=object)
PROC_CGROUP_IX = _RNG0.integers(0, len(_CGROUPS), N_PROCS)
PROC_CGROUP = _CGROUPS[PROC_CGROUP_IX]
PROC_CGROUP_ID = 10_000 + PROC_CGROUP_IX
_PROC_W = 1.0 / np.arange(1, N_PROCS + 1) ** 0.9
_PROC_W /= _PROC_W.sum()
N_DSTS = 400
DST_ADDR = np.array([f"10.{i // 250}.{i % 250}.{7 + i % 13}" if i % 9 else f"fd00:5::{i:x}"
                     for i in range(N_DSTS)], dtype=object)
_PORTS = np.array([443, 443, 443, 443, 80, 80, 8080, 6379, 9092, 3306, 53, 53, 123, 22, 11211, 8443, 2379])
DST_PORT = _PORTS[_RNG0.integers(0, len(_PORTS), N_DSTS)]
_DST_W = 1.0 / np.arange(1, N_DSTS + 1) ** 0.8
_DST_W /= _DST_W.sum()
PG_ADDRS = np.array([f"10.40.1.{i}" for i in range(1, 9)], dtype=object)
LOCAL = np.array(["10.1.0.5", "10.1.0.5", "10.1.0.5", "fd00:1::5", "127.0.0.1"], dtype=object)
NO_REASONS: dict[str, int] = {}


def make_period(p: int, n: int) -> FlowBatch:
    """Period ``p``'s ``n`` flows (same seed, same flows), ending inside [T0 + p*10 s, T0 + (p+1)*10 s)."""
    rng = np.random.default_rng(1_000 + p)
    t0 = T0 + p * PERIOD_NS
    end = t0 + np.sort(rng.integers(0, PERIOD_NS, n))
    dur = np.minimum(rng.lognormal(17.5, 2.0, n).astype(np.int64), 600 * S)
    proc = rng.choice(N_PROCS, n, p=_PROC_W)
    dsti = rng.choice(N_DSTS, n, p=_DST_W)
    dst = DST_ADDR[dsti]
    dport = DST_PORT[dsti].astype(np.int64)
    pg = rng.random(n) < 0.05
    dst[pg] = PG_ADDRS[rng.integers(0, len(PG_ADDRS), int(pg.sum()))]
    dport[pg] = MODERATE_PORT
    rare = rng.random(n) < 0.001
    dst[rare] = RARE_DST
    dport[rare] = 9200
    sport = rng.integers(32768, 61000, n)
    inbound = rng.random(n) < 0.15
    # Inbound: the local listening port is sport, the remote client's ephemeral port dport.
    sport[inbound] = np.where(dport[inbound] == 53, 443, dport[inbound])
    dport[inbound] = rng.integers(1024, 65536, int(inbound.sum()))
    udp = np.isin(sport * inbound + dport * ~inbound, (53, 123))
    u = rng.random(n)
    tcp_out = np.select([u < 0.93, u < 0.96, u < 0.985], [_OUT["established"], _OUT["refused"], _OUT["timeout"]],
                        _OUT["reset"])
    udp_out = np.where(u < 0.95, _OUT["udp_answered"], _OUT["udp_unanswered"])
    outcome = np.where(udp, udp_out, tcp_out).astype(np.uint8)
    ok = np.isin(outcome, (_OUT["established"], _OUT["udp_answered"]))
    bytes_tx = (rng.lognormal(7, 2, n) * ok).astype(np.uint64)
    bytes_rx = (rng.lognormal(9, 2.5, n) * ok).astype(np.uint64)
    srtt = (rng.lognormal(7.5, 1.2, n) * ~udp).astype(np.int64)
    drops = np.empty(n, dtype=object)
    drops[:] = [NO_REASONS] * n
    cols: dict[str, Any] = {
        "flow_id": rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2),
        "src": LOCAL[rng.integers(0, len(LOCAL), n)], "sport": sport, "dst": dst, "dport": dport,
        "proto": np.where(udp, 17, 6).astype(np.uint8), "direction": np.where(inbound, 2, 1).astype(np.uint8),
        "pid": PROC_PID[proc], "comm": PROC_COMM[proc], "cgroup": PROC_CGROUP[proc],
        "cgroup_id": PROC_CGROUP_ID[proc].astype(np.uint64),
        "netns": np.where(rng.random(n) < 0.8, 4026531840, 4026532500).astype(np.uint64),
        "start_ns": end - dur, "end_ns": end, "bytes_tx": bytes_tx, "bytes_rx": bytes_rx,
        "packets_tx": (bytes_tx // 1400 + 2 + ok).astype(np.int64),
        "packets_rx": (bytes_rx // 1400 + 1 + ok).astype(np.int64), "outcome": outcome,
        "retransmits": (rng.random(n) < 0.03) * rng.integers(1, 9, n), "srtt_us": srtt,
        "min_rtt_us": srtt * 3 // 4, "max_rtt_us": srtt * 2, "cwnd": np.where(udp, 0, rng.integers(10, 90, n)),
        "cwnd_min": np.where(udp, 0, 10), "cwnd_max": np.where(udp, 0, rng.integers(10, 200, n)),
        "limited_by": rng.integers(0, 5, n).astype(np.uint8), "connect_us": srtt + rng.integers(0, 200, n),
        "resets_tx": (outcome == _OUT["reset"]).astype(np.int64),
        "resets_rx": (outcome == _OUT["refused"]).astype(np.int64), "drops": (rng.random(n) < 0.01) * 1,
        "kind": np.ones(n, np.uint8), "fidelity": np.ones(n, np.uint8), "rttvar_us": srtt // 4,
        "delivery_rate": (rng.lognormal(13, 2, n) * ok).astype(np.uint64),
        "lost": (rng.random(n) < 0.02) * 1, "reordering": np.where(udp, 0, 3),
        "service": np.full(n, "", dtype=object), "node_id": np.full(n, "", dtype=object),
        "drop_reasons": drops,
    }
    return FlowBatch(cols, n)


# -- helpers --------------------------------------------------------------------------------------------


def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(first run ms, median of the next ``repeat`` ms, the result)."""
    t = time.perf_counter()
    out = fn()
    first = (time.perf_counter() - t) * 1e3
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return first, statistics.median(times) if times else first, out


class Query:
    """A history page: newest first, ``limit`` rows, one optional equality filter, since/until."""

    def __init__(self, field: str | None = None, value: Any = None, since: int = 0, until: int = 0) -> None:
        self.field, self.value, self.since, self.until = field, value, since, until


# -- (1) today's row store ------------------------------------------------------------------------------


class RowEngine:
    name = "rows"

    def __init__(self, path: Path) -> None:
        from meshnode.store import Retention, Store

        self.store = Store(path / "meshnode.db", Retention(max_age_s=7 * 86400, max_bytes=64 << 30))
        self.seq = self.store.open_period(T0)

    def insert(self, p: int, batch: FlowBatch) -> None:
        end = T0 + (p + 1) * PERIOD_NS
        _, self.seq, _ = self.store.close_period(self.seq, end, batch, FlowBatch.empty(), next_start_ns=end)

    def checkpoint(self) -> None:
        self.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def health(self, since: int, until: int) -> dict[str, Any]:
        from meshnode.store import FlowQuery

        q = FlowQuery(since, until)
        with self.store.reader() as conn:
            return {g: {k: sum(v.values()) for k, v in self.store.count_outcomes(q, cols, conn, top=top)}
                    for g, cols, top in (("proc", ("comm", "pid"), 1_000), ("dst", ("dst", "dport"), 1_000),
                                         ("period", ("period",), 0))}

    def page(self, q: Query) -> list[tuple[Any, ...]]:
        from meshnode.store import FlowQuery
        from meshnode.store._store import _WIRE_COLUMNS, TABLE_FINAL, _fix_row

        fq = FlowQuery(q.since, q.until, equals={q.field: [q.value]} if q.field else None)
        with self.store.reader() as conn:
            where, args = self.store._where(TABLE_FINAL, fq, self.store._max_duration(conn))
            sql = (f"SELECT {_WIRE_COLUMNS}, end_ns, 0, id FROM flows{where} "
                   f"ORDER BY end_ns DESC, id DESC LIMIT {PAGE}")
            return [_fix_row(r) if r[-4] else r for r in conn.execute(sql, args)]

    def count(self) -> int:
        with self.store.reader() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM flows").fetchone()[0])

    def close(self) -> None:
        self.store.close()


# -- (2) columnar chunks in SQLite (prototype) ----------------------------------------------------------

_COL_FIELDS = [f for f in FIELDS if f != "drop_reasons"]
_FIELD_IX = {f: i for i, f in enumerate(FIELDS)}
_TEXT = frozenset(TEXT_FIELDS)
_ENUMS = frozenset(ENUM_NUMBERS)
_U64 = frozenset(("flow_id", "cgroup_id", "netns", "bytes_tx", "bytes_rx", "delivery_rate"))
_HDR = struct.Struct("<BQ")  # kind, base (u64 bit pattern)
_THDR = struct.Struct("<BII")  # kind, distinct strings, code bytes
_WIDTH = ((0xFF, np.uint8, 1), (0xFFFF, np.uint16, 2), (0xFFFF_FFFF, np.uint32, 3), (1 << 64, np.uint64, 4))
_DTYPE = {1: np.uint8, 2: np.uint16, 3: np.uint32, 4: np.uint64}
CHUNK_ROWS = 16_384


def enc_num(col: np.ndarray) -> bytes:
    """A numeric column: frame of reference (minus the chunk's minimum) in the narrowest width."""
    if col.dtype == np.uint8:
        return _HDR.pack(1, 0) + col.tobytes()
    lo, hi = int(col.min()), int(col.max())
    u = col.view(np.uint64)
    if lo == hi:
        return _HDR.pack(0, lo & ((1 << 64) - 1))
    base = np.uint64(lo & ((1 << 64) - 1))
    for limit, dt, kind in _WIDTH:
        if hi - lo <= limit:
            return _HDR.pack(kind, int(base)) + (u.view(np.uint64) - base).astype(dt).tobytes()
    raise AssertionError


def dec_num(blob: bytes, n: int, dtype: Any) -> np.ndarray:
    kind, base = _HDR.unpack_from(blob)
    if kind == 0:
        same = np.full(n, base, dtype=np.uint64)
        return same if dtype == np.uint64 else same.view(np.int64).astype(dtype, copy=False)
    raw = np.frombuffer(blob, _DTYPE[kind], offset=_HDR.size)
    if dtype == np.uint8:
        return raw
    out = raw.astype(np.uint64) + np.uint64(base)
    return out if dtype == np.uint64 else out.view(np.int64)


def enc_text(values: list[str]) -> tuple[bytes, np.ndarray, list[str]]:
    """A text column: codes (uint8/16/32) into the chunk's distinct strings, in first-seen order."""
    distinct = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(distinct)}
    dt = np.uint8 if len(distinct) <= 256 else np.uint16 if len(distinct) <= 65536 else np.uint32
    codes = np.fromiter(map(index.__getitem__, values), dtype=dt, count=len(values))
    if len(distinct) == 1:
        return _THDR.pack(0, 1, 0) + distinct[0].encode(), codes, distinct
    cb = codes.tobytes()
    return _THDR.pack(codes.itemsize, len(distinct), len(cb)) + cb + "\0".join(distinct).encode(), codes, distinct


def dec_text_dict(blob: bytes, n: int) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct strings) of a text column."""
    width, _, nb = _THDR.unpack_from(blob)
    if width == 0:
        return np.zeros(n, np.uint8), [blob[_THDR.size:].decode()]
    codes = np.frombuffer(blob, {1: np.uint8, 2: np.uint16, 4: np.uint32}[width], count=n, offset=_THDR.size)
    return codes, blob[_THDR.size + nb:].decode().split("\0")


def group_counts(codes: np.ndarray, names: list[str], num: np.ndarray, outcome: np.ndarray
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Outcome counts per (text code, number): (names, keys = code << 32 | number, counts[k, outcome])."""
    key = codes.astype(np.int64) << 32 | num.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    counts = np.bincount(inv * N_OUT + outcome, minlength=len(uniq) * N_OUT).reshape(len(uniq), N_OUT)
    return names, uniq, counts.astype(np.int32)


_GHDR = struct.Struct("<II")


def pack_groups(names: list[str], keys: np.ndarray, counts: np.ndarray) -> bytes:
    return _GHDR.pack(len(keys), len(names)) + keys.tobytes() + counts.tobytes() + "\0".join(names).encode()


def unpack_groups(blob: bytes) -> tuple[list[str], np.ndarray, np.ndarray]:
    k, _ = _GHDR.unpack_from(blob)
    keys = np.frombuffer(blob, np.int64, k, _GHDR.size)
    counts = np.frombuffer(blob, np.int32, k * N_OUT, _GHDR.size + 8 * k).reshape(k, N_OUT)
    return blob[_GHDR.size + 8 * k + 4 * k * N_OUT:].decode().split("\0"), keys, counts


def merge_groups(parts: list[tuple[list[str], np.ndarray, np.ndarray]], top: int) -> dict[Any, int]:
    """Sum per-chunk group counts (each with its own dictionary) into the ``top`` largest groups."""
    index: dict[str, int] = {}
    keys, counts = [], []
    for names, k, c in parts:
        gid = np.fromiter((index.setdefault(s, len(index)) for s in names), np.int64, len(names))
        keys.append(gid[k >> 32] << 32 | (k & 0xFFFF_FFFF))
        counts.append(c)
    if not keys:
        return {}
    uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
    n = np.bincount(inv, weights=np.concatenate(counts).sum(1), minlength=len(uniq)).astype(np.int64)
    names = list(index)
    best = np.lexsort((uniq, -n))[:top]
    return {(names[int(uniq[i]) >> 32], int(uniq[i]) & 0xFFFF_FFFF): int(n[i]) for i in best if n[i]}


class ChunkEngine:
    """The prototype: chunks of columns in SQLite (WAL), one transaction per period."""

    name = "chunks"

    def __init__(self, path: Path, max_bytes: int = 64 << 30, max_age_s: float = 7 * 86400) -> None:
        self.path = path / "chunks.db"
        self.max_bytes, self.max_age_ns = max_bytes, int(max_age_s * S)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            "CREATE TABLE IF NOT EXISTS periods (seq INTEGER PRIMARY KEY, start_ns INTEGER, end_ns INTEGER, "
            " rows INTEGER);"
            "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, period INTEGER NOT NULL, "
            " n INTEGER NOT NULL, first_id INTEGER NOT NULL, min_end INTEGER NOT NULL, max_end INTEGER NOT NULL,"
            " min_start INTEGER NOT NULL, bytes INTEGER NOT NULL);"
            "CREATE INDEX IF NOT EXISTS chunks_end ON chunks (max_end);"
            # key = chunk id * 64 + field index: a column is one rowid lookup and its own overflow chain.
            "CREATE TABLE IF NOT EXISTS cols (key INTEGER PRIMARY KEY, data BLOB NOT NULL);"
            # Outcome counts per chunk by (comm, pid) (kind 0) and (dst, dport) (kind 1), see ``group_counts``.
            "CREATE TABLE IF NOT EXISTS agg (chunk INTEGER NOT NULL, period INTEGER NOT NULL, kind INTEGER NOT NULL,"
            " data BLOB NOT NULL, PRIMARY KEY (chunk, kind));"
            "CREATE INDEX IF NOT EXISTS agg_period ON agg (period);"
        )
        row = self.db.execute("SELECT COALESCE(MAX(first_id + n), 1), COALESCE(MAX(id), 0) FROM chunks").fetchone()
        self.next_id, self.next_chunk = int(row[0]), int(row[1]) + 1
        self.encode_s = 0.0

    # writing

    def insert(self, p: int, batch: FlowBatch) -> None:
        t = time.perf_counter()
        order = np.argsort(batch["end_ns"], kind="stable")
        if not np.all(order[1:] > order[:-1]):
            batch = batch.take(order)
        chunk_rows, aggs = [], []
        for lo in range(0, batch.n, CHUNK_ROWS):
            part = batch if batch.n <= CHUNK_ROWS else batch.take(np.arange(lo, min(lo + CHUNK_ROWS, batch.n)))
            chunk_rows.append(self._encode_chunk(p, part))
            aggs += self._aggregate(chunk_rows[-1][0][0], p, part, chunk_rows[-1][2])
        self.encode_s += time.perf_counter() - t
        start, end = T0 + p * PERIOD_NS, T0 + (p + 1) * PERIOD_NS
        with self._tx():
            self.db.execute("INSERT INTO periods VALUES (?, ?, ?, ?)", (p, start, end, batch.n))
            for head, blobs, _ in chunk_rows:
                self.db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", head)
                self.db.executemany("INSERT INTO cols VALUES (?, ?)", blobs)
            self.db.executemany("INSERT INTO agg VALUES (?, ?, ?, ?)", aggs)
            self._retain(end)

    def _encode_chunk(self, p: int, b: FlowBatch) -> tuple[tuple[Any, ...], list[tuple[int, bytes]], dict]:
        cid = self.next_chunk
        self.next_chunk += 1
        blobs, codes = [], {}
        for name in _COL_FIELDS:
            col = b[name]
            if name in _TEXT:
                blob, codes[name], distinct = enc_text(col.tolist())
                codes[name + "#"] = distinct
            else:
                blob = enc_num(col)
            blobs.append((cid * 64 + _FIELD_IX[name], blob))
        drops = [json.dumps(d, separators=(",", ":")) if d else "" for d in b["drop_reasons"].tolist()]
        blobs.append((cid * 64 + _FIELD_IX["drop_reasons"], enc_text(drops)[0]))
        end = b["end_ns"]
        head = (cid, p, b.n, self.next_id, int(end[0]), int(end[-1]), int(b["start_ns"].min()),
                sum(len(x) for _, x in blobs))
        self.next_id += b.n
        return head, blobs, codes

    @staticmethod
    def _aggregate(cid: int, p: int, b: FlowBatch, codes: dict) -> list[tuple[Any, ...]]:
        out = b["outcome"]
        return [(cid, p, kind, pack_groups(*group_counts(codes[text], codes[text + "#"], b[num], out)))
                for kind, text, num in ((0, "comm", "pid"), (1, "dst", "dport"))]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _retain(self, now_ns: int) -> None:
        """Whole chunks go, oldest first: past the age, then while the stored bytes exceed the bound."""
        old = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE max_end < ?", (now_ns - self.max_age_ns,))]
        total = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM chunks").fetchone()[0]
        if total > self.max_bytes:
            for cid, nbytes in self.db.execute("SELECT id, bytes FROM chunks ORDER BY id"):
                if total <= self.max_bytes:
                    break
                old.append(cid)
                total -= nbytes
        for cid in old:
            self.db.execute("DELETE FROM cols WHERE key >= ? AND key < ?", (cid * 64, cid * 64 + 64))
            self.db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        if old:
            self.db.execute("DELETE FROM agg WHERE chunk NOT IN (SELECT id FROM chunks)")
            self.db.execute("DELETE FROM periods WHERE seq < (SELECT MIN(period) FROM chunks)")

    def checkpoint(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # reading

    def _col(self, conn: sqlite3.Connection, cid: int, n: int, name: str, rows: np.ndarray | None = None
             ) -> np.ndarray:
        """A column of a chunk, or only its ``rows`` (decoded after selecting them)."""
        blob = conn.execute("SELECT data FROM cols WHERE key = ?", (cid * 64 + _FIELD_IX[name],)).fetchone()[0]
        if name in _TEXT or name == "drop_reasons":
            codes, distinct = dec_text_dict(blob, n)
            return np.array(distinct, dtype=object)[codes if rows is None else codes[rows]]
        dtype = np.uint8 if name in _ENUMS else np.uint64 if name in _U64 else np.int64
        if rows is None:
            return dec_num(blob, n, dtype)
        kind, base = _HDR.unpack_from(blob)
        if kind == 0:
            return dec_num(blob, len(rows), dtype)
        raw = np.frombuffer(blob, _DTYPE[kind], offset=_HDR.size)[rows]
        if dtype == np.uint8:
            return raw
        out = raw.astype(np.uint64) + np.uint64(base)
        return out if dtype == np.uint64 else out.view(np.int64)

    def health(self, since: int, until: int, top: int = 1_000) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        parts: dict[str, list[tuple[list[str], np.ndarray, np.ndarray]]] = {"proc": [], "dst": []}
        periods: dict[int, np.ndarray] = {}
        try:
            conn.execute("BEGIN")
            # Chunks whose every flow is in range are read from the aggregates, the others from columns.
            for period, kind, blob in conn.execute("SELECT period, kind, data FROM agg WHERE chunk IN "
                                                   "(SELECT id FROM chunks WHERE min_end >= ? AND max_end <= ?)",
                                                   (since, until)):
                names, keys, counts = unpack_groups(blob)
                parts["proc" if kind == 0 else "dst"].append((names, keys, counts))
                if kind == 0:
                    periods[period] = periods.get(period, 0) + counts.sum(0)
            edge = conn.execute("SELECT id, period, n FROM chunks WHERE max_end >= ? AND min_start <= ? "
                                "AND NOT (min_end >= ? AND max_end <= ?)", (since, until, since, until)).fetchall()
            for cid, period, n in edge:
                end = self._col(conn, cid, n, "end_ns")
                m = (end >= since) & (self._col(conn, cid, n, "start_ns") <= until)
                if not m.any():
                    continue
                out = self._col(conn, cid, n, "outcome")[m]
                for g, text, num in (("proc", "comm", "pid"), ("dst", "dst", "dport")):
                    blob = conn.execute("SELECT data FROM cols WHERE key = ?",
                                        (cid * 64 + _FIELD_IX[text],)).fetchone()[0]
                    codes, names = dec_text_dict(blob, n)
                    grouped = group_counts(codes[m], names, self._col(conn, cid, n, num)[m], out)
                    parts[g].append(grouped)
                    if g == "proc":
                        periods[period] = periods.get(period, 0) + grouped[2].sum(0)
            conn.execute("COMMIT")
        finally:
            conn.close()
        res: dict[str, dict[Any, int]] = {g: merge_groups(p, top) for g, p in parts.items()}
        res["period"] = {(k,): int(v.sum()) for k, v in periods.items() if v.sum()}
        return res

    def page(self, q: Query) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            conn.execute("BEGIN")
            return self._page(conn, q)
        finally:
            conn.close()

    def _page(self, conn: sqlite3.Connection, q: Query) -> list[tuple[Any, ...]]:
        where, args = ["max_end >= ?"], [q.since]
        if q.until:
            where.append("min_start <= ?")
            args.append(q.until)
        chunks = conn.execute(f"SELECT id, n, first_id, max_end FROM chunks WHERE {' AND '.join(where)} "
                              "ORDER BY max_end DESC", args).fetchall()
        hits: list[tuple[int, int, int, np.ndarray, np.ndarray]] = []
        have, floor = 0, -1
        for cid, n, first_id, max_end in chunks:
            if have >= PAGE and max_end < floor:
                break  # no row of this or any later chunk can be among the newest PAGE
            mask = None
            if q.field is not None:
                if q.field in _TEXT:
                    blob = conn.execute("SELECT data FROM cols WHERE key = ?",
                                        (cid * 64 + _FIELD_IX[q.field],)).fetchone()[0]
                    codes, distinct = dec_text_dict(blob, n)
                    if q.value not in distinct:
                        continue  # the chunk's dictionary is its zone map for text
                    mask = codes == distinct.index(q.value)
                else:
                    col = self._col(conn, cid, n, q.field)
                    mask = col == q.value
                if not mask.any():
                    continue
            end = self._col(conn, cid, n, "end_ns")
            if q.since:
                mask = end >= q.since if mask is None else mask & (end >= q.since)
            if q.until:
                m2 = self._col(conn, cid, n, "start_ns") <= q.until
                mask = m2 if mask is None else mask & m2
            idx = np.arange(n) if mask is None else np.flatnonzero(mask)
            if not len(idx):
                continue
            idx = idx[-PAGE:]  # rows are in key order inside a chunk
            hits.append((cid, n, first_id, idx, end[idx]))
            have += len(idx)
            if have >= PAGE:
                ends = np.concatenate([h[4] for h in hits])
                floor = int(np.partition(ends, len(ends) - PAGE)[len(ends) - PAGE])
        # Newest PAGE keys (end_ns, id) over all hits, then decode only those rows' columns.
        keys_end = np.concatenate([h[4] for h in hits]) if hits else np.zeros(0, np.int64)
        keys_id = np.concatenate([h[2] + h[3] for h in hits]) if hits else np.zeros(0, np.int64)
        which = np.concatenate([np.full(len(h[3]), i) for i, h in enumerate(hits)]) if hits else keys_end
        pos = np.concatenate([h[3] for h in hits]) if hits else keys_end
        top = np.lexsort((keys_id, keys_end))[::-1][:PAGE]
        cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
        gathered = []
        for i, (cid, n, _first, _idx, _end) in enumerate(hits):
            sel = top[which[top] == i]
            if not len(sel):
                continue
            gathered.append(sel)
            for f in FIELDS:
                cols[f].append(self._col(conn, cid, n, f, pos[sel]))
        if not gathered:
            return []
        # Rows back in key order (newest first): each column concatenated, permuted once, then to Python.
        rank = np.empty(len(keys_end), np.int64)
        rank[top] = np.arange(len(top))
        perm = np.argsort(rank[np.concatenate(gathered)])
        lists = [np.concatenate(cols[f])[perm].tolist() for f in FIELDS]
        return list(zip(*lists, keys_end[top].tolist(), [0] * len(top), keys_id[top].tolist(), strict=True))

    def count(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.checkpoint()
        self.db.close()


# -- (3) DuckDB ------------------------------------------------------------------------------------------


def _duck_type(name: str, text_codes: bool) -> str:
    if name in _TEXT or name == "drop_reasons":
        return "UINTEGER" if text_codes and name != "drop_reasons" else "VARCHAR"
    if name in _ENUMS:
        return "UTINYINT"
    return "UBIGINT" if name in _U64 else "BIGINT"


class DuckEngine:
    """One DuckDB table, one row per flow; text as VARCHAR, or as codes into a node-wide dictionary."""

    name = "duckdb"

    def __init__(self, path: Path, text_codes: bool = False, memory_limit: str = "512MB",
                 appender: bool = False) -> None:
        import duckdb

        self.text_codes, self.use_appender = text_codes, appender
        self.con = duckdb.connect(str(path / "flows.duckdb"), config={"memory_limit": memory_limit})
        cols = ", ".join(f"{f} {_duck_type(f, text_codes)}" for f in FIELDS)
        self.con.execute(f"CREATE TABLE IF NOT EXISTS flows (id BIGINT, period INTEGER, {cols})")
        self.con.execute("CREATE TABLE IF NOT EXISTS strings (code UINTEGER, s VARCHAR)")
        self.con.execute("CREATE TABLE IF NOT EXISTS periods (seq INTEGER, start_ns BIGINT, end_ns BIGINT, "
                         "rows INTEGER)")
        self.strings = [r[0] for r in self.con.execute("SELECT s FROM strings ORDER BY code").fetchall()]
        self.codes = {s: i for i, s in enumerate(self.strings)}
        self.next_id = int(self.con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM flows").fetchone()[0])
        self.max_dur = int(self.con.execute("SELECT COALESCE(MAX(end_ns - start_ns), 0) FROM flows").fetchone()[0])

    def _encode_text(self, values: list[str], new: list[tuple[int, str]]) -> np.ndarray:
        codes = self.codes
        for v in dict.fromkeys(values):
            if v not in codes:
                codes[v] = len(self.strings)
                self.strings.append(v)
                new.append((codes[v], v))
        return np.fromiter(map(codes.__getitem__, values), dtype=np.uint32, count=len(values))

    def insert(self, p: int, batch: FlowBatch) -> None:
        n = batch.n
        data: dict[str, Any] = {"id": np.arange(self.next_id, self.next_id + n, dtype=np.int64),
                                "period": np.full(n, p, dtype=np.int32)}
        new: list[tuple[int, str]] = []
        for f in FIELDS:
            col = batch[f]
            if f == "drop_reasons":
                data[f] = np.array([json.dumps(d) if d else None for d in col.tolist()], dtype=object)
            elif f in _TEXT and self.text_codes:
                data[f] = self._encode_text(col.tolist(), new)
            else:
                data[f] = col
        self.next_id += n
        self.max_dur = max(self.max_dur, int((batch["end_ns"] - batch["start_ns"]).max()))
        self.con.execute("BEGIN")
        if self.use_appender:
            app = self.con.appender("flows")
            app.append_rows(zip(*(data[k].tolist() for k in data), strict=True))
            app.flush()
        else:
            self.con.register("batch", data)
            self.con.execute("INSERT INTO flows SELECT * FROM batch")
            self.con.unregister("batch")
        if new:
            self.con.executemany("INSERT INTO strings VALUES (?, ?)", new)
        self.con.execute("INSERT INTO periods VALUES (?, ?, ?, ?)",
                         (p, T0 + p * PERIOD_NS, T0 + (p + 1) * PERIOD_NS, n))
        self.con.execute("COMMIT")

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")

    def _name(self, code: int) -> str:
        return self.strings[code] if self.text_codes else code  # type: ignore[return-value]

    def health(self, since: int, until: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sums = ", ".join(f"count_if(outcome = {i})" for i in OUTCOME_NUMS)
        cur = self.con.cursor()
        for g, cols in (("proc", "comm, pid"), ("dst", "dst, dport"), ("period", "period")):
            limit = "" if g == "period" else " LIMIT 1000"
            rows = cur.execute(f"SELECT {cols}, count(*) AS n, {sums} FROM flows WHERE end_ns >= ? AND start_ns <= ? "
                               f"AND end_ns <= ? GROUP BY {cols} ORDER BY n DESC{limit}",
                               (since, until, until + self.max_dur)).fetchall()
            if g == "period":
                out[g] = {(r[0],): r[1] for r in rows}
            else:
                out[g] = {(self._name(r[0]), r[1]): r[2] for r in rows}
        return out

    def page(self, q: Query) -> list[tuple[Any, ...]]:
        where, args = [], []
        if q.field is not None:
            value = self.codes.get(q.value, 1 << 31) if q.field in _TEXT and self.text_codes else q.value
            where.append(f"{q.field} = ?")
            args.append(value)
        if q.since:
            where.append("end_ns >= ?")
            args.append(q.since)
        if q.until:
            where += ["start_ns <= ?", "end_ns <= ?"]
            args += [q.until, q.until + self.max_dur]
        w = f" WHERE {' AND '.join(where)}" if where else ""
        res = self.con.cursor().execute(f"SELECT {', '.join(FIELDS)}, end_ns, 0 AS tbl, id FROM flows{w} "
                                        f"ORDER BY end_ns DESC, id DESC LIMIT {PAGE}", args).fetchnumpy()
        strings = np.array(self.strings, dtype=object)
        lists = []
        for k, col in res.items():
            if k in _TEXT and self.text_codes:
                col = strings[col.astype(np.int64)]
            lists.append(col.tolist())
        return list(zip(*lists, strict=True))

    def count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM flows").fetchone()[0])

    def close(self) -> None:
        self.con.close()


ENGINES: dict[str, Callable[[Path], Any]] = {"rows": RowEngine, "chunks": ChunkEngine, "duckdb": DuckEngine}


# -- one engine's run (in its own process) --------------------------------------------------------------


def run_engine(name: str, rows: int, period_rows: int, work: Path, repeat: int) -> dict[str, Any]:
    periods = max(1, rows // period_rows)
    make_period(0, 10)  # warm numpy paths before the baseline
    rss0, _ = rss_kb()
    t = time.perf_counter()
    eng = ENGINES[name](work)
    open_ms = (time.perf_counter() - t) * 1e3
    rss_open, _ = rss_kb()
    ins = gen = 0.0
    for p in range(periods):
        t = time.perf_counter()
        batch = make_period(p, period_rows)
        gen += time.perf_counter() - t
        t = time.perf_counter()
        eng.insert(p, batch)
        ins += time.perf_counter() - t
    del batch
    eng.checkpoint()
    n = periods * period_rows
    rss_ins, _ = rss_kb()
    size = dir_bytes(work)
    until = T0 + periods * PERIOD_NS
    since = max(T0, until - HEALTH_WINDOW_NS) + 3 * S
    mid = T0 + (periods // 2) * PERIOD_NS
    res: dict[str, Any] = {
        "engine": name, "rows": eng.count(), "periods": periods, "insert_us": ins / n * 1e6,
        "encode_us": getattr(eng, "encode_s", 0.0) / n * 1e6, "gen_us": gen / n * 1e6, "open_ms": open_ms,
        "bytes_per_flow": size / n, "db_mb": size / 2**20, "rss_open_mb": (rss_open - rss0) / 1024,
        "rss_insert_mb": (rss_ins - rss0) / 1024,
    }
    checks: dict[str, Any] = {}
    queries = {
        "health": lambda: eng.health(since, until),
        "page_dport": lambda: eng.page(Query("dport", MODERATE_PORT)),
        "page_rare": lambda: eng.page(Query("dst", RARE_DST)),
        "page_window": lambda: eng.page(Query(None, None, mid - 600 * S, mid)),
    }
    for qname, fn in queries.items():
        first, med, out = timed(fn, repeat)
        res[qname + "_ms"], res[qname + "_first_ms"] = med, first
        if qname == "health":
            checks[qname] = {g: [len(d), sum(d.values())] for g, d in out.items()}
        else:
            checks[qname] = [len(out), [list(r[-3:]) for r in out[:2]], list(out[-1][-3:]) if out else None,
                             [out[0][_FIELD_IX[f]] for f in ("dst", "dport", "comm", "outcome")] if out else None]
    rss_end, hwm = rss_kb()
    res["rss_end_mb"], res["hwm_mb"] = (rss_end - rss0) / 1024, (hwm - rss0) / 1024
    res["checks"] = checks
    eng.close()
    return res


def duck_insert_paths(period_rows: int, work: Path, periods: int) -> dict[str, float]:
    """us/flow of DuckDB's insert paths over the first periods (fresh database each)."""
    out = {}
    variants = {"numpy dict, text as objects": {"text_codes": False},
                "numpy dict, text as codes": {"text_codes": True},
                "appender append_rows": {"text_codes": True, "appender": True}}
    batches = [make_period(p, period_rows) for p in range(periods)]
    for label, kw in variants.items():
        d = work / label.replace(" ", "_").replace(",", "")
        d.mkdir()
        eng = DuckEngine(d, **kw)
        todo = batches[:1] if kw.get("appender") else batches
        eng.insert(0, make_period(999, 100))  # first-insert costs apart
        t = time.perf_counter()
        for p, b in enumerate(todo, 1):
            eng.insert(p, b)
        out[label] = (time.perf_counter() - t) / (len(todo) * period_rows) * 1e6
        eng.close()
    return out


# -- crash check ----------------------------------------------------------------------------------------


def crash_child(name: str, work: Path, period_rows: int) -> None:
    eng = ENGINES[name](work)
    for p in range(10_000):
        eng.insert(p, make_period(p, period_rows))
        print(f"committed {p + 1}", flush=True)


def crash_check(name: str, work: Path, period_rows: int, kill_after: int) -> dict[str, Any]:
    """SIGKILL a writer after ``kill_after`` commits plus a random part of a period; reopen and count."""
    work.mkdir()
    child = subprocess.Popen([sys.executable, __file__, "--crash-child", name, "--work", str(work),
                              "--period-rows", str(period_rows)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    committed = 0
    for line in child.stdout:
        committed = int(line.split()[1])
        if committed >= kill_after:
            time.sleep(np.random.default_rng().uniform(0.0, 0.05))
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout:  # lines written before the kill
        committed = int(line.split()[1])
    t = time.perf_counter()
    eng = ENGINES[name](work)
    reopen_ms = (time.perf_counter() - t) * 1e3
    rows = eng.count()
    ok = rows in (committed * period_rows, (committed + 1) * period_rows)
    extra = ""
    if name == "chunks":
        extra = eng.db.execute("PRAGMA integrity_check").fetchone()[0]
    eng.close()
    return {"engine": name, "reported_periods": committed, "rows": rows, "ok": ok, "reopen_ms": reopen_ms,
            "integrity": extra}


# -- report ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3_600_000, help="flows in the history (default 3.6 M)")
    ap.add_argument("--period-rows", type=int, default=10_000, help="flows per 10 s period (1,000 flows/s)")
    ap.add_argument("--engines", default="rows,chunks,duckdb")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each query after the first")
    ap.add_argument("--no-crash", action="store_true")
    ap.add_argument("--rev", default="01e9dbf",
                    help="git revision of meshnode to measure (its Store is 'rows'; default 01e9dbf, the row "
                         "store); 'worktree' for the tree as it is")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--crash-child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.crash_child:
        crash_child(args.crash_child, Path(args.work), args.period_rows)
        return 0
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.rows, args.period_rows, Path(args.work), args.repeat)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        if args.rev != "worktree":
            src = tmp / "src"
            src.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev, "meshnode"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            os.environ["BENCH_MESHNODE_SRC"] = str(src)
        results = []
        for name in args.engines.split(","):
            work = tmp / name
            work.mkdir()
            t = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--engine", name, "--work", str(work), "--rows",
                                  str(args.rows), "--period-rows", str(args.period_rows), "--repeat",
                                  str(args.repeat)], capture_output=True, text=True, check=False)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"# {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            shutil.rmtree(work)
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.rev], capture_output=True,
                             text=True, check=False).stdout.strip() if args.rev != "worktree" else "worktree"
        print(f"meshnode measured: {rev}")
        report(results, args)
        if "duckdb" in args.engines:
            (tmp / "duck-paths").mkdir()
            paths = duck_insert_paths(args.period_rows, tmp / "duck-paths", 5)
            print("\nduckdb insert paths (5 periods; appender 1 period), us/flow incl. encoding:")
            for label, us in paths.items():
                print(f"  {label:32} {us:7.2f}")
        if not args.no_crash:
            print("\ncrash check (SIGKILL mid-run, reopen, count):")
            for name in ("chunks", "duckdb"):
                if name in args.engines:
                    c = crash_check(name, tmp / f"crash-{name}", args.period_rows, 6)
                    print(f"  {name:8} periods reported committed {c['reported_periods']}, rows after reopen "
                          f"{c['rows']:,} -> {'OK' if c['ok'] else 'LOST/EXTRA'}; reopen {c['reopen_ms']:.0f} ms"
                          + (f"; integrity_check {c['integrity']}" if c["integrity"] else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = [
        ("rows stored", lambda r: f"{r['rows']:,}"),
        ("insert us/flow (incl. encode)", lambda r: f"{r['insert_us']:.2f}"),
        ("  of which encode us/flow", lambda r: f"{r['encode_us']:.2f}" if r["encode_us"] else "-"),
        ("db bytes/flow", lambda r: f"{r['bytes_per_flow']:.0f}"),
        ("db MiB", lambda r: f"{r['db_mb']:.0f}"),
        ("RSS added: open MiB", lambda r: f"{r['rss_open_mb']:.0f}"),
        ("RSS added: after insert MiB", lambda r: f"{r['rss_insert_mb']:.0f}"),
        ("RSS added: after queries MiB", lambda r: f"{r['rss_end_mb']:.0f}"),
        ("peak RSS added MiB", lambda r: f"{r['hwm_mb']:.0f}"),
        ("Health 15 min ms (first)", lambda r: f"{r['health_ms']:.1f} ({r['health_first_ms']:.0f})"),
        ("page dport=5432 ms (first)", lambda r: f"{r['page_dport_ms']:.1f} ({r['page_dport_first_ms']:.0f})"),
        ("page dst=rare ms (first)", lambda r: f"{r['page_rare_ms']:.1f} ({r['page_rare_first_ms']:.0f})"),
        ("page since/until ms (first)", lambda r: f"{r['page_window_ms']:.1f} ({r['page_window_first_ms']:.0f})"),
    ]
    periods = results[0]["periods"]
    print(f"store engines: {periods} periods x {args.period_rows:,} flows = {periods * args.period_rows:,} rows; "
          f"Health over the newest {min(periods * 10, 900)} s less 3 s; pages of {PAGE} newest rows; "
          f"query times = median of {args.repeat} after a first run")
    width = 31
    print(f"{'':{width}}" + "".join(f"{r['engine']:>16}" for r in results))
    for label, fmt in rows:
        print(f"{label:{width}}" + "".join(f"{fmt(r):>16}" for r in results))
    base = results[0]["checks"]
    same = {r["engine"]: all(r["checks"][k] == base[k] for k in base) for r in results[1:]}
    print("same answers as " + results[0]["engine"] + ": "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    for r in results:
        if not same.get(r["engine"], True):
            for k in base:
                if r["checks"][k] != base[k]:
                    print(f"  {r['engine']} {k}: {r['checks'][k]} vs {base[k]}")
    if len(results) > 1:
        by = {r["engine"]: r for r in results}
        print("\nverdict: " + verdict(by))


def verdict(by: dict[str, dict[str, Any]]) -> str:
    goals = {"insert_us": 1.0, "health_ms": 200.0, "page_dport_ms": 50.0, "page_rare_ms": 50.0,
             "page_window_ms": 50.0}
    parts = []
    for name, r in by.items():
        met = [k for k, g in goals.items() if r[k] <= g]
        parts.append(f"{name} meets {len(met)}/{len(goals)} goals ({', '.join(met) or 'none'})")
    return "; ".join(parts) + ". Goals: insert <= 1 us/flow, Health <= 200 ms, pages <= 50 ms."


if __name__ == "__main__":
    sys.exit(main())
