"""Export periods: what one period saw, rolled up per process, destination, local service and cgroup.

A period holds the FINAL records of flows that ended in it and the INTERIM records of flows still active at
its end. Counters on records are totals since the flow started; rollups count what happened *in* the period,
so ``PeriodBuilder`` remembers each active flow's totals at the previous period and rolls up the deltas. A
one-hour transfer therefore adds its bytes of each period to that period, and its total once. Rollups are
computed on the columns of a ``FlowBatch``; a list of records is accepted and converted (tests, small callers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from meshnode._batch import FAILED, USEFUL, FlowBatch, as_batch, factorize
from meshnode._model import ENUM_NAMES, ENUM_NUMBERS, FlowRecord
from meshnode.sensor._resolve import service_name
from meshnode.summary._problems import RETRANSMIT_RATE, SLOW_CONNECT_US, queueing, slow_answers
from meshnode.summary._timing import histograms

if TYPE_CHECKING:
    from numpy.typing import NDArray


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
    throughput_p50_bps: int = 0
    """Median TCP delivery rate (``delivery_rate``, in bit/s) of the rows with one, finals and interims:
    what the flows could move, which unlike bytes per period does not depend on how much they had to send."""
    throughput_p05_bps: int = 0
    """The 5th percentile of the same: the slow tail (throughput is bad when low)."""
    responses: int = 0
    """Exchanges (request, then the first byte of the answer) the flows completed in the period."""
    response_us_sum: int = 0
    """Their total duration in microseconds."""
    response_us_max: int = 0
    """The longest exchange of the flows that completed one in the period (a flow's longest in its life)."""
    response_hist: list[int] = field(default_factory=list)
    """Exchanges of the period by log2 bucket of their duration (``_timing``), each flow's at its mean."""
    first_byte_hist: list[int] = field(default_factory=list)
    """Flows whose first exchange completed in the period, by log2 bucket of its duration (time to first byte)."""
    connect_hist: list[int] = field(default_factory=list)
    """TCP flows whose handshake completed in the period, by log2 bucket of its duration."""
    flows_slow_path: int = 0
    """Useful flows whose RTT rose by ``PATH_QUEUE_US`` over their minimum (``slow_path``), not counted above."""
    flows_slow_server: int = 0
    """Useful flows whose peer took ``SLOW_RESPONSE_US`` on average to answer requests it had (``slow_server``),
    not counted above."""
    remote_name: str = ""
    """By destination: the DNS name of its first flow that has one (``FlowRecord.remote_name``), else ''."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What a flow did in one period."""

    bytes_tx: int
    bytes_rx: int
    retransmits: int
    counted: bool = False
    """The flow's connection was counted already (``PeriodFlows.opened``): its outcome was known."""
    responses: int = 0
    response_us_sum: int = 0


@dataclass(frozen=True, slots=True)
class TimingDeltas:
    """What each flow of a batch timed in one period, aligned with it (``rollup``'s ``timing``)."""

    responses: NDArray[np.int64]
    """Exchanges completed in the period."""
    response_us_sum: NDArray[np.int64]
    """Their total duration."""
    first_byte: NDArray[np.bool_]
    """The flow's first exchange completed in the period: its ``first_byte_us`` counts here."""
    connected: NDArray[np.bool_]
    """The flow's handshake completed in the period: its ``connect_us`` counts here."""

    def take(self, rows: NDArray[Any]) -> TimingDeltas:
        """The flows at ``rows`` (indices or a mask)."""
        return TimingDeltas(self.responses[rows], self.response_us_sum[rows], self.first_byte[rows],
                            self.connected[rows])

    @staticmethod
    def totals(b: FlowBatch) -> TimingDeltas:
        """Each flow's totals as if all of it happened in one period."""
        responses = b["responses"].astype(np.int64)
        return TimingDeltas(responses, b["response_us_sum"].astype(np.int64), responses > 0, _handshake_done(b))


def _handshake_done(b: FlowBatch) -> NDArray[np.bool_]:
    """TCP flows whose handshake completed (their ``connect_us`` is a duration)."""
    done: NDArray[np.bool_] = ((b["proto"] == ENUM_NUMBERS["proto"]["tcp"])
                               & (b["outcome"] == ENUM_NUMBERS["outcome"]["established"]))
    return done


@dataclass(frozen=True, slots=True)
class PeriodFlows:
    """The flows of the last built period with what each did in it, aligned row by row (the metrics' input:
    counters that add each period's work need the deltas, and each connection counted once)."""

    flows: FlowBatch
    """Finals, then interims."""
    bytes_tx: NDArray[np.int64]
    bytes_rx: NDArray[np.int64]
    retransmits: NDArray[np.int64]
    opened: NDArray[np.bool_]
    """Flows whose connection outcome became known in this period, each flow once in its life: a final
    record not counted before, or an interim one whose TCP handshake ended (established, refused, reset,
    timeout). A UDP flow counts when it ends, as its answer may come any time before."""


ROLLUP_KEYS: Final = ("process", "destination", "service", "cgroup")
"""What ``rollup`` groups by: ``comm/pid``, remote ``dst:dport``, local ``src:sport``, the cgroup path."""


def rollup(
    flows: FlowBatch | Iterable[FlowRecord],
    key: str,
    deltas: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]] | None = None,
    *,
    with_services: bool = False,
    timing: TimingDeltas | None = None,
) -> list[Rollup]:
    """Roll flows up by ``key`` (one of ``ROLLUP_KEYS``), on the batch's columns.

    Byte and retransmit counts are ``deltas`` (bytes_tx, bytes_rx, retransmits: what each flow did in the
    period, aligned with the batch) when given, else the flows' totals; exchanges and the connect and
    first-byte histograms likewise count ``timing`` when given. With ``with_services`` each row
    names the service of its first flow (its ``service``, else the name of the port the key holds).
    Sorted by flows (descending), then key, so the busiest come first and output is deterministic.
    """
    b = as_batch(flows)
    if not b.n:
        return []
    codes, keys = _group(b, key)
    k = len(keys)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=k)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))

    def sums(values: NDArray[Any]) -> list[int]:
        return np.add.reduceat(values[order].astype(np.int64), starts).tolist()  # type: ignore[no-any-return]

    outcome = b["outcome"]
    useful = np.isin(outcome, USEFUL)
    retrans = b["retransmits"]
    degraded = useful & (retrans > 0) & (retrans >= RETRANSMIT_RATE * np.maximum(1, b["packets_tx"]))
    slow = useful & ~degraded & (b["connect_us"] > SLOW_CONNECT_US)
    max_rtt = b["max_rtt_us"]
    path = useful & ~degraded & ~slow & queueing(max_rtt, b["min_rtt_us"])
    server = useful & ~degraded & ~slow & ~path & slow_answers(b["responses"], b["answer_us_sum"])
    tx, rx, re = deltas if deltas is not None else (b["bytes_tx"], b["bytes_rx"], retrans)
    n_useful = np.bincount(codes[useful], minlength=k).tolist()
    n_degraded = np.bincount(codes[degraded], minlength=k).tolist()
    n_slow = np.bincount(codes[slow], minlength=k).tolist()
    n_path = np.bincount(codes[path], minlength=k).tolist()
    n_server = np.bincount(codes[server], minlength=k).tolist()
    tm = timing if timing is not None else TimingDeltas.totals(b)
    timed = tm.responses > 0
    n_resp = np.bincount(codes[timed], weights=tm.responses[timed], minlength=k)
    resp_sum = np.bincount(codes[timed], weights=tm.response_us_sum[timed], minlength=k)
    resp_max = np.zeros(k, dtype=np.int64)
    np.maximum.at(resp_max, codes[timed], b["response_us_max"][timed].astype(np.int64))
    resp_hist = histograms(codes[timed], tm.response_us_sum[timed] // tm.responses[timed], k,
                           tm.responses[timed])
    first_hist = histograms(codes[tm.first_byte], b["first_byte_us"][tm.first_byte], k)
    connect_hist = histograms(codes[tm.connected], b["connect_us"][tm.connected], k)
    failures: list[dict[str, int]] = [{} for _ in range(k)]
    for number in FAILED:
        hit = outcome == number
        if hit.any():
            name = ENUM_NAMES["outcome"][number]
            for code, n in zip(*np.unique(codes[hit], return_counts=True), strict=True):
                failures[code][name] = int(n)
    p50, p95 = _percentiles(codes, b["srtt_us"], k, (0.5, 0.95))
    t50, t05 = _percentiles(codes, b["delivery_rate"].astype(np.float64) * 8, k, (0.5, 0.05))
    services = _services(b, codes, k) if with_services else [""] * k
    names = _names(b, codes, k) if key == "destination" else [""] * k
    out = [
        Rollup(key=keys[i], flows=f, useful=u, failures=failures[i], bytes_tx=btx, bytes_rx=brx,
               retransmits=r, rtt_p50_us=p50[i], rtt_p95_us=p95[i], service=services[i],
               flows_retransmitting=d, flows_slow_connect=sl, throughput_p50_bps=t50[i], throughput_p05_bps=t05[i],
               responses=round(n_resp[i]),
               response_us_sum=round(resp_sum[i]), response_us_max=int(resp_max[i]), response_hist=resp_hist[i],
               first_byte_hist=first_hist[i], connect_hist=connect_hist[i], flows_slow_path=n_path[i],
               flows_slow_server=n_server[i], remote_name=names[i])
        for i, (f, u, btx, brx, r, d, sl) in enumerate(zip(
            counts.tolist(), n_useful, sums(tx), sums(rx), sums(re), n_degraded, n_slow, strict=True))
    ]
    out.sort(key=lambda r: (-r.flows, r.key))
    return out


