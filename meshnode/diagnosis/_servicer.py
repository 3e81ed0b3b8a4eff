"""``meshnode.v1.Diagnosis``: Blame and Compare over whatever a ``DiagnosisSource`` supplies.

The servicer knows nothing of the store or the mesh: the node backs ``DiagnosisSource`` with its own flows
(``transactions_from_flows``) and every verified digest it holds (``transactions_from_rollups``), and
``MemorySource`` is the simplest such backing (recent periods kept in memory; tests). The analyses are pure
and CPU-bound, so they run in the API's worker threads (``meshnode.api.ApiExecutor``, shared with the
Observer's queries and apart from sensor polls) and never stall the node loop.

Malformed requests fail with INVALID_ARGUMENT naming the field (text longer than ``MAX_TEXT``, more than
``MAX_GROUP_BY`` labels included); a source that cannot answer (its ``MeshnodeError``) fails the call with
UNAVAILABLE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol, TypeVar, cast

import grpc

from meshnode._exceptions import MeshnodeError
from meshnode.api import MAX_TEXT, ApiExecutor
from meshnode.diagnosis import _resolvers
from meshnode.diagnosis._blame import (
    _WORDS,
    MAX_SUSPECTS,
    PROBLEM_THRESHOLD,
    BlameConfig,
    BlameReport,
    Suspect,
    _pct,
    blame,
    entity_counts,
)
from meshnode.diagnosis._change import DEFAULT_H, PART_H, UP, Change, latest_changes
from meshnode.diagnosis._compare import DEFAULT_GROUP_BY, Comparison, PeerSample, compare, group_name
from meshnode.diagnosis._resolvers import by_period as dns_by_period
from meshnode.diagnosis._resolvers import resolver_counts, resolver_suspects, with_resolvers
from meshnode.diagnosis._taxonomy import DiscoveryChatter, RetryAdvice
from meshnode.health import resolver_health
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, flow_pb2

if TYPE_CHECKING:
    from meshnode._dns import DnsBatch
    from meshnode.diagnosis._transaction import Transaction

    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

DIAGNOSIS_SERVICE: Final = diagnosis_pb2.DESCRIPTOR.services_by_name["Diagnosis"].full_name
"""``meshnode.v1.Diagnosis``: the name to list in server reflection (meshctl looks for it)."""

DEFAULT_RANGE_NS: Final = 15 * 60 * 1_000_000_000
"""A request without ``since_ns`` covers this long before ``until_ns``."""

MAX_SUSPECTS_LIMIT: Final = 1_000
"""The most suspects a request may ask for."""

_KINDS: Final = {
    "process": diagnosis_pb2.ENTITY_KIND_PROCESS, "service": diagnosis_pb2.ENTITY_KIND_SERVICE,
    "host": diagnosis_pb2.ENTITY_KIND_HOST, "dst_host": diagnosis_pb2.ENTITY_KIND_DST_HOST,
    "site": diagnosis_pb2.ENTITY_KIND_SITE, "dst_site": diagnosis_pb2.ENTITY_KIND_DST_SITE,
    "path": diagnosis_pb2.ENTITY_KIND_PATH, "region": diagnosis_pb2.ENTITY_KIND_REGION,
    "dst_region": diagnosis_pb2.ENTITY_KIND_DST_REGION, "region_path": diagnosis_pb2.ENTITY_KIND_REGION_PATH,
    "uplink": diagnosis_pb2.ENTITY_KIND_UPLINK, "resolver": diagnosis_pb2.ENTITY_KIND_RESOLVER,
}
MAX_GROUP_BY: Final = 16
"""Labels a Compare request may group peers by."""
MAX_ADVICE: Final = 20
"""Retry advice and discovery rows per Blame answer at most (the worst first)."""

_PROTOS: Final = {"tcp": flow_pb2.TCP, "udp": flow_pb2.UDP}

T = TypeVar("T")


class DiagnosisSource(Protocol):
    """What the Diagnosis service analyses. Methods are called in a worker thread and may block."""

    def transactions(self, since_ns: int, until_ns: int) -> list[Transaction]:
        """Every host's transactions in ``[since_ns, until_ns]`` (local flows and mesh digests)."""

    def samples(self, since_ns: int, until_ns: int) -> list[PeerSample]:
        """One sample per (host, destination) in the range, this host's among them (for Compare)."""

    def labels(self) -> Mapping[str, str]:
        """This node's labels; ``host`` names it in the samples."""


