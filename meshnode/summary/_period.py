"""Export periods: what one period saw, rolled up per process, destination and cgroup.

A period holds the FINAL records of flows that ended in it and the INTERIM records of flows still active at
its end. Counters on records are totals since the flow started; rollups count what happened *in* the period,
so ``PeriodBuilder`` remembers each active flow's totals at the previous period and rolls up the deltas. A
one-hour transfer therefore adds its bytes of each period to that period, and its total once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshnode._model import FlowRecord
from meshnode.sensor._resolve import service_name
from meshnode.summary._problems import RETRANSMITS, SLOW_CONNECT, problem_kind


def with_service(rec: FlowRecord) -> FlowRecord:
    """The record with ``service`` filled from its remote port (outbound) or local port (inbound)."""
    if rec.service:
        return rec
    port = rec.dport if rec.direction == "outbound" else rec.sport
    name = service_name(port, rec.proto)
    return rec.replace(service=name) if name else rec


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def format_process(comm: str, pid: int) -> str:
    """The key of a process: ``comm/pid`` (``?`` for an unknown name)."""
    return f"{comm or '?'}/{pid}"


def format_destination(dst: str, dport: int) -> str:
    """The key of a destination: ``dst:dport`` (IPv6 in brackets), as ``FlowRecord.destination``."""
    host = f"[{dst}]" if ":" in dst else dst
    return f"{host}:{dport}"


def process_key(rec: FlowRecord) -> str:
    """Rollup key of a process: ``comm/pid``."""
    return format_process(rec.comm, rec.pid)


def destination_key(rec: FlowRecord) -> str:
    """Rollup key of a destination: ``dst:dport`` (IPv6 in brackets)."""
    return rec.destination


def service_key(rec: FlowRecord) -> str:
    """Rollup key of a local service: ``src:sport`` of an inbound flow (the port clients connect to)."""
    return format_destination(rec.src, rec.sport)


def cgroup_key(rec: FlowRecord) -> str:
    """Rollup key of a cgroup: its path (``/`` when unknown)."""
    return rec.cgroup or "/"


@dataclass(slots=True)
class Rollup:
    """The flows of one key over one period (``meshnode.v1.Rollup``)."""

    key: str
    flows: int = 0
    useful: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    bytes_tx: int = 0
    bytes_rx: int = 0
    retransmits: int = 0
    rtt_p50_us: int = 0
    rtt_p95_us: int = 0
    service: str = ""
    flows_retransmitting: int = 0
    """Useful flows that retransmitted at least ``RETRANSMIT_RATE`` of their packets (diagnosis's
    ``retransmits`` problem kind): ``retransmits`` counts segments, which cannot say how many flows suffered."""
    flows_slow_connect: int = 0
    """Useful flows whose handshake took longer than ``SLOW_CONNECT_US`` (and did not retransmit enough to
    count above)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What a flow did in one period."""

    bytes_tx: int
    bytes_rx: int
    retransmits: int


def rollup(
    records: Iterable[FlowRecord],
    key: Callable[[FlowRecord], str],
    deltas: Mapping[int, Delta] | None = None,
    *,
    with_services: bool = False,
) -> list[Rollup]:
    """Roll ``records`` up by ``key``; byte and retransmit counts come from ``deltas`` when given.

    Sorted by flows (descending), then key, so the busiest come first and output is deterministic.
    """
    out: dict[str, Rollup] = {}
    rtts: dict[str, list[float]] = {}
    for rec in records:
        k = key(rec)
        r = out.get(k)
        if r is None:
            r = out[k] = Rollup(k, service=with_service(rec).service if with_services else "")
            rtts[k] = []
        r.flows += 1
        if rec.useful:
            r.useful += 1
            kind = problem_kind(rec)
            if kind == RETRANSMITS:
                r.flows_retransmitting += 1
            elif kind == SLOW_CONNECT:
                r.flows_slow_connect += 1
        elif rec.failed:
            r.failures[rec.outcome] = r.failures.get(rec.outcome, 0) + 1
        d = deltas.get(rec.flow_id) if deltas is not None else None
        if d is None:
            d = Delta(rec.bytes_tx, rec.bytes_rx, rec.retransmits)
        r.bytes_tx += d.bytes_tx
        r.bytes_rx += d.bytes_rx
        r.retransmits += d.retransmits
        if rec.srtt_us:
            rtts[k].append(rec.srtt_us)
    for k, r in out.items():
        r.rtt_p50_us = round(percentile(rtts[k], 0.5))
        r.rtt_p95_us = round(percentile(rtts[k], 0.95))
    return sorted(out.values(), key=lambda r: (-r.flows, r.key))


@dataclass(slots=True)
class PeriodSummary:
    """One export period of one node (``meshnode.v1.PeriodSummary``); stored as JSON with the period."""

    node_id: str
    seq: int
    period_start_ns: int
    period_end_ns: int
    by_process: list[Rollup] = field(default_factory=list)
    by_destination: list[Rollup] = field(default_factory=list)
    by_cgroup: list[Rollup] = field(default_factory=list)
    by_service: list[Rollup] = field(default_factory=list)
    """Inbound flows by the local service they reached (``src:sport``); ``by_destination`` holds the
    outbound flows by remote ``dst:dport`` (an inbound flow's remote port is the client's ephemeral one)."""
    completeness: dict[str, int] = field(default_factory=dict)
    final_flows: int = 0
    interim_flows: int = 0
    incomplete: bool = False

    def to_json(self) -> str:
        """Compact JSON for the store."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PeriodSummary:
        """Inverse of ``to_json``; unknown keys are ignored."""
        data: dict[str, Any] = json.loads(text)
        for name in ("by_process", "by_destination", "by_cgroup", "by_service"):
            data[name] = [Rollup(**r) for r in data.get(name, [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class PeriodBuilder:
    """Builds period summaries, remembering active flows' totals between periods to compute deltas."""

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self._last: dict[int, Delta] = {}
        self.last_deltas: dict[int, Delta] = {}
        """What each flow of the last built period did in it, by flow_id."""

    def remembered(self) -> dict[int, Delta]:
        """A copy of the remembered totals, to ``restore`` when the period just built is not stored."""
        return dict(self._last)

    def restore(self, remembered: dict[int, Delta]) -> None:
        """Forget what the last ``build`` remembered: the same records are built again later."""
        self._last = remembered

    def build(
        self,
        seq: int,
        start_ns: int,
        end_ns: int,
        finals: Sequence[FlowRecord],
        interims: Sequence[FlowRecord],
        completeness: Mapping[str, int] | None = None,
    ) -> PeriodSummary:
        """The summary of one period; updates the remembered totals."""
        deltas: dict[int, Delta] = {}
        last = self._last
        for rec in (*finals, *interims):
            prev = last.get(rec.flow_id)
            if prev is None:
                deltas[rec.flow_id] = Delta(rec.bytes_tx, rec.bytes_rx, rec.retransmits)
            else:
                deltas[rec.flow_id] = Delta(
                    max(0, rec.bytes_tx - prev.bytes_tx), max(0, rec.bytes_rx - prev.bytes_rx),
                    max(0, rec.retransmits - prev.retransmits),
                )
        for rec in finals:
            last.pop(rec.flow_id, None)
        active_ids = {rec.flow_id for rec in interims}
        for fid in [f for f in last if f not in active_ids]:
            del last[fid]  # vanished without a final record (sensor restart, eviction)
        for rec in interims:
            last[rec.flow_id] = Delta(rec.bytes_tx, rec.bytes_rx, rec.retransmits)
        self.last_deltas = deltas
        records = [*finals, *interims]
        return PeriodSummary(
            node_id=self.node_id, seq=seq, period_start_ns=start_ns, period_end_ns=end_ns,
            by_process=rollup(records, process_key, deltas),
            by_destination=rollup([r for r in records if r.direction != "inbound"], destination_key, deltas,
                                  with_services=True),
            by_service=rollup([r for r in records if r.direction == "inbound"], service_key, deltas,
                              with_services=True),
            by_cgroup=rollup(records, cgroup_key, deltas),
            completeness=dict(completeness or {}),
            final_flows=len(finals), interim_flows=len(interims),
        )
