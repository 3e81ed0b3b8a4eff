"""The columnar batch: the node's one shape for many flows, from the sensor's poll to the store and digests.

A ``FlowBatch`` holds one numpy column per ``FlowRecord`` field (same names). Integer fields are int64
(identifiers and byte counters are uint64, as the kernel counts them), enumerated
fields are uint8 holding ``meshnode.v1``'s enum numbers (``_model.ENUM_NUMBERS``: the kernel, the store and
the wire share them), text fields and ``drop_reasons`` are object columns. Work over a period's flows (the
summary's rollups, the store's insert, the digest's endpoint records) runs on the columns; a ``FlowRecord``
is made only where one record is shown or tested: iterating a batch, or indexing it with an int, yields
records (made once per batch, on first use, and kept).
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

import numpy as np

from meshnode._model import ENUM_NAMES, ENUM_NUMBERS, FlowRecord

if TYPE_CHECKING:
    from numpy.typing import NDArray

FIELDS: Final = tuple(f.name for f in dataclasses.fields(FlowRecord))
ENUM_FIELDS: Final = tuple(ENUM_NUMBERS)
TEXT_FIELDS: Final = ("src", "dst", "comm", "thread", "cgroup", "service", "node_id", "remote_name")
U64_FIELDS: Final = ("flow_id", "cgroup_id", "netns")
"""Identifiers that use all 64 bits (kernel cookies and ids); the store keeps them as signed 64-bit."""
_UNSIGNED: Final = (*U64_FIELDS, "bytes_tx", "bytes_rx", "delivery_rate")
OBJECT_FIELDS: Final = (*TEXT_FIELDS, "drop_reasons")


def _dtype(name: str) -> Any:
    if name in ENUM_NUMBERS:
        return np.uint8
    if name in OBJECT_FIELDS:
        return object
    if name in _UNSIGNED:
        return np.uint64
    return np.int64


DTYPES: Final[dict[str, Any]] = {name: _dtype(name) for name in FIELDS}
_DEFAULTS: Final = {f.name: f.default for f in dataclasses.fields(FlowRecord)
                    if f.default is not dataclasses.MISSING}
_NO_REASONS: Final[Mapping[str, int]] = {}

# Per enum field, a numpy lookup table number -> name index, and the names as an object array.
_NAME_TABLES: Final = {
    field: np.array([names.get(i, "unknown") for i in range(256)], dtype=object)
    for field, names in ENUM_NAMES.items()
}

USEFUL: Final = (ENUM_NUMBERS["outcome"]["established"], ENUM_NUMBERS["outcome"]["udp_answered"])
FAILED: Final = tuple(ENUM_NUMBERS["outcome"][o] for o in ("refused", "timeout", "reset", "udp_unanswered"))


class FlowBatch(Sequence[FlowRecord]):
    """Flows as columns. Immutable by convention: operations return new batches sharing unchanged columns."""

    __slots__ = ("_records", "cols", "n")

    def __init__(self, cols: Mapping[str, Any], n: int | None = None) -> None:
        """A batch from columns keyed by field name; a missing field is filled with its default.

        Args:
            cols: arrays (or sequences) of equal length; enumerated fields as numbers.
            n: the length, needed only when ``cols`` is empty.
        """
        if n is None:
            n = len(next(iter(cols.values()))) if cols else 0
        out: dict[str, Any] = {}
        for name in FIELDS:
            col = cols.get(name)
            dtype = DTYPES[name]
            out[name] = _filled(name, n) if col is None else as_column(name, col, dtype, n)
        self.cols = out
        self.n = n
        self._records: list[FlowRecord] | None = None

    # -- making batches ------------------------------------------------------------------------------------

    @classmethod
    def empty(cls) -> FlowBatch:
        """A batch of no flows (one, made once: a batch is not changed after it is made)."""
        if cls is not FlowBatch:
            return cls({}, 0)
        global _EMPTY
        if _EMPTY is None:
            _EMPTY = cls({}, 0)
        return _EMPTY

    @classmethod
    def from_records(cls, records: Iterable[FlowRecord]) -> FlowBatch:
        """Records into columns (the edge: sensors that make records one by one, tests)."""
        recs = list(records)
        n = len(recs)
        if not n:
            return cls.empty()
        columns = list(zip(*map(_values, recs), strict=True))
        cols: dict[str, Any] = {}
        for name, values in zip(FIELDS, columns, strict=True):
            if name in ENUM_NUMBERS:
                table = ENUM_NUMBERS[name]
                cols[name] = np.fromiter((table.get(v, 0) for v in values), dtype=np.uint8, count=n)
            elif name in OBJECT_FIELDS:
                cols[name] = values
            else:
                cols[name] = np.fromiter(values, dtype=DTYPES[name], count=n)
        batch = cls(cols, n)
        batch._records = recs
        return batch

    @classmethod
    def concat(cls, batches: Iterable[FlowBatch]) -> FlowBatch:
        """One batch of the flows of several, in order."""
        parts = [b for b in batches if b.n]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls({name: np.concatenate([b.cols[name] for b in parts]) for name in FIELDS},
                   sum(b.n for b in parts))

    def take(self, index: NDArray[Any]) -> FlowBatch:
        """The flows at ``index`` (an int array or a boolean mask), in its order."""
        return FlowBatch({name: col[index] for name, col in self.cols.items()})

    def replace(self, **cols: Any) -> FlowBatch:
        """A batch with some columns replaced (a scalar fills the column)."""
        new = dict(self.cols)
        for name, value in cols.items():
            if name not in DTYPES:
                raise KeyError(name)
            if isinstance(value, np.ndarray):
                new[name] = value
            else:
                arr = np.empty(self.n, dtype=DTYPES[name])
                arr[:] = value
                new[name] = arr
        return FlowBatch(new, self.n)

    # -- reading -------------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> NDArray[Any]:  # type: ignore[override]
        """A column by field name, or (an int) the record at that position."""
        if isinstance(name, str):
            col: NDArray[Any] = self.cols[name]
            return col
        return self.records()[name]

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records())

    def __bool__(self) -> bool:
        return self.n > 0

    def __eq__(self, other: object) -> bool:
        """Equal to another batch, or a list or tuple of records, holding the same records in order."""
        if isinstance(other, FlowBatch | list | tuple):
            return self.records() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def names(self, field: str) -> NDArray[Any]:
        """An enumerated column as the model's names (object array)."""
        return _NAME_TABLES[field][self.cols[field]]  # type: ignore[no-any-return]

    def records(self) -> list[FlowRecord]:
        """The flows as records, made on first use and kept (a batch is not changed after it is made)."""
        if self._records is None:
            self._records = self._make_records()
        return self._records

    def _make_records(self) -> list[FlowRecord]:
        if not self.n:
            return []
        columns = []
        for name in FIELDS:
            col = self.cols[name]
            if name in ENUM_NUMBERS:
                columns.append(_NAME_TABLES[name][col].tolist())
            elif name == "drop_reasons":
                columns.append([dict(d) if d else {} for d in col.tolist()])
            else:
                columns.append(col.tolist())
        make = FlowRecord.from_fields
        return [make(*values) for values in zip(*columns, strict=True)]

    def count_by(self, *fields: str) -> dict[tuple[Any, ...], int]:
        """How many flows have each combination of values of ``fields`` (enumerated ones by name)."""
        if not self.n:
            return {}
        columns = [self.names(f) if f in ENUM_NUMBERS else self.cols[f] for f in fields]
        codes, values = factorize(*columns)
        counts = np.bincount(codes, minlength=len(values)).tolist()
        return {(v if len(fields) > 1 else (v,)): c for v, c in zip(values, counts, strict=True)}

    def useful(self) -> NDArray[np.bool_]:
        """Per flow: established or udp_answered."""
        return np.isin(self.cols["outcome"], USEFUL)

    def failed(self) -> NDArray[np.bool_]:
        """Per flow: refused, timeout, reset or udp_unanswered."""
        return np.isin(self.cols["outcome"], FAILED)


