"""DNS transactions in the store: a chunk per export period, written in the period's own transaction.

A period's transactions are stored as the flows are (``_chunks``): one BLOB of columns, text columns
dictionary-encoded (a period asks a few resolvers about a few names: the dictionaries are small), in the
``dns_chunks`` table beside the period's flow chunk, so a period is committed with all its DNS or not at all.
Queries read the chunks that overlap their range and select rows with masks over the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from meshnode._dns import DNS_FIELDS, FAILED_RCODES, TEXT_COLUMNS, DnsBatch, zero_column
from meshnode.store._chunks import Chunk, encode_chunk

if TYPE_CHECKING:
    from numpy.typing import NDArray

DEFAULT_DNS_LIMIT = 100
"""Transactions a query returns when it names no limit."""


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """What ``Store.query_dns`` selects: the set fields are ANDed, the values inside one ORed.

    ``names`` match a question's name exactly, or, written ``*.example.com``, any name below that domain;
    ``rcodes`` are answer code names (``NXDOMAIN``); ``servers`` resolver addresses; ``failed_only`` keeps
    SERVFAIL, NXDOMAIN and REFUSED answers. ``since_ns``/``until_ns`` bound the last answer's time (0: open).
    """

    since_ns: int = 0
    until_ns: int = 0
    names: Sequence[str] = ()
    rcodes: Sequence[str] = ()
    servers: Sequence[str] = ()
    failed_only: bool = False


class DnsChunk(Chunk):
    """A stored chunk of DNS transactions."""

    __slots__ = ()

    DTYPES: ClassVar[dict[str, Any]] = DNS_FIELDS
    OBJECTS: ClassVar[Sequence[str]] = TEXT_COLUMNS

    def zero(self, name: str) -> NDArray[Any]:
        return zero_column(name, self.n)

    def dns(self, rows: NDArray[Any] | None = None) -> DnsBatch:
        """The chunk's transactions (those at ``rows``, in that order, when given)."""
        cols = {name: self.col(name) for name in DNS_FIELDS}
        if rows is not None:
            cols = {name: col[rows] for name, col in cols.items()}
        return DnsBatch(cols, self.n if rows is None else len(rows))


def encode_dns(batch: DnsBatch) -> bytes:
    """A period's transactions as one chunk."""
    return encode_chunk(batch, fields=tuple(DNS_FIELDS), objects=TEXT_COLUMNS)


def _name_matches(patterns: Sequence[str]) -> Any:
    exact = {p for p in patterns if not p.startswith("*.")}
    suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))
    return lambda name: name in exact or (bool(suffixes) and name.endswith(suffixes))


def dns_mask(chunk: DnsChunk, q: DnsQuery) -> NDArray[np.bool_]:
    """Which rows of a chunk ``q`` selects (text conditions judged once per distinct value)."""
    mask = np.ones(chunk.n, dtype=bool)
    if q.since_ns:
        mask &= chunk.col("time_ns") >= q.since_ns
    if q.until_ns:
        mask &= chunk.col("time_ns") <= q.until_ns
    if q.names:
        mask &= chunk.text_mask("query", _name_matches([n.lower().rstrip(".") for n in q.names]))
    if q.rcodes:
        mask &= chunk.text_mask("rcode", set(q.rcodes).__contains__)
    if q.failed_only:
        mask &= chunk.text_mask("rcode", FAILED_RCODES.__contains__)
    if q.servers:
        mask &= chunk.text_mask("server", set(q.servers).__contains__)
    return mask


def newest(batch: DnsBatch, limit: int) -> DnsBatch:
    """The ``limit`` newest transactions of ``batch`` in time order (the earlier of equal times first)."""
    order = np.argsort(batch["time_ns"], kind="stable")
    return batch.take(order[max(0, len(order) - limit):])
