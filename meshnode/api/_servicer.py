"""``meshnode.v1.Observer``: flows, summaries, window rollups, health, events and status of this node.

Queries run in a worker thread on their own read-only SQLite connection, so a long query never stalls the
node loop or other RPCs. Deadlines are honoured: the store query is given the call's deadline and stops
with DEADLINE_EXCEEDED. Malformed requests fail with INVALID_ARGUMENT and a message naming the field;
requests for more than the server will hold fail with RESOURCE_EXHAUSTED.

``Flows`` orders records by (end_ns, table, id) ascending, FINAL records before INTERIM ones at the same
end_ns. Pages are continued by an opaque ``page_token`` bound to the request. With ``follow``, history is
read in one snapshot (up to the last closed period), then records of periods closed after it are streamed,
so nothing is sent twice; ``number`` bounds the history part only (0: the default 1,000), except that
``follow`` with neither ``number`` nor ``since_ns`` means "no history, only new records".
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc

from meshnode import health as health_mod
from meshnode._model import FAILED_OUTCOMES, FlowRecord
from meshnode.api._convert import (
    completeness_pb,
    event_pb,
    health_row_pb,
    period_pb,
    retry_pb,
    rollups_pb,
    scan_pb,
)
from meshnode.api._filters import FilterError, Selector
from meshnode.api._flowstream import HistoryReader, in_thread
from meshnode.api._live import EventRing, FlowFeed
from meshnode.api._status import StatusProvider
from meshnode.store import TABLE_FINAL, TABLE_INTERIM, FlowQuery, PeriodRow, Store, StoredFlow, StoreTimeout
from meshnode.summary import PeriodSummary, format_destination, format_process, merge_window
from meshnode.v1 import flow_pb2, observer_pb2, observer_pb2_grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

_FIDELITY_NAMES: Final = frozenset(flow_pb2.Fidelity.keys())
DEFAULT_FLOWS: Final = 1_000
MAX_FLOWS: Final = 1_000_000
MAX_BATCH = 5_000
"""Largest batch per response: bounds message size (a Flow is ~200 B on the wire)."""
DEFAULT_SUMMARIES: Final = 100
MAX_SUMMARIES: Final = 100_000
MAX_EVENTS: Final = 1_000_000
DEFAULT_ROLLUP_ROWS: Final = 100
MAX_ROLLUP_ROWS: Final = 10_000
MAX_ROLLUP_PERIODS: Final = 10_000
"""Periods in one Rollups window: each is a stored summary, decoded and merged within the call."""
ROLLUPS_DEFAULT_RANGE_NS: Final = 15 * 60 * 1_000_000_000
MAX_HEALTH_ROWS: Final = 5_000_000
MAX_ADDRESS_CHANGES: Final = 1_000
HEALTH_TOP: Final = 1_000
"""Health rows per process and per destination: the busiest this many."""
HEALTH_DEFAULT_RANGE_NS: Final = 15 * 60 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[StoredFlow]
    more: bool
    snapshot: int


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # pragma: no cover


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise StoreTimeout("the query ran past its deadline")


def _fingerprint(request: observer_pb2.FlowsRequest) -> str:
    bare = observer_pb2.FlowsRequest()
    bare.CopyFrom(request)
    bare.page_token = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_page_token(request: observer_pb2.FlowsRequest, key: tuple[int, int, int]) -> str:
    """An opaque token continuing after ``key``, valid only for the same request."""
    raw = json.dumps({"k": list(key), "h": _fingerprint(request)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(request: observer_pb2.FlowsRequest) -> tuple[int, int, int] | None:
    """The key a token continues after; raises ``FilterError`` for a token of another request."""
    token = request.page_token
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key = tuple(int(x) for x in data["k"])
        fp = str(data["h"])
    except (ValueError, KeyError, TypeError):
        raise FilterError("page_token", "not a token this server issued") from None
    # the fingerprint is no secret: a key is checked as the store keeps keys (64-bit end time and id, a table)
    if len(key) != 3 or key[1] not in (TABLE_FINAL, TABLE_INTERIM) or not all(-(1 << 63) <= k < (1 << 63) for k in key):
        raise FilterError("page_token", "not a token this server issued")
    if fp != _fingerprint(request):
        raise FilterError("page_token", "the token belongs to a request with other filters or range")
    return (key[0], key[1], key[2])


def _summary(row: PeriodRow) -> PeriodSummary:
    """A stored period's summary; an incomplete period (no summary stored) has empty rollups."""
    if row.summary:
        s = PeriodSummary.from_json(row.summary)
    else:
        s = PeriodSummary(node_id="", seq=row.seq, period_start_ns=row.start_ns, period_end_ns=row.end_ns)
    s.incomplete = row.state == "incomplete"
    return s