_EMPTY: FlowBatch | None = None


def _values(rec: FlowRecord) -> tuple[Any, ...]:
    return tuple(getattr(rec, name) for name in FIELDS)


def as_column(name: str, col: Any, dtype: Any, n: int) -> NDArray[Any]:
    """``col`` (an array or a sequence) as column ``name`` of ``dtype`` (``object`` for text) with ``n`` rows,
    not copied when it already is one; raises ``ValueError`` for another length. Shared by the batches of
    flows and of DNS transactions."""
    if isinstance(col, np.ndarray) and col.dtype == (np.dtype(object) if dtype is object else dtype):
        out: NDArray[Any] = col
    elif dtype is object:
        out = np.empty(n, dtype=object)
        out[:] = list(col) if not isinstance(col, np.ndarray) else col
    else:
        out = np.asarray(col).astype(dtype, copy=False)
    if len(out) != n:
        raise ValueError(f"column {name} has {len(out)} rows, not {n}")
    return out


def _filled(name: str, n: int) -> NDArray[Any]:
    default = _DEFAULTS.get(name, 0)
    if name in ENUM_NUMBERS:
        return np.full(n, ENUM_NUMBERS[name].get(str(default), 0), dtype=np.uint8)
    if name == "drop_reasons":
        arr = np.empty(n, dtype=object)
        arr[:] = [_NO_REASONS] * n
        return arr
    if name in OBJECT_FIELDS:
        arr = np.empty(n, dtype=object)
        arr[:] = default
        return arr
    return np.zeros(n, dtype=DTYPES[name])