def _group(b: FlowBatch, key: str) -> tuple[NDArray[np.intp], list[str]]:
    """Group codes per flow and the key text of each group (groups whose texts coincide are merged)."""
    if key == "process":
        codes, values = factorize(b["comm"], b["pid"])
        texts = [format_process(comm, pid) for comm, pid in values]
    elif key == "destination":
        codes, values = factorize(b["dst"], b["dport"])
        texts = [format_destination(dst, port) for dst, port in values]
    elif key == "service":
        codes, values = factorize(b["src"], b["sport"])
        texts = [format_destination(src, port) for src, port in values]
    elif key == "cgroup":
        codes, values = factorize(b["cgroup"])
        texts = [c or "/" for c in values]
    else:
        raise ValueError(f"rollup key must be one of {', '.join(ROLLUP_KEYS)}, not {key!r}")
    index: dict[str, int] = {}
    remap = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.intp, count=len(texts))
    if len(index) == len(texts):
        return codes, texts
    return remap[codes], list(index)


def _percentiles(codes: NDArray[np.intp], values: NDArray[Any], k: int,
                 qs: tuple[float, float]) -> tuple[list[int], list[int]]:
    """Per group, the two ``qs`` quantiles of the non-zero values (``percentile``'s rule), rounded."""
    has = values != 0
    p50 = np.zeros(k, dtype=np.float64)
    p95 = np.zeros(k, dtype=np.float64)
    if has.any():
        c, v = codes[has], values[has].astype(np.float64)
        order = np.lexsort((v, c))
        c, v = c[order], v[order]
        n = np.bincount(c, minlength=k)
        start = np.concatenate(([0], np.cumsum(n)[:-1]))
        groups = np.flatnonzero(n)
        for q, out in zip(qs, (p50, p95), strict=True):
            pos = (n[groups] - 1) * q
            lo = pos.astype(np.int64)
            hi = np.minimum(lo + 1, n[groups] - 1)
            a, z = v[start[groups] + lo], v[start[groups] + hi]
            out[groups] = a + (z - a) * (pos - lo)
    return [round(x) for x in p50.tolist()], [round(x) for x in p95.tolist()]