class ObserverServicer(observer_pb2_grpc.ObserverServicer):
    """The node's Observer service over its store and live feeds."""

    def __init__(
        self,
        store: Store,
        *,
        feed: FlowFeed | None = None,
        events: EventRing | None = None,
        status: StatusProvider | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.feed = feed or FlowFeed()
        self.events = events or EventRing()
        self.status_provider = status
        self.clock = clock

    # -- Flows -------------------------------------------------------------------------------------------

    def _history(self, query: FlowQuery, sel: Selector, limit: int, deadline: float | None) -> _Page:
        """Up to ``limit`` stored records as ``FlowRecord``s, re-checked by the Python filters.

        The Flows RPC no longer runs this (``HistoryReader`` sends rows straight as messages); it stays as
        the reference the fast path is tested against, and for callers that want records.
        """
        items: list[StoredFlow] = []
        with self.store.reader(deadline) as conn:
            snap = self.store.last_closed_period(conn)
            q = sel.query(dataclasses.replace(query, max_period=snap))
            if limit == 0:
                return _Page([], False, snap)
            for sf in self.store.query_flows(q, conn, deadline=deadline):
                if sel.matches(sf.record):
                    if len(items) == limit:
                        return _Page(items, True, snap)
                    items.append(sf)
        return _Page(items, False, snap)

    async def Flows(
        self, request: observer_pb2.FlowsRequest, context: Context
    ) -> AsyncIterator[observer_pb2.FlowsResponse]:
        try:
            sel = Selector.from_request(request.whitelist, request.blacklist)
            after = decode_page_token(request)
        except FilterError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.until_ns and request.until_ns < request.since_ns:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"until_ns: {request.until_ns} is before since_ns {request.since_ns}")
        if request.follow and request.until_ns:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "until_ns: must be unset with follow")
        if request.number > MAX_FLOWS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_FLOWS}")
        limit = request.number or (0 if request.follow and not request.since_ns else DEFAULT_FLOWS)
        query = FlowQuery(request.since_ns, request.until_ns, request.include_interim, None, after)
        sub = self.feed.subscribe() if request.follow else None
        history = HistoryReader(
            self.store, sel.query(query), limit, min(request.batch_size, MAX_BATCH), _deadline(context),
            lambda key: "" if request.follow else encode_page_token(request, key),
        )
        try:
            try:
                async for resp in in_thread(history.responses()):
                    yield resp
            except StoreTimeout:
                await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the query ran past the deadline")
            if sub is None:
                return
            async for seq, batch in sub:
                if sub.lagged:
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"follow: the client fell behind and {sub.lagged} records were dropped; "
                                 "reconnect with since_ns to resume")
                if seq <= history.snapshot:
                    continue
                fresh = [sf.record for sf in batch
                         if (sf.record.kind != "interim" or request.include_interim)
                         and sf.record.end_ns >= request.since_ns and sel.matches(sf.record)]
                if request.batch_size:
                    size = min(request.batch_size, MAX_BATCH)
                    for start in range(0, len(fresh), size):
                        yield observer_pb2.FlowsResponse(flows=[r.to_proto() for r in fresh[start:start + size]])
                else:
                    for rec in fresh:
                        yield observer_pb2.FlowsResponse(flow=rec.to_proto())
        finally:
            if sub is not None:
                sub.close()

    # -- Summaries ---------------------------------------------------------------------------------------

    async def Summaries(
        self, request: observer_pb2.SummariesRequest, context: Context
    ) -> observer_pb2.SummariesResponse:
        if request.until_ns and request.until_ns < request.since_ns:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"until_ns: {request.until_ns} is before since_ns {request.since_ns}")
        if request.number > MAX_SUMMARIES:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_SUMMARIES}")
        rows = await asyncio.to_thread(
            self.store.periods, request.since_ns, request.until_ns, request.number or DEFAULT_SUMMARIES
        )
        return observer_pb2.SummariesResponse(summaries=[period_pb(_summary(row)) for row in rows])

    # -- Rollups -----------------------------------------------------------------------------------------

    def _rollups(self, since: int, until: int, limit: int) -> observer_pb2.RollupsResponse | None:
        """The window's merged rollups; None when it holds more than ``MAX_ROLLUP_PERIODS`` periods."""
        rows = self.store.periods(since, until, MAX_ROLLUP_PERIODS + 1)
        # A period cut short by a crash has no end: it belongs to the window its start is in.
        rows = [r for r in rows if r.end_ns or r.start_ns >= since]
        if len(rows) > MAX_ROLLUP_PERIODS:
            return None
        return rollups_pb(merge_window([_summary(row) for row in rows], limit), since, until)

    async def Rollups(
        self, request: observer_pb2.RollupsRequest, context: Context
    ) -> observer_pb2.RollupsResponse:
        until = request.until_ns or self.clock()
        since = request.since_ns or max(0, until - ROLLUPS_DEFAULT_RANGE_NS)
        if until < since:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"until_ns: {until} is before since_ns {since}")
        if request.number > MAX_ROLLUP_ROWS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_ROLLUP_ROWS}")
        resp = await asyncio.to_thread(self._rollups, since, until, request.number or DEFAULT_ROLLUP_ROWS)
        if resp is None:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"since_ns: the window holds more than {MAX_ROLLUP_PERIODS} export periods; narrow it")
        return resp

    # -- Health ------------------------------------------------------------------------------------------

    def _health(
        self, since: int, until: int, sel: Selector, deadline: float | None
    ) -> observer_pb2.HealthResponse:
        """Fractions from SQL aggregates (no record decoded); patterns from candidate records only.

        Only failed flows that can be part of a pattern are decoded: retries from (process, destination)
        groups with at least MIN_RETRY_FAILURES failures, scans from sources failing on at least
        MIN_SCAN_PORTS ports, address-change failures from the 60 s after each change. The pure health
        functions then decide exactly as they would over every record.
        """
        base = sel.query(FlowQuery(since, until))
        failed = {"outcome": sorted(FAILED_OUTCOMES)}
        retry_q = dataclasses.replace(
            base, equals={**failed, "direction": ["outbound"]},
            min_group=(("comm", "pid", "dst", "dport"), "", health_mod.MIN_RETRY_FAILURES),
        )
        scan_q = dataclasses.replace(
            base, equals={**failed, "direction": ["inbound"]},
            min_group=(("dst",), "sport", health_mod.MIN_SCAN_PORTS),
        )
        changes = self.store.address_changes(max(0, since - health_mod.ADDRESS_CHANGE_WINDOW_NS), until)
        rows = 0

        def take(q: FlowQuery, conn: sqlite3.Connection) -> list[FlowRecord]:
            nonlocal rows
            out = []
            for sf in self.store.query_flows(q, conn, deadline=deadline):
                out.append(sf.record)
                rows += 1
                if rows > MAX_HEALTH_ROWS:
                    raise OverflowError
            return out

        with self.store.reader(deadline) as conn:
            by_proc = self.store.count_outcomes(base, ("comm", "pid"), conn, top=HEALTH_TOP)
            by_dst = self.store.count_outcomes(base, ("dst", "dport"), conn, top=HEALTH_TOP)
            by_period = self.store.count_outcomes(base, ("period",), conn)
            _check_deadline(deadline)
            retry_candidates = take(retry_q, conn)
            scan_candidates = take(scan_q, conn)
            after_change: dict[tuple[int, int], FlowRecord] = {}
            for t in changes[-MAX_ADDRESS_CHANGES:]:
                window = dataclasses.replace(
                    base, since_ns=max(t, since), until_ns=min(t + health_mod.ADDRESS_CHANGE_WINDOW_NS, until),
                    equals=failed,
                )
                if window.since_ns <= window.until_ns:
                    for rec in take(window, conn):
                        after_change[(rec.flow_id, rec.end_ns)] = rec
        host = health_mod.HealthRow("host", "")
        for _, counts in by_period:  # every record belongs to one period: the host is their sum
            for outcome, n in counts.items():
                host.add_count(outcome, n)
        periods = health_mod.health_from_counts(
            "period", ((str(k[0]), o, n) for k, counts in by_period for o, n in counts.items())
        )
        periods.sort(key=lambda r: int(r.key))
        return observer_pb2.HealthResponse(
            host=health_row_pb(host),
            by_process=[health_row_pb(r) for r in health_mod.health_from_counts(
                "process", ((format_process(k[0], k[1]), o, n) for k, c in by_proc for o, n in c.items()))],
            by_destination=[health_row_pb(r) for r in health_mod.health_from_counts(
                "destination",
                ((format_destination(k[0], k[1]), o, n) for k, c in by_dst for o, n in c.items()))],
            retries=[retry_pb(p) for p in health_mod.retry_patterns(retry_candidates)],
            scans=[scan_pb(s) for s in health_mod.scan_patterns(scan_candidates)],
            failures_after_address_change=health_mod.failures_after_address_change(
                list(after_change.values()), changes),
            since_ns=since, until_ns=until,
            by_period=[health_row_pb(r) for r in periods],
            address_changes=sum(1 for t in changes if t >= since),
        )

    async def Health(
        self, request: observer_pb2.HealthRequest, context: Context
    ) -> observer_pb2.HealthResponse:
        now = self.clock()
        until = request.until_ns or now
        since = request.since_ns or max(0, until - HEALTH_DEFAULT_RANGE_NS)
        if until < since:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"until_ns: {until} is before since_ns {since}")
        try:
            sel = Selector.from_request([request.filter] if request.HasField("filter") else [], [])
        except FilterError as exc:
            msg = str(exc).replace("whitelist[0]", "filter")
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, msg)
        try:
            return await asyncio.to_thread(self._health, since, until, sel, _deadline(context))
        except StoreTimeout:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the health query ran past the deadline")
        except OverflowError:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"since_ns: the range holds more than {MAX_HEALTH_ROWS} flows; narrow it or filter")

    # -- Events ------------------------------------------------------------------------------------------

    async def Events(
        self, request: observer_pb2.EventsRequest, context: Context
    ) -> AsyncIterator[observer_pb2.EventsResponse]:
        try:
            sel = Selector.from_request(request.whitelist, request.blacklist)
        except FilterError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.number > MAX_EVENTS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_EVENTS}")
        sub = self.events.subscribe() if request.follow else None
        try:
            if request.number:
                past = [e for e in self.events.recent(request.since_ns) if sel.matches_event(e)]
                for ev in past[-int(request.number):]:
                    yield observer_pb2.EventsResponse(event=event_pb(ev))
            if sub is None:
                return
            async for ev in sub:
                if sub.lagged:
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"follow: the client fell behind and {sub.lagged} events were dropped")
                if ev.time_ns >= request.since_ns and sel.matches_event(ev):
                    yield observer_pb2.EventsResponse(event=event_pb(ev))
        finally:
            if sub is not None:
                sub.close()

    # -- Status ------------------------------------------------------------------------------------------

    async def Status(
        self, request: observer_pb2.StatusRequest, context: Context
    ) -> observer_pb2.StatusResponse:
        if self.status_provider is None:
            stats = await asyncio.to_thread(self.store.stats)
            return observer_pb2.StatusResponse(
                store_bytes=stats.bytes, store_rows=stats.rows, data_dir=str(self.store.path.parent),
                completeness=completeness_pb({"store_evictions": stats.evictions,
                                              "incomplete_periods": stats.incomplete_periods}),
            )
        st = await asyncio.to_thread(self.status_provider)
        fidelity = st.fidelity.upper()
        if fidelity not in _FIDELITY_NAMES:
            fidelity = "FIDELITY_UNKNOWN"
        return observer_pb2.StatusResponse(
            node_id=st.node_id, version=st.version, uptime_s=st.uptime_s, sensor_mode=st.sensor_mode,
            sensor_reason=st.sensor_reason, fidelity=fidelity, scope=st.scope,
            export_period_s=st.export_period_s, completeness=completeness_pb(st.completeness),
            store_bytes=st.store_bytes, store_rows=st.store_rows, data_dir=st.data_dir, labels=st.labels,
            listen=st.listen, periods=st.periods, insecure=st.insecure, active_flows=st.active_flows,
            host=st.host,
        )
