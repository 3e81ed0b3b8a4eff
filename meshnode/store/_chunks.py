"""Final flows stored by column: one chunk per export period, read with numpy.

A row per flow cost ~6 us of SQLite insert (44 values bound and encoded) plus ~2 us of Python to make the
row: more than the node's whole CPU budget per flow. A chunk holds a period's final flows as one BLOB: each
numeric column as its raw little-endian array, each text column dictionary-encoded (the distinct strings
once, then a uint32 code a row), ``drop_reasons`` as JSON texts the same way. Writing one is a handful of
``tobytes`` calls (~0.5 us a flow); reading one is ``frombuffer`` views.

Queries keep the row store's semantics exactly: the key of a flow is ``(end_ns, TABLE_FINAL, id)`` with ids
given out in order at each period's close; filters are evaluated as masks over a chunk's columns (text
predicates once per distinct string, then taken through the codes); results come out in key order, merged
lazily across chunks (their end_ns ranges overlap a little: a flow that ended just before a period boundary
may be polled after it).
"""

from __future__ import annotations

import heapq
import json
import struct
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np

from meshnode._batch import DTYPES, FIELDS, OBJECT_FIELDS, FlowBatch, factorize, identities

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from meshnode._dns import DnsBatch

_MAGIC: Final = b"MNC1"
_HEAD: Final = struct.Struct("<4sI")  # magic, header length
_U64_MASK: Final = (1 << 64) - 1
_WIDTHS: Final = ((0xFF, np.uint8), (0xFFFF, np.uint16), (0xFFFF_FFFF, np.uint32), (_U64_MASK, np.uint64))


def encode_chunk(flows: FlowBatch | DnsBatch, ids: NDArray[np.int64] | None = None,
                 fields: Sequence[str] = FIELDS, objects: Collection[str] = OBJECT_FIELDS) -> bytes:
    """A batch as one chunk: a JSON header (per column: kind, offset, length, and the dictionary of a text
    column), then the columns' bytes. ``ids`` are the rows' ids when they are not consecutive from the
    chunk's ``first_id`` (a chunk that retention cut). ``fields`` and ``objects`` name the columns kept and
    the text ones among them (a flow batch's by default; ``DnsChunk`` passes the DNS transactions'; a flow
    column left out reads back as its zero value)."""
    parts: list[bytes] = []
    header: dict[str, Any] = {"n": flows.n, "cols": {}}
    offset = 0
    if ids is not None:
        data = np.ascontiguousarray(ids, dtype=np.int64).tobytes()
        header["ids"] = {"at": offset, "len": len(data)}
        parts.append(data)
        offset += len(data)
    for name in fields:
        col = flows.cols[name]
        if name in objects:
            if name == "drop_reasons":  # dicts: the distinct objects' JSON, then by text
                ident = identities(col)
                _, first, inverse = np.unique(ident, return_index=True, return_inverse=True)
                texts = np.array([json.dumps(d, separators=(",", ":"), sort_keys=True) if d else ""
                                  for d in col[first].tolist()], dtype=object)
                text_codes, values = factorize(texts)
                codes: NDArray[np.uint32] = text_codes[inverse.reshape(flows.n)].astype(np.uint32)
            else:
                col_codes, values = factorize(col)
                codes = col_codes.astype(np.uint32)
            if len(values) == 1:  # one value for the whole chunk (node_id, often comm or service): no codes
                header["cols"][name] = {"const": values[0]}
                continue
            data = codes.tobytes()
            words = _join_texts(values)
            if words is None:
                header["cols"][name] = {"dict": values, "at": offset, "len": len(data)}
            else:
                header["cols"][name] = {"at": offset, "len": len(data), "words_at": offset + len(data),
                                        "words_len": len(words)}
                data += words
        else:
            if not col.size or (col == col[0]).all():  # (a chunk of no rows: health rows where none failed)
                header["cols"][name] = {"const": col[0].item() if col.size else 0}
                continue
            spec: dict[str, Any] = {}
            if col.dtype.itemsize == 8:  # frame of reference: the distance from the chunk's minimum, narrow
                bits = col.view(np.uint64)
                base = col.min()
                offsets = bits - np.uint64(int(base) & _U64_MASK)
                width = next(dt for limit, dt in _WIDTHS if int(offsets.max()) <= limit)
                data = offsets.astype(width).tobytes()
                spec = {"base": int(base), "w": np.dtype(width).itemsize}
            else:
                data = np.ascontiguousarray(col).tobytes()
            header["cols"][name] = {**spec, "at": offset, "len": len(data)}
        parts.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(_MAGIC, len(head)) + head + b"".join(parts)