class PeriodSource(Protocol):
    """A source that can tell its transactions apart by period (``NodeSource``, ``MemorySource``): Blame
    then analyses the current regime only (``_change``) and says when the range begins before what is held."""

    def periods(self, since_ns: int, until_ns: int) -> list[tuple[int, list[Transaction]]]:
        """``(period end, transactions)`` of the periods that ended in the range, oldest first."""

    def held_since_ns(self) -> int:
        """The end of the oldest period held; 0 when none is."""


Regime = tuple[list["Transaction"], int, str]
"""The current regime: its transactions, where it begins, and the change that began it."""


def current_regime(periods: Sequence[tuple[int, list[Transaction]]], since_ns: int, threshold: float,
                   *, whole: bool = False,
                   extra: Sequence[Mapping[tuple[str, str], tuple[int, int]]] | None = None) -> Regime:
    """The transactions of the current regime (``_change``) of ``periods``, where it begins (the end of the
    period before it, or ``since_ns``), and one line on the change that began it. ``extra`` are more
    entities' ``(transactions, problems)`` per period (a resolver's answers), followed beside the flows'."""
    per_period = [entity_counts(t) for _, t in periods]
    if extra is not None:
        per_period = [{**counts, **more} for counts, more in zip(per_period, extra, strict=True)]
    found = [] if whole else latest_changes(per_period, threshold)
    start = max((c.onset for c in found), default=0)
    txns = [t for _, ts in periods[start:] for t in ts]
    if not found:
        return txns, since_ns, ""
    # of the entities that changed at the start, say the one that changed most: the worst that rose, else
    # the one that had been worst and fell
    counts = entity_counts(txns)
    for more in (extra or [])[start:]:
        for ent, (n, x) in more.items():
            had = counts.get(ent, (0, 0))
            counts[ent] = (had[0] + n, had[1] + x)
    at_start = [c for c in found if c.onset == start]

    def fraction(c: Change) -> float:
        n, x = counts.get(c.entity, (0, 0))
        return x / n if n else 0.0

    rose = [c for c in at_start if c.direction == UP]
    pick = max(rose, key=fraction) if rose else min(at_start, key=fraction)
    return txns, periods[start - 1][0] if start else since_ns, _change_text(pick, counts)


def _change_text(change: Change, counts: Mapping[tuple[str, str], tuple[int, int]]) -> str:
    kind, name = change.entity
    n, x = counts.get(change.entity, (0, 0))
    words = "rose to" if change.direction == UP else "fell to"
    return f"{_WORDS.get(kind, kind)} {name} {words} {_pct(x / n if n else 0.0)} problems"


def coverage_note(since_ns: int, held_since_ns: int, period_ns: int) -> str:
    """What to say when the range asked begins more than a period before what is held ("" otherwise)."""
    if held_since_ns == 0:
        return f"asked from {_clock(since_ns)} UTC, but this node holds no period yet"
    if since_ns >= held_since_ns - period_ns:
        return ""
    return (f"asked from {_clock(since_ns)} UTC, but this node holds periods from {_clock(held_since_ns)} UTC "
            "only (it holds 1 hour, or since its store began)")


