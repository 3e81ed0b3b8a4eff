"""DNS transactions as columns: the node's one shape for many of them, from the period close to the store and
the API (the sensor makes a ``DnsRecord`` per transaction of a poll; a period holds a few hundred at most).

A transaction is the answers of one question from one resolver with one answer code, summed in the kernel
between two polls (probes/dns.bpf.c). Answer codes and question types keep DNS's own names (``NOERROR``,
``NXDOMAIN``, ``A``, ``AAAA``): DNS numbers them already, and a code without a mnemonic keeps its number in
the name (``RCODE11``, ``TYPE99``, RFC 3597's form), so the name is the number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from meshnode._batch import as_column

if TYPE_CHECKING:
    from numpy.typing import NDArray

QTYPES: Final = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
                 64: "SVCB", 65: "HTTPS", 255: "ANY"}
RCODES: Final = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
FAILED_RCODES: Final = frozenset({"SERVFAIL", "NXDOMAIN", "REFUSED"})
"""Answers that are failures of the resolver they came from: it could not resolve (SERVFAIL), said the name
does not exist (NXDOMAIN), or would not answer (REFUSED)."""


def qtype_name(number: int) -> str:
    """``A``, ``AAAA``..., or ``TYPE<n>`` (RFC 3597's form) for a type without a mnemonic here."""
    return QTYPES.get(number, f"TYPE{number}")


def rcode_name(number: int) -> str:
    """``NOERROR``, ``NXDOMAIN``..., or ``RCODE<n>``."""
    return RCODES.get(number, f"RCODE{number}")


def is_rcode(text: str) -> bool:
    """True for an answer code's name as ``rcode_name`` writes it (``NXDOMAIN``, ``RCODE11``)."""
    if text in RCODES.values():
        return True
    return text.startswith("RCODE") and text[5:].isdigit() and int(text[5:]) < 4096


DNS_FIELDS: Final[dict[str, Any]] = {
    "time_ns": np.int64,        # wall clock UTC of the transaction's last answer
    "server": object,           # the resolver's address
    "port": np.int64,           # the resolver's port
    "query": object,            # the question's name ('' when the kernel no longer held it)
    "qtype": object,
    "rcode": object,
    "answers": np.int64,
    "timed": np.int64,          # answers whose query the sensor saw leave (the latency's count)
    "latency_us": np.int64,     # mean over the timed answers
    "latency_max_us": np.int64,
    "addresses": np.int64,      # A/AAAA records of the question's CNAME chain
    "pid": np.int64,            # the asking process (the last query's sender)
    "comm": object,
    "netns": np.uint64,
    "tcp": np.uint8,            # 1: DNS over TCP
}
"""Column -> dtype, in stored order (new columns go at the end: the store reads a column a chunk lacks as
zero)."""
TEXT_COLUMNS: Final = tuple(name for name, dtype in DNS_FIELDS.items() if dtype is object)


def zero_column(name: str, n: int) -> NDArray[Any]:
    """A column of ``n`` zero values ('' for text)."""
    dtype = DNS_FIELDS[name]
    if dtype is object:
        arr = np.empty(n, dtype=object)
        arr[:] = ""
        return arr
    return np.zeros(n, dtype=dtype)


class DnsBatch:
    """DNS transactions as columns (``DNS_FIELDS``). Immutable by convention."""

    __slots__ = ("cols", "n")

    def __init__(self, cols: Mapping[str, Any], n: int | None = None) -> None:
        if n is None:
            n = len(next(iter(cols.values()))) if cols else 0
        out: dict[str, NDArray[Any]] = {}
        for name, dtype in DNS_FIELDS.items():
            col = cols.get(name)
            out[name] = zero_column(name, n) if col is None else as_column(name, col, dtype, n)
        self.cols = out
        self.n = n

    @classmethod
    def from_records(cls, records: Iterable[Any]) -> DnsBatch:
        """Records with the columns' names as attributes (the sensor's ``DnsRecord``s) as a batch;
        ``tcp`` is read as a bool."""
        recs = list(records)
        return cls({name: [getattr(r, name) for r in recs] for name in DNS_FIELDS}, len(recs))

    @classmethod
    def concat(cls, batches: Iterable[DnsBatch]) -> DnsBatch:
        """One batch of the transactions of several, in order."""
        parts = [b for b in batches if b.n]
        if len(parts) == 1:
            return parts[0]
        return cls({name: np.concatenate([b.cols[name] for b in parts]) if parts else zero_column(name, 0)
                    for name in DNS_FIELDS}, sum(b.n for b in parts))

    def take(self, index: NDArray[Any]) -> DnsBatch:
        """The transactions at ``index`` (an int array or a boolean mask), in its order."""
        return DnsBatch({name: col[index] for name, col in self.cols.items()})

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self.cols[name]

    def __len__(self) -> int:
        return self.n

    def failed(self) -> NDArray[np.bool_]:
        """Per transaction: a failure of its resolver (``FAILED_RCODES``)."""
        return np.isin(self.cols["rcode"], list(FAILED_RCODES))

    def rows(self) -> list[dict[str, Any]]:
        """The transactions as JSON-ready dicts (column names, ``tcp`` as a bool, ``failed`` added)."""
        names = list(DNS_FIELDS)
        failed = self.failed().tolist()
        out = []
        for values, bad in zip(zip(*(self.cols[n].tolist() for n in names), strict=True), failed, strict=True):
            row = dict(zip(names, values, strict=True))
            row["tcp"] = bool(row["tcp"])
            row["failed"] = bad
            out.append(row)
        return out
