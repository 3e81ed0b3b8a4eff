"""Network health from the end host's view (seed 004), as pure functions over FlowRecords.

Health is the fraction of useful flows: a TCP flow whose handshake completed, or a UDP flow answered by its
peer, over all attempts. Flows still ``in_progress`` are not attempts yet. Beyond the fraction, seed 004
separates three kinds of failure that need different responses: persistent retries (one process failing to
one destination again and again, at a fixed interval that ignores how long the outage has lasted), inbound
scans (one remote source failing across many local ports) and failures right after the host's address
changed (the host has not yet noticed it moved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from meshnode._batch import FAILED, FlowBatch, as_batch, factorize
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS, FAILED_OUTCOMES, USEFUL_OUTCOMES, FlowRecord

ADDRESS_CHANGE_WINDOW_NS: Final = 60 * 1_000_000_000
MIN_RETRY_FAILURES: Final = 3
MIN_SCAN_PORTS: Final = 5


@dataclass(slots=True)
class HealthRow:
    """The health of one entity (``meshnode.v1.HealthRow``)."""

    scope: str
    key: str
    attempts: int = 0
    useful: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def useful_fraction(self) -> float | None:
        """useful / attempts; None when there were no attempts."""
        return self.useful / self.attempts if self.attempts else None

    def add(self, rec: FlowRecord) -> None:
        """Count one flow (``in_progress`` flows are not attempts)."""
        self.add_count(rec.outcome, 1)

    def add_count(self, outcome: str, n: int) -> None:
        """Count ``n`` flows of one outcome."""
        if outcome == "in_progress" or n <= 0:
            return
        self.attempts += n
        if outcome in USEFUL_OUTCOMES:
            self.useful += n
        elif outcome in FAILED_OUTCOMES:
            self.failures[outcome] = self.failures.get(outcome, 0) + n

    def remove_count(self, outcome: str, n: int) -> None:
        """Take back ``n`` counted flows of one outcome (flows left out, such as a scan's)."""
        if outcome == "in_progress" or n <= 0:
            return
        n = min(n, self.attempts)
        self.attempts -= n
        if outcome in USEFUL_OUTCOMES:
            self.useful -= n
        elif (left := self.failures.get(outcome, 0) - n) > 0:
            self.failures[outcome] = left
        else:
            self.failures.pop(outcome, None)


def host_health(records: Iterable[FlowRecord], key: str = "") -> HealthRow:
    """The health of all ``records`` as one row of scope ``host``."""
    row = HealthRow("host", key)
    for rec in records:
        row.add(rec)
    return row


def health_by(records: Iterable[FlowRecord], scope: str, key: Callable[[FlowRecord], str]) -> list[HealthRow]:
    """Health rows grouped by ``key``; the most attempts first, then by key."""
    rows: dict[str, HealthRow] = {}
    for rec in records:
        k = key(rec)
        row = rows.get(k)
        if row is None:
            row = rows[k] = HealthRow(scope, k)
        row.add(rec)
    return sorted((r for r in rows.values() if r.attempts), key=lambda r: (-r.attempts, r.key))


def health_from_counts(scope: str, counts: Iterable[tuple[str, str, int]]) -> list[HealthRow]:
    """Health rows from ``(key, outcome, count)`` triples (e.g. a store aggregate); most attempts first."""
    rows: dict[str, HealthRow] = {}
    for key, outcome, n in counts:
        row = rows.get(key)
        if row is None:
            row = rows[key] = HealthRow(scope, key)
        row.add_count(outcome, n)
    return sorted((r for r in rows.values() if r.attempts), key=lambda r: (-r.attempts, r.key))


def health_by_period(items: Iterable[tuple[int, FlowRecord]]) -> list[HealthRow]:
    """Health per export period from ``(period seq, record)`` pairs, oldest period first."""
    rows: dict[int, HealthRow] = {}
    for seq, rec in items:
        row = rows.get(seq)
        if row is None:
            row = rows[seq] = HealthRow("period", str(seq))
        row.add(rec)
    return [rows[s] for s in sorted(rows) if rows[s].attempts]


def failures_by_outcome(records: Iterable[FlowRecord]) -> dict[str, int]:
    """Failed flows counted by outcome."""
    out: dict[str, int] = {}
    for rec in records:
        if rec.failed:
            out[rec.outcome] = out.get(rec.outcome, 0) + 1
    return out


@dataclass(frozen=True, slots=True)
class RetryPattern:
    """One process failing to one destination again and again (``meshnode.v1.RetryPattern``)."""

    comm: str
    pid: int
    destination: str
    failures: int
    interval_p50_ms: float
    interval_min_ms: float
    interval_max_ms: float
    first_ns: int
    last_ns: int


#: The columns ``retry_patterns`` and ``scan_patterns`` read (``Store.query_columns``).
RETRY_COLUMNS: Final = ("comm", "pid", "dst", "dport", "start_ns", "outcome", "direction")
SCAN_COLUMNS: Final = ("dst", "sport", "outcome", "direction", "attempts", "ports_probed")
MTU_COLUMNS: Final = ("dst", "dport", "icmp_frag_needed", "path_mtu")
"""The columns ``path_mtu_problems`` reads."""

Flows = Iterable[FlowRecord] | FlowBatch | Mapping[str, NDArray[Any]]


def _columns(flows: Flows, names: Sequence[str], direction: str) -> dict[str, NDArray[Any]]:
    """The failed flows of one direction among ``flows`` (records, a batch, or columns by field name, enums
    as their numbers), as the columns ``names``."""
    cols: Mapping[str, NDArray[Any]]
    if isinstance(flows, Mapping):
        cols = flows
    else:
        batch = as_batch(flows)
        cols = {n: batch[n] for n in {*names, "outcome", "direction"}}
    keep = np.isin(cols["outcome"], FAILED) & (cols["direction"] == ENUM_NUMBERS["direction"][direction])
    return {n: np.asarray(cols[n])[keep] for n in names}


def retry_patterns(flows: Flows, min_failures: int = MIN_RETRY_FAILURES) -> list[RetryPattern]:
    """Persistent retries: outbound failures grouped by (comm, pid, destination), at least ``min_failures``.

    Intervals are between the starts of consecutive failed attempts. Most failures first. Grouped, sorted
    and summarised in numpy: the Health RPC runs this over every failed flow of its range (hundreds of
    thousands when a host fails a lot), where a record each cost seconds.
    """
    if min_failures < 2:
        raise ValueError(f"min_failures: {min_failures} is below 2 (a retry interval needs two failures)")
    c = _columns(flows, RETRY_COLUMNS, "outbound")
    if not len(c["start_ns"]):
        return []
    codes, keys = factorize(c["comm"], c["pid"], c["dst"], c["dport"])
    sizes = np.bincount(codes, minlength=len(keys))
    rows = np.flatnonzero(sizes[codes] >= min_failures)
    if not len(rows):
        return []
    group, starts = codes[rows], c["start_ns"][rows].astype(np.int64)
    order = _by_group(group, starts)
    group, starts = group[order], starts[order]
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])  # each group's first row, in group order
    last = np.r_[first[1:], len(group)] - 1
    same = group[1:] == group[:-1]
    gap_group = group[1:][same]
    gaps_ns = (starts[1:] - starts[:-1])[same]
    gaps = gaps_ns[_by_group(gap_group, gaps_ns)] / 1e6  # each group's gaps ascending, groups in order
    m = last - first  # gaps per group (>= 2 as min_failures >= 3; >= 1 always)
    at = np.r_[0, np.cumsum(m)[:-1]]
    lo, hi = gaps[at + (m - 1) // 2], gaps[at + m // 2]
    # every value taken out of numpy as a list first: one numpy scalar a pattern and field cost more than
    # the pattern (a host failing to thousands of destinations has thousands of them)
    out = []
    for g, n, median, low, high, first_ns, last_ns in zip(
            group[first].tolist(), m.tolist(), ((lo + hi) / 2).tolist(), gaps[at].tolist(),
            gaps[at + m - 1].tolist(), starts[first].tolist(), starts[last].tolist(), strict=True):
        comm, pid, dst, dport = keys[g]
        host = f"[{dst}]" if ":" in dst else dst
        out.append(RetryPattern(comm, int(pid), f"{host}:{dport}", n + 1, median, low, high, first_ns, last_ns))
    # most failures first, then by comm, pid and destination (a stable sort keeps that order among equals)
    out.sort(key=attrgetter("comm", "pid", "destination"))
    out.sort(key=attrgetter("failures"), reverse=True)
    return out


def _by_group(group: NDArray[np.intp], values: NDArray[np.int64]) -> NDArray[np.intp]:
    """``np.lexsort((values, group))``: by group, then by value, ties in row order; one sort of one int64
    key when the pair fits in it (half the time of two keys)."""
    if not len(group):
        return np.zeros(0, dtype=np.intp)
    low = int(values.min())
    span = int(values.max()) - low + 1
    if (int(group.max()) + 1) * span < 1 << 63:
        order: NDArray[np.intp] = np.argsort(group.astype(np.int64) * span + (values - low), kind="stable")
        return order
    return np.lexsort((values, group))


@dataclass(frozen=True, slots=True)
class ScanPattern:
    """One remote source failing across many local ports (``meshnode.v1.ScanPattern``)."""

    src: str
    ports: int
    failures: int


def scan_patterns(flows: Flows, min_ports: int = MIN_SCAN_PORTS) -> list[ScanPattern]:
    """Inbound scans (seed 004): failed inbound flows grouped by remote address, at least ``min_ports`` local
    ports.

    Inbound records keep the local end in ``src``/``sport``, so the scanner is ``dst`` and the port tried
    is ``sport``. A record the kernel aggregated over a source's attempts to closed ports counts its
    ``ports_probed`` ports and its ``attempts`` failures (aggregates of one source in two bursts may share
    ports: then the sum over-counts them). Most ports first. In numpy, as ``retry_patterns``.
    """
    c = _columns(flows, SCAN_COLUMNS, "inbound")
    if not len(c["dst"]):
        return []
    codes, sources = factorize(c["dst"])
    n = len(sources)
    failures = np.bincount(codes, weights=np.maximum(c["attempts"].astype(np.int64), 1), minlength=n)
    wide = c["ports_probed"] > 1
    one = ~wide
    pairs = np.unique(codes[one].astype(np.int64) * 65536 + c["sport"][one].astype(np.int64))
    ports = (np.bincount(pairs // 65536, minlength=n)
             + np.bincount(codes[wide], weights=c["ports_probed"][wide].astype(np.int64), minlength=n))
    out = [ScanPattern(sources[i], int(ports[i]), int(failures[i])) for i in np.flatnonzero(ports >= min_ports)]
    return sorted(out, key=lambda s: (-s.ports, -s.failures, s.src))


def scan_flow_outcomes(flows: Flows, scans: Iterable[ScanPattern]) -> dict[str, int]:
    """How many of ``flows`` belong to ``scans`` (failed inbound flows from a scanner), by outcome: they are
    left out of a host's useful-flow fraction, as seed 004 leaves out scans (they fail by design, like
    discovery chatter)."""
    scanners = [s.src for s in scans]
    if not scanners:
        return {}
    c = _columns(flows, SCAN_COLUMNS, "inbound")
    outcomes = c["outcome"][np.isin(c["dst"], scanners)]
    names = ENUM_NAMES["outcome"]
    values, counts = np.unique(outcomes, return_counts=True)
    return {names.get(int(v), "unknown"): int(k) for v, k in zip(values.tolist(), counts.tolist(), strict=True)}


@dataclass(frozen=True, slots=True)
class PathMtu:
    """A destination whose path is narrower than what the host sent (``meshnode.v1.PathMtu``)."""

    destination: str
    mtu: int
    flows: int
    errors: int


def path_mtu_problems(flows: Flows) -> list[PathMtu]:
    """Destinations whose flows received fragmentation-needed (packet too big) errors, with the smallest MTU
    reported (0 when none said one); smallest MTU first. On columns, as ``retry_patterns``."""
    cols: Mapping[str, NDArray[Any]]
    if isinstance(flows, Mapping):
        cols = flows
    else:
        batch = as_batch(flows)
        cols = {n: batch[n] for n in MTU_COLUMNS}
    hit = np.asarray(cols["icmp_frag_needed"]) != 0
    if not hit.any():
        return []
    c = {n: np.asarray(cols[n])[hit] for n in MTU_COLUMNS}
    codes, keys = factorize(c["dst"], c["dport"])
    n = len(keys)
    counts = np.bincount(codes, minlength=n)
    errors = np.zeros(n, dtype=np.int64)
    np.add.at(errors, codes, c["icmp_frag_needed"].astype(np.int64))
    none = np.iinfo(np.int64).max
    mtu = np.full(n, none, dtype=np.int64)
    np.minimum.at(mtu, codes, np.where(c["path_mtu"] != 0, c["path_mtu"].astype(np.int64), none))
    mtu[mtu == none] = 0
    out = [PathMtu(f"[{dst}]:{dport}" if ":" in dst else f"{dst}:{dport}", m, k, e)
           for (dst, dport), m, k, e in zip(keys, mtu.tolist(), counts.tolist(), errors.tolist(), strict=True)]
    return sorted(out, key=lambda p: (p.mtu, -p.errors, p.destination))


def failures_after_address_change(
    records: Iterable[FlowRecord], change_times_ns: Sequence[int], window_ns: int = ADDRESS_CHANGE_WINDOW_NS
) -> int:
    """Failed flows that started within ``window_ns`` after a local address change (seed 004: ~77 %)."""
    if not change_times_ns:
        return 0
    import bisect

    changes = sorted(change_times_ns)
    count = 0
    for rec in records:
        if not rec.failed:
            continue
        i = bisect.bisect_right(changes, rec.start_ns)
        if i and rec.start_ns - changes[i - 1] <= window_ns:
            count += 1
    return count