def _services(b: FlowBatch, codes: NDArray[np.intp], k: int) -> list[str]:
    """Each group's service: its first flow's (``with_services``)."""
    first = np.full(k, len(codes), dtype=np.intp)
    np.minimum.at(first, codes, np.arange(len(codes), dtype=np.intp))
    return with_services(b, first).tolist()  # type: ignore[no-any-return]


def _names(b: FlowBatch, codes: NDArray[np.intp], k: int) -> list[str]:
    """Each group's DNS name: that of its first flow with one, else ''."""
    named = np.flatnonzero(b["remote_name"] != "")
    out = [""] * k
    if len(named):
        first = np.full(k, len(codes), dtype=np.intp)
        np.minimum.at(first, codes[named], named)
        for group in np.flatnonzero(first < len(codes)).tolist():
            out[group] = b["remote_name"][first[group]]
    return out


def with_services(flows: FlowBatch, rows: NDArray[np.intp]) -> NDArray[Any]:
    """``with_service`` on columns: the service of each flow at ``rows`` (an object array), its own
    ``service`` when set, else the name of its remote port (outbound) or local port (otherwise); each
    (port, protocol) named once, the rest in numpy."""
    out: NDArray[Any] = flows["service"][rows].copy()
    unnamed = np.flatnonzero(out == "")
    if len(unnamed):
        at = rows[unnamed]
        outbound = flows["direction"][at] == ENUM_NUMBERS["direction"]["outbound"]
        ports = np.where(outbound, flows["dport"][at], flows["sport"][at]).astype(np.int64)
        keys, codes = np.unique(ports * 256 + flows["proto"][at], return_inverse=True)
        protos = ENUM_NAMES["proto"]
        names = np.empty(len(keys), dtype=object)
        names[:] = [service_name(k >> 8, protos.get(k & 255, "unknown")) for k in keys.tolist()]
        out[unnamed] = names[codes.reshape(len(at))]
    return out


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
        """Compact JSON for the store (a walk over the fields: ``dataclasses.asdict`` deep-copies every
        value and took most of a period close's CPU at thousands of rollup rows)."""
        data: dict[str, Any] = {}
        for name in _SUMMARY_FIELDS:
            value = getattr(self, name)
            if name in _ROLLUP_LISTS:
                value = [{f: getattr(r, f) for f in _ROLLUP_FIELDS} for r in value]
            data[name] = value
        return json.dumps(data, separators=(",", ":"))

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
        self.last_flows = PeriodFlows(FlowBatch.empty(), *(np.zeros(0, dtype=np.int64),) * 3,
                                      np.zeros(0, dtype=np.bool_))
        """The flows of the last built period and what each did in it."""
        self.last_bytes: dict[str, tuple[int, int]] = {}
        """What the flows of the last built period sent and received in it, by transport (``tcp``/``udp``)."""

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
        finals: FlowBatch | Sequence[FlowRecord],
        interims: FlowBatch | Sequence[FlowRecord],
        completeness: Mapping[str, int] | None = None,
    ) -> PeriodSummary:
        """The summary of one period; updates the remembered totals.

        A flow's delta is its totals less those remembered from its interim record of the previous period
        (never below zero); the flows remembered afterwards are exactly this period's interims (a final
        record ends a flow, and a flow neither final nor interim vanished: sensor restart, eviction).
        """
        fin, inter = as_batch(finals), as_batch(interims)
        flows = FlowBatch.concat([fin, inter])
        ids = flows["flow_id"]
        names = ("bytes_tx", "bytes_rx", "retransmits", "responses", "response_us_sum")
        tx, rx, re, rc, rs = (flows[name].astype(np.int64) for name in names)
        counted = np.zeros(flows.n, dtype=np.bool_)
        last = self._last
        if last:
            hit = [i for i, fid in enumerate(ids.tolist()) if fid in last]
            if hit:
                tx, rx, re, rc, rs = tx.copy(), rx.copy(), re.copy(), rc.copy(), rs.copy()
                prev = [last[fid] for fid in ids[hit].tolist()]
                for col, attr in zip((tx, rx, re, rc, rs), names, strict=True):
                    before = np.fromiter((getattr(d, attr) for d in prev), dtype=np.int64, count=len(prev))
                    col[hit] = np.maximum(0, col[hit] - before)
                counted[hit] = np.fromiter((d.counted for d in prev), dtype=np.bool_, count=len(prev))
        decided = np.isin(flows["outcome"], _HANDSHAKE_ENDED)
        decided[:fin.n] = True
        opened = decided & ~counted
        timing = TimingDeltas(rc, rs, (rc > 0) & (rc == flows["responses"]), opened & _handshake_done(flows))
        self._last = {
            fid: Delta(t, r, x, c, n, us) for fid, t, r, x, c, n, us in zip(
                inter["flow_id"].tolist(), inter["bytes_tx"].tolist(), inter["bytes_rx"].tolist(),
                inter["retransmits"].tolist(), (counted | decided)[fin.n:].tolist(),
                inter["responses"].tolist(), inter["response_us_sum"].tolist(), strict=True)
        }
        self.last_flows = PeriodFlows(flows, tx, rx, re, opened)
        self.last_bytes = {}
        protos = flows["proto"]
        for name, number in ENUM_NUMBERS["proto"].items():
            mask = protos == number
            if mask.any():
                self.last_bytes[name] = (int(tx[mask].sum()), int(rx[mask].sum()))
        deltas = (tx, rx, re)
        inbound = flows["direction"] == ENUM_NUMBERS["direction"]["inbound"]
        outbound = ~inbound
        return PeriodSummary(
            node_id=self.node_id, seq=seq, period_start_ns=start_ns, period_end_ns=end_ns,
            by_process=rollup(flows, "process", deltas, timing=timing),
            by_destination=rollup(flows.take(outbound), "destination",
                                  (tx[outbound], rx[outbound], re[outbound]),
                                  with_services=True, timing=timing.take(outbound)),
            by_cgroup=rollup(flows, "cgroup", deltas, timing=timing),
            by_service=rollup(flows.take(inbound), "service",
                              (tx[inbound], rx[inbound], re[inbound]),
                              with_services=True, timing=timing.take(inbound)),
            completeness=dict(completeness or {}),
            final_flows=fin.n, interim_flows=inter.n,
        )


_HANDSHAKE_ENDED: Final = tuple(ENUM_NUMBERS["outcome"][o] for o in ("established", "refused", "timeout", "reset"))
_SUMMARY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(PeriodSummary))
_ROLLUP_LISTS: Final = frozenset(("by_process", "by_destination", "by_cgroup", "by_service"))
_ROLLUP_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Rollup))
