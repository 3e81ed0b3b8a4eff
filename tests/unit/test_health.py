"""Health (seed 004), table-driven: fractions, failures by outcome, retries, scans, address changes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode._batch import FlowBatch
from meshnode.health import (
    RETRY_COLUMNS,
    failures_after_address_change,
    failures_by_outcome,
    health_by,
    health_by_period,
    host_health,
    retry_patterns,
    scan_patterns,
)
from meshnode.summary import destination_key, process_key
from tests.unit._flows import T0, S, flow


def _mix(good: int, **bad: int) -> list:
    recs = [flow(i) for i in range(1, good + 1)]
    n = good
    for outcome, count in bad.items():
        for _ in range(count):
            n += 1
            recs.append(flow(n, outcome=outcome))
    return recs


@pytest.mark.parametrize(
    ("records", "attempts", "useful", "fraction", "failures"),
    [
        (_mix(7, refused=3), 10, 7, 0.7, {"refused": 3}),
        (_mix(0), 0, 0, None, {}),
        (_mix(2, timeout=1, reset=1), 4, 2, 0.5, {"timeout": 1, "reset": 1}),
        (_mix(3, in_progress=5), 3, 3, 1.0, {}),  # in_progress flows are not attempts yet
        ([flow(1, proto="udp", outcome="udp_answered"), flow(2, proto="udp", outcome="udp_unanswered")],
         2, 1, 0.5, {"udp_unanswered": 1}),
        (_mix(0, refused=2, timeout=2), 4, 0, 0.0, {"refused": 2, "timeout": 2}),
    ],
)
def test_host_health(records, attempts, useful, fraction, failures) -> None:
    row = host_health(records)
    assert (row.attempts, row.useful, row.failures) == (attempts, useful, failures)
    assert row.useful_fraction == (pytest.approx(fraction) if fraction is not None else None)
    assert failures_by_outcome(records) == failures


def test_health_by_process_destination_and_period() -> None:
    recs = [
        flow(1, comm="curl", pid=1), flow(2, comm="curl", pid=1, outcome="refused"),
        flow(3, comm="apt", pid=2, dst="10.0.0.9", dport=80, outcome="timeout"),
    ]
    by_proc = health_by(recs, "process", process_key)
    assert [(r.key, r.attempts, r.useful) for r in by_proc] == [("curl/1", 2, 1), ("apt/2", 1, 0)]
    by_dst = health_by(recs, "destination", destination_key)
    assert [(r.key, r.useful_fraction) for r in by_dst] == [("10.0.0.2:443", 0.5), ("10.0.0.9:80", 0.0)]
    by_period = health_by_period([(2, recs[0]), (1, recs[1]), (2, recs[2])])
    assert [(r.scope, r.key, r.attempts, r.useful) for r in by_period] == [("period", "1", 1, 0),
                                                                           ("period", "2", 2, 1)]


@pytest.mark.parametrize(
    ("starts_s", "min_failures", "expected"),
    [
        ([0, 6, 12, 18], 3, (4, 6000.0, 6000.0, 6000.0)),       # a fixed 6 s retry (seed 004's patcher)
        ([0, 1, 3, 7, 15], 3, (5, 3000.0, 1000.0, 8000.0)),     # exponential backoff
        ([0, 6], 3, None),                                       # two failures are not a pattern
        ([10, 0, 5], 3, (3, 5000.0, 5000.0, 5000.0)),           # order of arrival does not matter
    ],
)
def test_retry_patterns(starts_s, min_failures, expected) -> None:
    recs = [flow(i + 1, outcome="timeout", start_ns=T0 + s * S) for i, s in enumerate(starts_s)]
    recs.append(flow(99, outcome="established"))          # successes are not retries
    recs.append(flow(98, outcome="refused", dport=8443))  # another destination
    pats = retry_patterns(recs, min_failures)
    if expected is None:
        assert pats == []
        return
    [p] = pats
    assert (p.failures, p.interval_p50_ms, p.interval_min_ms, p.interval_max_ms) == expected
    assert (p.comm, p.pid, p.destination) == ("curl", 100, "10.0.0.2:443")
    assert p.first_ns == T0 + min(starts_s) * S and p.last_ns == T0 + max(starts_s) * S


@pytest.mark.parametrize(
    ("ports", "outcome", "direction", "found"),
    [
        (range(20, 30), "refused", "inbound", (10, 10)),
        ([22, 22, 22, 22, 22, 22], "refused", "inbound", None),  # one port many times: not a scan
        (range(20, 30), "established", "inbound", None),          # answered: not failures
        (range(20, 30), "refused", "outbound", None),             # outbound: retries, not scans
        ([21, 22, 23, 25, 80, 80], "reset", "inbound", (5, 6)),
    ],
)
def test_scan_patterns(ports, outcome, direction, found) -> None:
    recs = [flow(i + 1, sport=p, dst="192.0.2.66", direction=direction, outcome=outcome)
            for i, p in enumerate(ports)]
    scans = scan_patterns(recs)
    if found is None:
        assert scans == []
    else:
        [s] = scans
        assert (s.src, s.ports, s.failures) == ("192.0.2.66", *found)


@pytest.mark.parametrize(
    ("changes_s", "failure_starts_s", "expected"),
    [
        ([100], [101, 130, 160, 161, 99], 3),  # 101, 130, 160 within 60 s after; 161 too late; 99 before
        ([], [1, 2], 0),
        ([0, 200], [30, 230, 100], 2),
    ],
)
def test_failures_after_address_change(changes_s, failure_starts_s, expected) -> None:
    recs = [flow(i + 1, outcome="timeout", start_ns=T0 + s * S) for i, s in enumerate(failure_starts_s)]
    recs.append(flow(50, start_ns=T0 + 101 * S))  # a success right after a change does not count
    assert failures_after_address_change(recs, [T0 + c * S for c in changes_s]) == expected


def test_health_from_counts_matches_health_by() -> None:
    """The aggregate path (store GROUP BY) and the record path give the same rows."""
    from meshnode.health import health_from_counts

    recs = _mix(7, refused=3, timeout=2, in_progress=4)
    recs += [flow(100 + i, comm="apt", pid=2, outcome="udp_unanswered") for i in range(3)]
    counts: dict[tuple[str, str], int] = {}
    for r in recs:
        k = (process_key(r), r.outcome)
        counts[k] = counts.get(k, 0) + 1
    from_counts = health_from_counts("process", ((k, o, n) for (k, o), n in counts.items()))
    assert from_counts == health_by(recs, "process", process_key)
    assert [(r.key, r.attempts, r.useful) for r in from_counts] == [("curl/100", 12, 7), ("apt/2", 3, 0)]


def _reference_retries(recs: list, min_failures: int) -> list[tuple]:
    """The per-record algorithm the columnar one replaced: group, sort starts, gaps, median."""
    groups: dict[tuple, list[int]] = {}
    for r in recs:
        if r.failed and r.direction == "outbound":
            groups.setdefault((r.comm, r.pid, r.destination), []).append(r.start_ns)
    out = []
    for (comm, pid, dest), starts in groups.items():
        if len(starts) < min_failures:
            continue
        starts.sort()
        gaps = sorted((b - a) / 1e6 for a, b in itertools.pairwise(starts))
        mid = len(gaps) // 2
        median = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
        out.append((-len(starts), comm, pid, dest, median, gaps[0], gaps[-1], starts[0], starts[-1]))
    return sorted(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["curl", "apt"]), st.integers(1, 2),
                          st.sampled_from(["10.0.0.2", "fd00::2"]), st.sampled_from([443, 80]),
                          st.integers(0, 50), st.sampled_from(["timeout", "refused", "established", "reset"]),
                          st.sampled_from(["outbound", "inbound"])), max_size=60),
       st.integers(2, 5))
def test_columnar_retries_equal_the_per_record_algorithm(rows, min_failures) -> None:
    recs = [flow(i + 1, comm=c, pid=p, dst=d, dport=port, start_ns=T0 + s * S // 7, outcome=o, direction=dr)
            for i, (c, p, d, port, s, o, dr) in enumerate(rows)]
    got = [(-p.failures, p.comm, p.pid, p.destination, p.interval_p50_ms, p.interval_min_ms, p.interval_max_ms,
            p.first_ns, p.last_ns) for p in retry_patterns(recs, min_failures)]
    assert got == _reference_retries(recs, min_failures)
    # the same from columns (what the Health RPC passes) as from records
    batch = FlowBatch.from_records(recs)
    assert retry_patterns({n: batch[n] for n in RETRY_COLUMNS}, min_failures) == retry_patterns(recs, min_failures)
    scans_ref: dict[str, tuple[set, int]] = {}
    for r in recs:
        if r.failed and r.direction == "inbound":
            ports, n = scans_ref.get(r.dst, (set(), 0))
            scans_ref[r.dst] = (ports | {r.sport}, n + 1)
    assert [(s.src, s.ports, s.failures) for s in scan_patterns(recs, 2)] == sorted(
        ((src, len(p), n) for src, (p, n) in scans_ref.items() if len(p) >= 2), key=lambda t: (-t[1], -t[2], t[0]))


def test_retry_patterns_refuse_a_minimum_below_two() -> None:
    with pytest.raises(ValueError, match="min_failures: 1 is below 2"):
        retry_patterns([], 1)