def _clock(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


class TaxonomySource(Protocol):
    """A source that also knows its own processes' attempts (``NodeSource``): Blame adds seed 004's
    taxonomy (retry advice, discovery chatter) when its source is one."""

    def retry_advice(self, since_ns: int, until_ns: int) -> list[RetryAdvice]:
        """Retry behaviour per (process, destination) in the range."""

    def discovery(self, since_ns: int, until_ns: int) -> list[DiscoveryChatter]:
        """Unanswered discovery chatter per (process, protocol) in the range."""


class MemorySource:
    """A ``DiagnosisSource`` over recent periods held in memory, newest last.

    Args:
        labels: this node's labels.
        max_periods: periods kept; the oldest is dropped beyond (counted in ``dropped``).
    """

    def __init__(self, labels: Mapping[str, str], max_periods: int = 1_000) -> None:
        self._labels = dict(labels)
        self._periods: deque[tuple[int, list[Transaction], list[PeerSample]]] = deque()
        self._max = max_periods
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, period_end_ns: int, transactions: Iterable[Transaction] = (),
            samples: Iterable[PeerSample] = ()) -> None:
        """Hold one period's transactions and samples (of any number of hosts)."""
        with self._lock:
            self._periods.append((period_end_ns, list(transactions), list(samples)))
            while len(self._periods) > self._max:
                self._periods.popleft()
                self.dropped += 1

    def _select(self, since_ns: int, until_ns: int) -> list[tuple[int, list[Transaction], list[PeerSample]]]:
        with self._lock:
            return [p for p in self._periods if since_ns <= p[0] <= until_ns]

    def transactions(self, since_ns: int, until_ns: int) -> list[Transaction]:
        """Transactions of the periods that ended in the range."""
        return [t for _, txns, _ in self._select(since_ns, until_ns) for t in txns]

    def samples(self, since_ns: int, until_ns: int) -> list[PeerSample]:
        """The newest sample per (host, destination) of the periods that ended in the range."""
        newest: dict[tuple[str, str], PeerSample] = {}
        for _, _, samples in self._select(since_ns, until_ns):
            for s in samples:
                newest[(s.host, s.destination)] = s
        return list(newest.values())

    def periods(self, since_ns: int, until_ns: int) -> list[tuple[int, list[Transaction]]]:
        """``(period end, transactions)`` of the periods that ended in the range, oldest first."""
        return [(end, list(txns)) for end, txns, _ in sorted(self._select(since_ns, until_ns), key=lambda p: p[0])]

    def held_since_ns(self) -> int:
        """The end of the oldest period held; 0 when none is."""
        with self._lock:
            return min((p[0] for p in self._periods), default=0)

    def labels(self) -> Mapping[str, str]:
        """This node's labels."""
        return dict(self._labels)


def _matches(destination: str, target: str) -> bool:
    """True when ``destination`` (``dst:dport``) is ``target`` (``dst:dport``, or a bare address)."""
    if destination == target:
        return True
    return destination.rpartition(":")[0].strip("[]") == target.strip("[]")


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # pragma: no cover


async def _check_text(context: Context, **fields: str) -> None:
    for name, value in fields.items():
        if len(value) > MAX_TEXT:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"{name}: {len(value):,} characters; at most {MAX_TEXT:,} are allowed")


def suspect_pb(s: Suspect) -> diagnosis_pb2.BlameSuspect:
    """``meshnode.v1.BlameSuspect`` of a ``Suspect``."""
    st = s.stats
    return diagnosis_pb2.BlameSuspect(
        rank=s.rank, kind=_KINDS.get(st.kind, diagnosis_pb2.ENTITY_KIND_UNKNOWN), name=st.name,
        display=st.display, level=st.level, problem_fraction=st.problem_fraction, transactions=st.transactions,
        problems=st.problems, problem_kinds=st.problem_kinds, hosts=st.hosts, sites=st.sites,
        examples=[diagnosis_pb2.FlowTuple(src=src, sport=sport, dst=dst, dport=dport,
                                          proto=_PROTOS.get(proto, flow_pb2.PROTOCOL_UNKNOWN))
                  for src, sport, dst, dport, proto in st.examples],
        shared=s.shared, verdict=s.verdict, problem_destinations=st.problem_destinations,
    )


def blame_pb(report: BlameReport, since_ns: int, until_ns: int) -> diagnosis_pb2.BlameResponse:
    """``meshnode.v1.BlameResponse`` of a ``BlameReport``."""
    return diagnosis_pb2.BlameResponse(
        suspects=[suspect_pb(s) for s in report.suspects], verdict=report.verdict,
        transactions=report.transactions, problems=report.problems, hosts=report.hosts,
        threshold=report.threshold, since_ns=since_ns, until_ns=until_ns,
    )


