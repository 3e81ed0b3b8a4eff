"""Network health from the end host's view (seed 004), as pure functions over FlowRecords.

Health is the fraction of useful flows: a TCP flow whose handshake completed, or a UDP flow answered by its
peer, over all attempts. Flows still ``in_progress`` are not attempts yet. Beyond the fraction, seed 004
separates three kinds of failure that need different responses: persistent retries (one process failing to
one destination again and again, at a fixed interval that ignores how long the outage has lasted), inbound
scans (one remote source failing across many local ports) and failures right after the host's address
changed (the host has not yet noticed it moved).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from meshnode._model import FAILED_OUTCOMES, USEFUL_OUTCOMES, FlowRecord

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


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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


def retry_patterns(
    records: Iterable[FlowRecord], min_failures: int = MIN_RETRY_FAILURES
) -> list[RetryPattern]:
    """Persistent retries: outbound failures grouped by (comm, pid, destination), at least ``min_failures``.

    Intervals are between the starts of consecutive failed attempts. Most failures first.
    """
    groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for rec in records:
        if rec.failed and rec.direction == "outbound":
            groups[(rec.comm, rec.pid, rec.destination)].append(rec.start_ns)
    out = []
    for (comm, pid, dest), starts in groups.items():
        if len(starts) < min_failures:
            continue
        starts.sort()
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(starts)]
        out.append(RetryPattern(
            comm=comm, pid=pid, destination=dest, failures=len(starts),
            interval_p50_ms=_median(gaps), interval_min_ms=min(gaps), interval_max_ms=max(gaps),
            first_ns=starts[0], last_ns=starts[-1],
        ))
    return sorted(out, key=lambda p: (-p.failures, p.comm, p.pid, p.destination))


@dataclass(frozen=True, slots=True)
class ScanPattern:
    """One remote source failing across many local ports (``meshnode.v1.ScanPattern``)."""

    src: str
    ports: int
    failures: int


def scan_patterns(records: Iterable[FlowRecord], min_ports: int = MIN_SCAN_PORTS) -> list[ScanPattern]:
    """Inbound scans: failed inbound flows grouped by remote address, at least ``min_ports`` local ports.

    Inbound records keep the local end in ``src``/``sport``, so the scanner is ``dst`` and the port tried
    is ``sport``. Most ports first.
    """
    ports: dict[str, set[int]] = defaultdict(set)
    failures: dict[str, int] = defaultdict(int)
    for rec in records:
        if rec.failed and rec.direction == "inbound":
            ports[rec.dst].add(rec.sport)
            failures[rec.dst] += 1
    out = [ScanPattern(src, len(p), failures[src]) for src, p in ports.items() if len(p) >= min_ports]
    return sorted(out, key=lambda s: (-s.ports, -s.failures, s.src))


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