def _join_texts(values: list[str]) -> bytes | None:
    """Distinct texts as one NUL-separated UTF-8 section (read back with one split: JSON parsing of large
    dictionaries was most of a chunk read); None when a text holds a NUL."""
    if any("\0" in v for v in values):
        return None
    return "\0".join(values).encode("utf-8", "surrogatepass")


def _split_texts(data: bytes | memoryview) -> list[str]:
    return bytes(data).decode("utf-8", "surrogatepass").split("\0")


HEALTH_FIELDS: Final = ("comm", "pid", "dst", "dport", "sport", "proto", "direction", "outcome", "start_ns",
                         "end_ns", "attempts", "ports_probed", "cgroup", "icmp_frag_needed", "path_mtu")
"""The columns of a chunk's health rows (``encode_health``): what Health's patterns read, and every field a
Health filter or time window tests."""


def health_rows(flows: FlowBatch) -> NDArray[np.bool_]:
    """The rows Health reads one by one rather than as counts: failed flows (retry and scan patterns) and
    flows that met a narrower path (fragmentation needed)."""
    mask: NDArray[np.bool_] = flows.failed() | (flows["icmp_frag_needed"] != 0)
    return mask


def encode_health(flows: FlowBatch) -> bytes:
    """A chunk of only ``health_rows`` and only ``HEALTH_FIELDS``, written beside the full chunk at close, so
    Health over a range reads the failed share of the rows and a third of the columns (bench_health, 20 %
    failed: 80 KB of a 570 KB chunk). Rows keep the full chunk's order; their ids are not kept."""
    rows = np.flatnonzero(health_rows(flows))
    sub = FlowBatch({name: flows[name][rows] for name in HEALTH_FIELDS}, len(rows))
    return encode_chunk(sub, fields=HEALTH_FIELDS)


COUNTED: Final = (("comm", "pid"), ("dst", "dport"))
"""The group-bys whose outcome counts each chunk keeps (Health's; ``("period",)`` is the chunk's total)."""
_OUTCOMES: Final = 8  # outcome numbers 0..7


def encode_counts(flows: FlowBatch) -> bytes:
    """A chunk's flows counted by outcome per ``COUNTED`` group-by, kept beside its columns so that Health
    over whole chunks reads a few hundred groups instead of every row: per group-by the distinct texts
    (JSON), then int64 pairs (text index, number) and uint32 counts per outcome."""
    outcome = flows["outcome"].astype(np.intp)
    header: dict[str, Any] = {}
    parts: list[bytes] = []
    for text, number in COUNTED:
        text_codes, texts = factorize(flows[text])
        codes, keys = factorize(text_codes, flows[number])
        pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
        counts = np.bincount(codes * _OUTCOMES + outcome, minlength=len(keys) * _OUTCOMES).astype(np.uint32)
        words = _join_texts(texts)
        header[text] = {"groups": len(keys), **({"texts": texts} if words is None else {"words": len(words or b"")})}
        parts += [pairs.tobytes(), counts.tobytes(), words or b""]
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(_MAGIC, len(head)) + head + b"".join(parts)


def decode_counts(blob: bytes) -> dict[tuple[str, str], tuple[list[str], NDArray[np.int64], NDArray[np.uint32]]]:
    """``encode_counts``'s groups: per group-by, the texts, the (text index, number) pairs and the counts
    (groups x outcome numbers)."""
    _, size = _HEAD.unpack_from(blob)
    header = json.loads(blob[_HEAD.size:_HEAD.size + size])
    at = _HEAD.size + size
    out = {}
    for text, number in COUNTED:
        spec = header[text]
        g = spec["groups"]
        pairs = np.frombuffer(blob, dtype=np.int64, count=2 * g, offset=at).reshape(g, 2)
        at += 16 * g
        counts = np.frombuffer(blob, dtype=np.uint32, count=g * _OUTCOMES, offset=at).reshape(g, _OUTCOMES)
        at += 4 * g * _OUTCOMES
        if "texts" in spec:
            texts = spec["texts"]
        else:
            texts = _split_texts(memoryview(blob)[at:at + spec["words"]])
            at += spec["words"]
        out[(text, number)] = (texts, pairs, counts)
    return out