def retry_advice_pb(a: RetryAdvice) -> diagnosis_pb2.RetryAdvice:
    """``meshnode.v1.RetryAdvice`` of a ``RetryAdvice``."""
    return diagnosis_pb2.RetryAdvice(
        comm=a.comm, pid=a.pid, destination=a.destination, outages=a.outages, attempts=a.attempts,
        attempts_per_outage=a.attempts_per_outage, retry_interval_ms=a.retry_interval_ms,
        outage_p50_ms=a.outage_p50_ms, outage_max_ms=a.outage_max_ms, fixed_interval=a.fixed_interval,
        suggest_backoff=a.suggest_backoff, attempts_with_backoff=a.attempts_with_backoff, suggestion=a.suggestion,
    )


def discovery_pb(d: DiscoveryChatter) -> diagnosis_pb2.DiscoveryChatter:
    """``meshnode.v1.DiscoveryChatter`` of a ``DiscoveryChatter``."""
    return diagnosis_pb2.DiscoveryChatter(comm=d.comm, protocol=d.protocol, flows=d.flows,
                                          destinations=d.destinations)


def compare_pb(comparisons: Sequence[Comparison], host: str, group: str) -> diagnosis_pb2.CompareResponse:
    """``meshnode.v1.CompareResponse`` of ``compare``'s answer."""
    return diagnosis_pb2.CompareResponse(
        host=host, group=group,
        destinations=[
            diagnosis_pb2.DestinationComparison(
                destination=c.destination, verdict=c.verdict, outlier=c.outlier,
                metrics=[diagnosis_pb2.MetricComparison(
                    metric=m.metric, value=m.value, median=m.median, p05=m.p05, p95=m.p95, peers=m.peers,
                    worst_fraction=m.worst_fraction, outlier=m.outlier, summary=m.summary,
                ) for m in c.metrics],
            )
            for c in comparisons
        ],
        verdict=comparisons[0].verdict if comparisons else f"no peers in {group} to compare with",
    )


