"""``PeriodBuilder`` across periods against a per-row reference of its delta rule: a flow's delta is its totals
less those of its interim record in the previous built period (never below zero), row by row; what is
remembered after a period is exactly its interims (the last one of a flow id). Interim then final, a flow id
repeated (a reconnect reusing an id, the same flow final and interim in one period), counters that went back,
a period built and then restored (the node's retry after a StoreError).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from meshnode._model import FlowRecord
from meshnode.store import FlowQuery, Store
from meshnode.summary import PeriodBuilder, with_service
from tests._support.rollups import reference_rollup
from tests.unit._flows import T0, S, flow

HANDSHAKE_ENDED = ("established", "refused", "timeout", "reset")


class ReferenceBuilder:
    def __init__(self) -> None:
        # flow id -> its last interim's totals (bytes_tx, bytes_rx, retransmits, responses, response_us_sum)
        # and whether its handshake's outcome was known (counted) by then
        self.last: dict[int, tuple[tuple[int, ...], bool]] = {}

    def build(self, finals: list[FlowRecord], interims: list[FlowRecord]) -> dict[str, Any]:
        rows = []
        timing = []
        counted = []
        for i, rec in enumerate((*finals, *interims)):
            prev = self.last.get(rec.flow_id)
            totals = (rec.bytes_tx, rec.bytes_rx, rec.retransmits, rec.responses, rec.response_us_sum)
            delta = totals if prev is None else tuple(max(0, t - p) for t, p in zip(totals, prev[0], strict=True))
            rows.append((rec, delta[:3]))
            # a handshake counts in the period its outcome became known, once; a first byte in the period
            # the flow's first exchange completed
            decided = i < len(finals) or rec.outcome in HANDSHAKE_ENDED
            before = prev is not None and prev[1]
            connected = decided and not before and rec.proto == "tcp" and rec.outcome == "established"
            timing.append((delta[3], delta[4], 0 < delta[3] == rec.responses, connected))
            counted.append(before or decided)
        self.last = {r.flow_id: ((r.bytes_tx, r.bytes_rx, r.retransmits, r.responses, r.response_us_sum), c)
                     for r, c in zip(interims, counted[len(finals):], strict=True)}
        outbound = [(r, d) for r, d in rows if r.direction != "inbound"]
        inbound = [(r, d) for r, d in rows if r.direction == "inbound"]
        t_out = [t for (r, _), t in zip(rows, timing, strict=True) if r.direction != "inbound"]
        t_in = [t for (r, _), t in zip(rows, timing, strict=True) if r.direction == "inbound"]
        last_bytes = {}
        for proto in ("tcp", "udp"):
            mine = [d for r, d in rows if r.proto == proto]
            if mine:
                last_bytes[proto] = (sum(d[0] for d in mine), sum(d[1] for d in mine))
        ref = reference_rollup
        return {"by_process": ref(rows, "process", False, timing),
                "by_destination": ref(outbound, "destination", True, t_out),
                "by_service": ref(inbound, "service", True, t_in), "by_cgroup": ref(rows, "cgroup", False, timing),
                "final_flows": len(finals), "interim_flows": len(interims), "last_bytes": last_bytes}


def _summary(b: PeriodBuilder, s: Any) -> dict[str, Any]:
    return {"by_process": [dataclasses.asdict(r) for r in s.by_process],
            "by_destination": [dataclasses.asdict(r) for r in s.by_destination],
            "by_service": [dataclasses.asdict(r) for r in s.by_service],
            "by_cgroup": [dataclasses.asdict(r) for r in s.by_cgroup],
            "final_flows": s.final_flows, "interim_flows": s.interim_flows, "last_bytes": b.last_bytes}


def _rec(rnd: random.Random, fid: int, kind: str, totals: dict[int, int]) -> FlowRecord:
    # totals mostly grow; sometimes a counter goes back (a reused id, a reset): the delta is then 0
    grow = rnd.choice((0, 100, 5000, -700))
    totals[fid] = max(0, totals.get(fid, 0) + grow)
    exchanges = totals[fid] // 2000  # grows with the bytes: 0 for a while, then more
    return flow(fid, kind=kind, comm=rnd.choice(("curl", "", "?", "dig")), pid=rnd.choice((1, 2)),
                dst=rnd.choice(("10.0.0.2", "fd00::5")), dport=rnd.choice((443, 53)),
                src=rnd.choice(("10.0.0.1", "fd00::1")), sport=rnd.choice((22, 40000)),
                direction=rnd.choice(("outbound", "inbound", "unknown")),
                proto=rnd.choice(("tcp", "udp")),
                outcome=rnd.choice(("established", "refused", "in_progress", "udp_answered", "unknown")),
                cgroup=rnd.choice(("", "/", "/a.service")), bytes_tx=totals[fid], bytes_rx=totals[fid] // 3,
                retransmits=rnd.choice((0, 1, 5, 300)) if grow >= 0 else 0, packets_tx=rnd.choice((0, 10, 1000)),
                srtt_us=rnd.choice((0, 7, 1001)), connect_us=rnd.choice((0, 250_000)),
                responses=exchanges, response_us_sum=exchanges * rnd.choice((900, 150_000)),
                response_us_max=rnd.choice((900, 150_000)), first_byte_us=rnd.choice((3, 900, 150_000)),
                answer_us_sum=exchanges * rnd.choice((500, 120_000)),
                min_rtt_us=rnd.choice((0, 100)), max_rtt_us=rnd.choice((100, 60_000)))


@pytest.mark.parametrize("seed", range(30))
def test_builder_deltas_across_periods_equal_the_per_row_rule(seed: int) -> None:
    rnd = random.Random(seed)
    b, ref = PeriodBuilder("n"), ReferenceBuilder()
    totals: dict[int, int] = {}
    live: set[int] = set()
    for seq in range(1, 8):
        finals = []
        for fid in sorted(live):
            if rnd.random() < 0.3:  # a long flow ends: its final after interims
                finals.append(_rec(rnd, fid, "final", totals))
                live.discard(fid)
        for _ in range(rnd.randint(0, 4)):
            fid = rnd.randint(1, 12)  # small ids: reconnects reuse them, finals repeat in a period
            finals.append(_rec(rnd, fid, "final", totals))
        live |= {rnd.randint(1, 12) for _ in range(rnd.randint(0, 3))}
        interims = [_rec(rnd, fid, "interim", totals) for fid in sorted(live)]
        if interims and rnd.random() < 0.2:  # the same id twice among the interims: the later is remembered
            interims.append(_rec(rnd, interims[0].flow_id, "interim", totals))
        if rnd.random() < 0.3:  # a failed write: built, restored, built again with the same records
            kept = b.remembered()
            b.build(seq, 0, 1, finals, interims)
            b.restore(kept)
        want = ref.build(finals, interims)
        got = _summary(b, b.build(seq, 0, 1, finals, interims))
        assert got == want, (seq, finals, interims)


def _interim_with(tmp_path: Path, **big: int) -> list[FlowRecord]:
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [], [flow(1, kind="interim", **big)])
        with store.reader() as conn:
            return [s.record for s in store.query_flows(FlowQuery(include_interim=True), conn)]


def test_an_interim_with_a_u64_counter_above_2_63_is_stored(tmp_path: Path) -> None:
    got = _interim_with(tmp_path, bytes_tx=2**63, delivery_rate=2**64 - 1)
    assert [(r.bytes_tx, r.delivery_rate) for r in got] == [(2**63, 2**64 - 1)]


def test_service_of_an_unknown_direction_follows_with_service() -> None:
    from meshnode.summary._period import rollup

    rec = flow(1, direction="unknown", dport=53, sport=40000, proto="udp", service="")
    assert [r.service for r in rollup([rec], "destination", with_services=True)] == [with_service(rec).service]