class Chunk:
    """One stored chunk, its columns decoded on first use."""

    __slots__ = ("_body", "_cols", "_dicts", "_head", "cache", "first_id", "n", "period", "selected")

    DTYPES: ClassVar[dict[str, Any]] = DTYPES
    """The columns' dtypes (a subclass holds other rows: ``DnsChunk``)."""
    OBJECTS: ClassVar[Collection[str]] = OBJECT_FIELDS

    def zero(self, name: str) -> NDArray[Any]:
        """The column of a field newer than the chunk: its zero value."""
        zero: NDArray[Any] = FlowBatch({}, self.n).cols[name]
        return zero

    def __init__(self, period: int, first_id: int, blob: bytes) -> None:
        magic, size = _HEAD.unpack_from(blob)
        if magic != _MAGIC:
            raise ValueError("not a meshnode chunk")
        self._head: dict[str, Any] = json.loads(blob[_HEAD.size:_HEAD.size + size])
        self._body = memoryview(blob)[_HEAD.size + size:]
        self._cols: dict[str, NDArray[Any]] = {}
        self._dicts: dict[str, list[Any]] = {}
        self.n: int = self._head["n"]
        self.period = period
        self.first_id = first_id
        self.selected: NDArray[np.intp] | None = None
        """The rows a query selected (set by its reader; in key order once ``merge_in_key_order`` has it)."""
        self.cache: Any = None
        """What a reader made of the selected rows (their records, or the run of wire rows being read)."""

    def ids(self) -> NDArray[np.int64]:
        """The rows' ids (their key's last part)."""
        got = self._cols.get("id")
        if got is None:
            spec = self._head.get("ids")
            if spec is None:
                got = np.arange(self.first_id, self.first_id + self.n, dtype=np.int64)
            else:
                got = np.frombuffer(self._body[spec["at"]:spec["at"] + spec["len"]], dtype=np.int64)
            self._cols["id"] = got
        return got

    def col(self, name: str) -> NDArray[Any]:
        """A column as the batch holds it (text as an object array)."""
        got = self._cols.get(name)
        if got is None:
            got = self._cols[name] = self._decode(name)
        return got

    def _decode(self, name: str) -> NDArray[Any]:
        spec = self._head["cols"].get(name)
        dtype = self.DTYPES[name]
        if spec is None:  # a field newer than the chunk: its zero value
            return self.zero(name)
        if "const" in spec:
            value = spec["const"]
            if name == "drop_reasons":
                value = json.loads(value) if value else {}
            arr = np.empty(self.n, dtype=dtype)
            arr[:] = [value] * self.n if dtype is object else value
            return arr
        raw = self._body[spec["at"]:spec["at"] + spec["len"]]
        if name not in self.OBJECTS:
            if "base" in spec:
                narrow = np.frombuffer(raw, dtype=np.dtype(f"<u{spec['w']}"))
                wide = narrow.astype(np.uint64) + np.uint64(spec["base"] & _U64_MASK)
                return wide if dtype == np.uint64 else wide.view(np.int64)
            return np.frombuffer(raw, dtype=dtype)
        codes = np.frombuffer(raw, dtype=np.uint32)
        values: list[Any] = self.dictionary(name)
        if name == "drop_reasons":
            values = [json.loads(v) if v else {} for v in values]
        table = np.empty(len(values), dtype=object)
        table[:] = values
        out: NDArray[Any] = table[codes]
        return out

    def group_codes(self, name: str) -> tuple[NDArray[Any], list[Any]]:
        """A column as small integer codes and the value of each code: a text column's dictionary codes
        as stored (no string made a row), a numeric column's distinct values."""
        spec = self._head["cols"].get(name)
        if name in self.OBJECTS and spec is not None and "const" not in spec:
            raw = self._body[spec["at"]:spec["at"] + spec["len"]]
            return np.frombuffer(raw, dtype=np.uint32), self.dictionary(name)
        if spec is None or "const" in spec:
            return np.zeros(self.n, dtype=np.uint32), self.col(name)[:1].tolist()
        uniq, inverse = np.unique(self.col(name), return_inverse=True)
        return inverse.reshape(self.n), uniq.tolist()

    def dictionary(self, name: str) -> list[Any]:
        """A dictionary-encoded column's distinct values, in code order."""
        key = "dict:" + name
        got = self._dicts.get(key)
        if got is None:
            spec = self._head["cols"][name]
            got = spec["dict"] if "dict" in spec else _split_texts(
                self._body[spec["words_at"]:spec["words_at"] + spec["words_len"]])
            self._dicts[key] = got
        return got

    def text_mask(self, name: str, predicate: Callable[[str], bool]) -> NDArray[np.bool_]:
        """Rows whose text column ``name`` satisfies ``predicate``, judged once per distinct value."""
        spec = self._head["cols"].get(name)
        if spec is None or "const" in spec:
            value = spec["const"] if spec is not None else ""
            return np.full(self.n, bool(predicate(value)), dtype=bool)
        words = self.dictionary(name)
        hits = np.fromiter((bool(predicate(v)) for v in words), dtype=bool, count=len(words))
        raw = self._body[spec["at"]:spec["at"] + spec["len"]]
        out: NDArray[np.bool_] = hits[np.frombuffer(raw, dtype=np.uint32)]
        return out

    def batch(self, rows: NDArray[Any] | None = None) -> FlowBatch:
        """The chunk's flows (those at ``rows``, in that order, when given) as a batch."""
        cols = {name: self.col(name) for name in FIELDS}
        if rows is not None:
            cols = {name: col[rows] for name, col in cols.items()}
        return FlowBatch(cols)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A chunk's row in the ``chunks`` table, before its blob is read."""

    chunk_id: int
    period: int
    first_id: int
    n: int
    min_end: int
    max_end: int
    max_start: int


