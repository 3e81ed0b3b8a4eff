"""Health from the chunks' kept health rows and counts equals Health from their full rows, and the per-record
algorithms, on random data: several periods, filters, windows cutting chunks, age retention cutting one."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode import health as h
from meshnode._model import FlowRecord
from meshnode.api import ObserverServicer, Selector
from meshnode.store import Retention, Store
from meshnode.summary import destination_key, process_key
from meshnode.v1 import flow_pb2
from tests.unit._flows import T0, S, flow

F = flow_pb2.FlowFilter
PERIOD = 10 * S
OUTCOMES = ["established"] * 4 + ["refused", "timeout", "reset", "udp_answered", "udp_unanswered", "in_progress"]
SELECTORS = [
    Selector(),
    Selector.from_request([F(comm=["curl"])], []),
    Selector.from_request([F(dst=["10.0.0.0/30", "fd00::2"])], []),
    Selector.from_request([], [F(outcome=[flow_pb2.REFUSED])]),
    Selector.from_request([F(port=[443]), F(direction=[flow_pb2.INBOUND])], []),
]


def _records(rng: random.Random, periods: int) -> list[list[FlowRecord]]:
    out: list[list[FlowRecord]] = []
    fid = 0
    for p in range(periods):
        batch = []
        for _ in range(rng.randint(0, 60)):
            fid += 1
            end = T0 + p * PERIOD + rng.randrange(PERIOD)
            inbound = rng.random() < 0.3
            wide = inbound and rng.random() < 0.2  # a kernel-aggregated sweep of closed ports
            frag = rng.random() < 0.1
            batch.append(flow(
                fid, comm=rng.choice(["curl", "apt", "nginx"]), pid=rng.choice([1, 2]),
                dst=rng.choice(["10.0.0.1", "10.0.0.2", "10.0.0.9", "fd00::2", "192.0.2.7"]),
                dport=rng.choice([443, 80, 5432]), sport=rng.choice([22, 80, 443, 8080, 9000, 9001]),
                direction="inbound" if inbound else "outbound", proto=rng.choice(["tcp", "tcp", "udp"]),
                outcome="refused" if wide else rng.choice(OUTCOMES),
                attempts=rng.randint(2, 40) if wide else 0, ports_probed=rng.randint(2, 40) if wide else 0,
                start_ns=end - rng.randrange(3 * PERIOD), end_ns=end,
                icmp_frag_needed=rng.randint(1, 3) if frag else 0,
                path_mtu=rng.choice([0, 1280, 1400]) if frag else 0,
            ))
        out.append(batch)
    return out


def _mtu_reference(recs: list[FlowRecord]) -> list[tuple[str, int, int, int]]:
    """Path MTU problems, one record at a time."""
    mtu: dict[str, int] = {}
    flows: dict[str, int] = {}
    errors: dict[str, int] = {}
    for rec in recs:
        if rec.icmp_frag_needed:
            d = rec.destination
            flows[d] = flows.get(d, 0) + 1
            errors[d] = errors.get(d, 0) + rec.icmp_frag_needed
            if rec.path_mtu:
                mtu[d] = min(mtu.get(d, rec.path_mtu), rec.path_mtu)
    return sorted(((d, mtu.get(d, 0), n, errors[d]) for d, n in flows.items()), key=lambda t: (t[1], -t[3], t[0]))


def _rows(resp_rows: object) -> list[tuple[str, int, int, dict[str, int]]]:
    return [(r.key, r.attempts, r.useful, dict(r.failures)) for r in resp_rows]  # type: ignore[attr-defined]


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 5), st.booleans())
def test_health_rows_give_the_answers_of_full_rows_and_records(tmp_path_factory, seed: int, periods: int,
                                                                 cut: bool) -> None:
    rng = random.Random(seed)
    path = Path(tmp_path_factory.mktemp("h")) / "m.db"
    batches = _records(rng, periods)
    end = T0 + periods * PERIOD
    # age retention cutting through the oldest chunk: its health rows are rewritten with it
    max_age = (periods * PERIOD - rng.randrange(1, PERIOD)) / S if cut else 0.0
    store = Store(path, Retention(max_age_s=max_age, max_bytes=0))
    seq = store.open_period(T0)
    for p, batch in enumerate(batches):
        b = T0 + (p + 1) * PERIOD
        _, seq, _ = store.close_period(seq, b, batch, [], "{}", next_start_ns=b, now_ns=b)  # type: ignore[assignment]
    cutoff = end - int(max_age * S) if cut else 0
    kept = [r for batch in batches for r in batch if r.end_ns >= cutoff]
    sv = ObserverServicer(store)
    windows = [(T0, end), (T0 + rng.randrange(periods * PERIOD), end - rng.randrange(PERIOD))]
    cases = [(since, until, sel) for since, until in windows if since <= until for sel in SELECTORS]
    fast = [sv._health(since, until, sel, None) for since, until, sel in cases]
    with sqlite3.connect(path) as db:  # chunks as a store before health rows wrote them
        assert db.execute("SELECT COUNT(*) FROM chunks WHERE health IS NULL").fetchone()[0] == 0
        db.execute("UPDATE chunks SET health = NULL")
    slow = [sv._health(since, until, sel, None) for since, until, sel in cases]
    store.close()
    for (since, until, sel), got, full in zip(cases, fast, slow, strict=True):
        assert got == full
        recs = [r for r in kept if r.end_ns >= since and r.start_ns <= until and sel.matches(r)]
        scans = h.scan_patterns(recs)
        assert [(s.src, s.ports, s.failures) for s in got.scans] == [(s.src, s.ports, s.failures) for s in scans]
        assert [(p.comm, p.pid, p.destination, p.failures, p.interval_p50_ms, p.first_ns, p.last_ns)
                for p in got.retries] == [(p.comm, p.pid, p.destination, p.failures, p.interval_p50_ms, p.first_ns,
                                           p.last_ns) for p in h.retry_patterns(recs)]
        assert [(p.destination, p.mtu, p.flows, p.errors) for p in got.path_mtu] == _mtu_reference(recs)
        host = h.host_health(recs)
        for outcome, n in h.scan_flow_outcomes(recs, scans).items():
            host.remove_count(outcome, n)
        assert (got.host.attempts, got.host.useful, dict(got.host.failures)) == (
            host.attempts, host.useful, host.failures)
        assert _rows(got.by_process) == _rows(h.health_by(recs, "process", process_key))
        assert _rows(got.by_destination) == _rows(h.health_by(recs, "destination", destination_key))


def test_a_store_of_no_failures_keeps_empty_health_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db", Retention(max_age_s=0, max_bytes=0))
    seq = store.open_period(T0)
    store.close_period(seq, T0 + PERIOD, [flow(i) for i in range(1, 4)], [], "{}")
    resp = ObserverServicer(store)._health(T0, T0 + PERIOD, Selector(), None)
    store.close()
    assert (resp.host.attempts, resp.host.useful, list(resp.retries), list(resp.path_mtu)) == (3, 3, [], [])