@overload
def as_batch(flows: FlowBatch) -> FlowBatch: ...
@overload
def as_batch(flows: Iterable[FlowRecord]) -> FlowBatch: ...
def as_batch(flows: Iterable[FlowRecord] | FlowBatch) -> FlowBatch:
    """``flows`` as a batch (records are converted; a batch is returned as it is)."""
    return flows if isinstance(flows, FlowBatch) else FlowBatch.from_records(flows)


def factorize(*columns: NDArray[Any]) -> tuple[NDArray[np.intp], list[Any]]:
    """Codes 0..k-1 per row for the distinct values (tuples when several columns) in first-seen order,
    and those values: the group-by of the rollups, the owners of a poll, the chunks' dictionaries.

    Sorting in numpy, not a dict lookup a row: a text column is grouped by object identity first (a
    column's strings are mostly the same few objects: the sensor makes each distinct text once), then the
    few distinct objects are merged by value.
    """
    n = len(columns[0])
    key = np.zeros(n, dtype=np.int64)
    parts: list[list[Any]] = []
    space = 1  # key < space: the product of the columns' distinct counts so far
    for col in columns:
        codes, values = _column_codes(col)
        if parts and len(values) > 1:
            if space * len(values) >= 1 << 62:  # renumber the key densely before it could overflow
                key = np.unique(key, return_inverse=True)[1].reshape(n).astype(np.int64)
                space = int(key.max()) + 1
            key = key * len(values) + codes
            space *= len(values)
        elif not parts:
            key = codes.astype(np.int64)
            space = max(1, len(values))
        parts.append(values)
    if not n:
        return np.zeros(0, dtype=np.intp), []
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=np.intp)
    rank[order] = np.arange(len(first), dtype=np.intp)
    at = first[order]
    if len(columns) == 1:
        values_out: list[Any] = columns[0][at].tolist()
    else:
        values_out = list(zip(*(col[at].tolist() for col in columns), strict=True))
    return rank[inverse.reshape(n)], values_out


def identities(col: NDArray[Any]) -> NDArray[np.uintp]:
    """The objects' identities: an object array's buffer holds its objects' addresses, which CPython's
    ``id`` returns; read in place (one copy) instead of one ``id`` call a row."""
    n = len(col)
    if n and col.flags.c_contiguous and sys.implementation.name == "cpython":
        raw = memoryview((ctypes.c_size_t * n).from_address(col.ctypes.data)).cast("B")
        ident: NDArray[np.uintp] = np.frombuffer(raw, dtype=np.uintp).copy()
        return ident
    return np.fromiter(map(id, col.tolist()), dtype=np.uintp, count=n)


def _column_codes(col: NDArray[Any]) -> tuple[NDArray[np.intp], list[Any]]:
    """One column's codes and distinct values (any order)."""
    if col.dtype == object:
        ident = identities(col)
        _, first, inverse = np.unique(ident, return_index=True, return_inverse=True)
        index: dict[Any, int] = {}
        setdefault = index.setdefault
        remap = np.fromiter((setdefault(v, len(index)) for v in col[first].tolist()), dtype=np.intp,
                            count=len(first))
        return remap[inverse.reshape(len(col))], list(index)
    if col.dtype.kind == "V":  # raw bytes (addresses, comms): 64-bit words, combined by 1-d sorts
        n = len(col)
        if not n:
            return np.zeros(0, dtype=np.intp), []
        size = col.dtype.itemsize
        raw = np.ascontiguousarray(col).view(np.uint8).reshape(n, size)
        if size % 8:
            raw = np.concatenate([raw, np.zeros((n, -size % 8), np.uint8)], axis=1)
        words = np.ascontiguousarray(raw).view(np.uint64)
        # one word at a time (np.unique over rows, axis=0, sorts rows as records: ~10x slower); an all-zero
        # word (the tail of an IPv4 address or a short comm) adds nothing
        codes: NDArray[np.intp] | None = None
        for w in range(words.shape[1]):
            word = words[:, w]
            if codes is not None and not word.any():
                continue
            distinct, inverse = np.unique(word, return_inverse=True)
            inverse = inverse.reshape(n)
            codes = inverse if codes is None else np.unique(codes * len(distinct) + inverse,
                                                            return_inverse=True)[1].reshape(n)
        assert codes is not None
        _, first = np.unique(codes, return_index=True)
        return codes.astype(np.intp), col[first].tolist()
    if col.dtype.kind in "iu" and len(col):
        low, high = int(col.min()), int(col.max())
        if high - low < 1 << 20:  # small range (ports, pids, enums): a presence table, no sort
            shifted = (col - low).astype(np.intp) if low else col.astype(np.intp)
            present = np.bincount(shifted) > 0
            rank = np.cumsum(present) - 1
            return rank[shifted], (np.flatnonzero(present) + low).astype(col.dtype).tolist()
    uniq, inverse = np.unique(col, return_inverse=True)
    return inverse.reshape(len(col)).astype(np.intp), uniq.tolist()