class DiagnosisServicer(diagnosis_pb2_grpc.DiagnosisServicer):
    """``meshnode.v1.Diagnosis`` over a ``DiagnosisSource``.

    Args:
        source: the transactions, samples and labels to analyse.
        clock: wall-clock nanoseconds (``until_ns`` defaults to it).
        executor: the worker threads the analyses run in (the node's API executor; a new one by default).
    """

    def __init__(self, source: DiagnosisSource, *, clock: Callable[[], int] = time.time_ns,
                 executor: ApiExecutor | None = None) -> None:
        self._source = source
        self._clock = clock
        self._executor = executor or ApiExecutor(2, "meshnode-diagnosis")

    async def _range(self, since_ns: int, until_ns: int, context: Context) -> tuple[int, int]:
        until = until_ns or self._clock()
        since = since_ns or max(0, until - DEFAULT_RANGE_NS)
        if since > until:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"since_ns ({since}) is after until_ns ({until})")
        return since, until

    async def _ask(self, context: Context, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._executor.run(fn, *args)
        except MeshnodeError as exc:
            log.warning("diagnosis source failed: %s", exc)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"diagnosis source: {exc}")

    async def Blame(self, request: diagnosis_pb2.BlameRequest, context: Context) -> diagnosis_pb2.BlameResponse:
        since, until = await self._range(request.since_ns, request.until_ns, context)
        await _check_text(context, target=request.target)
        threshold = request.threshold or PROBLEM_THRESHOLD
        if not 0 < threshold <= 1:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"threshold must be in (0, 1], not {request.threshold}")
        if request.max_suspects > MAX_SUSPECTS_LIMIT:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"max_suspects must be at most {MAX_SUSPECTS_LIMIT}, not {request.max_suspects}")
        config = BlameConfig(threshold=threshold, max_suspects=request.max_suspects or MAX_SUSPECTS)
        regime_since, change, coverage = since, "", ""
        dns_of = getattr(self._source, "dns", None)  # the node's own DNS answers: resolvers
        dns: DnsBatch | None = await self._ask(context, dns_of, since, until) if callable(dns_of) else None
        if hasattr(self._source, "periods") and hasattr(self._source, "held_since_ns"):
            if not request.whole_range:  # a regime may be a period or two: sequential evidence counts
                config = replace(config, evidence=DEFAULT_H, part_evidence=PART_H)
            by_period = cast("PeriodSource", self._source)
            periods = await self._ask(context, by_period.periods, since, until)

            def regime() -> Regime:
                extra = None if dns is None else [resolver_counts(b)
                                                  for b in dns_by_period(dns, [end for end, _ in periods])]
                return current_regime(periods, since, threshold, whole=request.whole_range, extra=extra)

            txns, regime_since, change = await self._executor.run(regime)
            held = await self._ask(context, by_period.held_since_ns)
            if request.since_ns:
                grid = getattr(self._source, "period_ns", None)
                coverage = coverage_note(since, held, grid() if callable(grid) else 0)
        else:
            txns, held = await self._ask(context, self._source.transactions, since, until), 0
        report = await self._executor.run(lambda: blame(txns, config, target=request.target))
        if dns is not None:  # the resolvers over the same regime
            labels = await self._ask(context, self._source.labels)

            def resolvers(got: DnsBatch, start: int) -> BlameReport:
                recent = got.take(got["time_ns"] > start) if start > since else got
                found = resolver_suspects(resolver_health(recent), config, host=labels.get("host", ""),
                                          target=request.target)
                return with_resolvers(report, found, config.max_suspects)

            report = await self._executor.run(resolvers, dns, regime_since)
            if dns.n >= _resolvers.MAX_BLAME_DNS:  # the source gave its most: older answers were not read
                limit = (f"resolvers judged on the newest {_resolvers.MAX_BLAME_DNS:,} DNS transactions of the "
                         "range (the most one blame reads); narrow --since for all of them")
                coverage = f"{coverage}; {limit}" if coverage else limit
        resp = blame_pb(report, since, until)
        resp.regime_since_ns, resp.change, resp.held_since_ns, resp.coverage = regime_since, change, held, coverage
        if hasattr(self._source, "retry_advice") and hasattr(self._source, "discovery"):
            taxonomy = cast("TaxonomySource", self._source)
            advice = await self._ask(context, taxonomy.retry_advice, since, until)
            if request.target:
                advice = [a for a in advice if _matches(a.destination, request.target)]
            resp.retry_advice.extend(retry_advice_pb(a) for a in advice[:MAX_ADVICE])
            chatter = await self._ask(context, taxonomy.discovery, since, until)
            resp.discovery.extend(discovery_pb(d) for d in chatter[:MAX_ADVICE])
        scans_of = getattr(self._source, "scans", None)
        if callable(scans_of):
            scans = await self._ask(context, scans_of, since, until)
            resp.scans.extend(flow_pb2.ScanPattern(src=s.src, ports=s.ports, failures=s.failures)
                              for s in scans[:MAX_ADVICE])
        return resp

    async def Compare(
        self, request: diagnosis_pb2.CompareRequest, context: Context
    ) -> diagnosis_pb2.CompareResponse:
        since, until = await self._range(request.since_ns, request.until_ns, context)
        await _check_text(context, destination=request.destination, **{
            f"group_by[{i}]": k for i, k in enumerate(request.group_by)})
        if len(request.group_by) > MAX_GROUP_BY:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"group_by: {len(request.group_by)} labels; at most {MAX_GROUP_BY} are allowed")
        group_by = tuple(request.group_by) or DEFAULT_GROUP_BY
        if any(not k for k in group_by):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "group_by has an empty label name")
        labels = await self._ask(context, self._source.labels)
        host = labels.get("host", "")
        if not host:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         "this node has no 'host' label, so it cannot find itself among its peers")
        samples = await self._ask(context, self._source.samples, since, until)
        comparisons = await self._executor.run(
            lambda: compare(samples, host=host, labels=labels, destination=request.destination or None,
                            group_by=group_by))
        return compare_pb(comparisons, host, group_name(labels, group_by))


def add_to_server(servicer: DiagnosisServicer, server: grpc.aio.Server) -> str:
    """Register ``servicer`` on ``server``; returns the service name to list in reflection."""
    add = cast(Callable[[Any, Any], None], diagnosis_pb2_grpc.add_DiagnosisServicer_to_server)
    add(servicer, server)
    return DIAGNOSIS_SERVICE