Selected = tuple[Chunk, "NDArray[np.intp]"]
"""A chunk and the positions of its selected rows, in key order."""


MERGE_RUN: Final = 1024
"""Keys of a chunk's selected rows made into Python ints at a time by the merge."""


class _Cursor:
    """One chunk's selected rows in key order (numpy), their positions and keys as Python ints a run at a time.

    A stream over a 20,000-row chunk held three 20,000-int lists for as long as it ran; a full collection
    visits every item of a list, and sixteen such streams made each one ~1,000,000 visits (tens of ms of the
    event loop's time). A run of ``MERGE_RUN`` is as fast to step through and costs the collector nothing.
    """

    __slots__ = ("chunk", "ends", "ids", "n", "rows", "run_ends", "run_ids", "run_rows", "start")

    def __init__(self, chunk: Chunk, rows: NDArray[np.intp], ends: NDArray[Any], ids: NDArray[Any]) -> None:
        self.chunk = chunk
        self.rows, self.ends, self.ids = rows, ends, ids
        self.n = len(rows)
        self.start = 0
        self.run_rows: list[int] = []
        self.run_ends: list[int] = []
        self.run_ids: list[int] = []
        self.load(0)

    def load(self, pos: int) -> None:
        """Make the run that starts at ``pos`` the current one."""
        stop = pos + MERGE_RUN
        self.start = pos
        self.run_rows = self.rows[pos:stop].tolist()
        self.run_ends = self.ends[pos:stop].tolist()
        self.run_ids = self.ids[pos:stop].tolist()


def merge_in_key_order(refs: Sequence[ChunkRef], load: Callable[[ChunkRef], Selected | None],
                       ) -> Iterator[tuple[int, int, Chunk, int, int]]:
    """``(end_ns, id, chunk, row, pos)`` of the selected rows of every chunk, in key order; a chunk is read
    only once the merge reaches its smallest end_ns (chunks are visited in order of ``min_end``). ``pos`` is
    the row's place in ``chunk.selected``, which the merge leaves in key order: a reader that makes rows
    into Python values a run of positions at a time goes forward only."""
    pending = sorted(refs, key=lambda r: (r.min_end, r.first_id))
    heap: list[tuple[int, int, int, int]] = []
    cursors: list[_Cursor | None] = []
    at = 0
    while True:
        while at < len(pending) and (not heap or pending[at].min_end <= heap[0][0]):
            got = load(pending[at])
            at += 1
            if got is None or not len(got[1]):
                continue
            chunk, rows = got
            ends, ids = chunk.col("end_ns")[rows], chunk.ids()[rows]
            order = np.lexsort((ids, ends))
            rows, ends, ids = rows[order], ends[order], ids[order]
            chunk.selected = rows
            cursors.append(_Cursor(chunk, rows, ends, ids))
            heapq.heappush(heap, (int(ends[0]), int(ids[0]), len(cursors) - 1, 0))
        if not heap:
            return
        end, row_id, k, pos = heap[0]
        cursor = cursors[k]
        assert cursor is not None
        i = pos - cursor.start
        yield end, row_id, cursor.chunk, cursor.run_rows[i], pos
        pos += 1
        if pos < cursor.n:
            i += 1
            if i == len(cursor.run_rows):
                cursor.load(pos)
                i = 0
            heapq.heapreplace(heap, (cursor.run_ends[i], cursor.run_ids[i], k, pos))
        else:
            heapq.heappop(heap)
            cursors[k] = None
