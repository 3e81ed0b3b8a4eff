"""``meshnode.v1.Observer``: flows, summaries, window rollups, health, events, status and DNS transactions of
this node.

Queries run in the API's worker threads (``ApiExecutor``, apart from the loop's default executor that runs
sensor polls) on their own read-only SQLite connection, so a long query never stalls the node loop or other
RPCs; ``Status`` has a thread of its own, so that no queue of queries delays it. Deadlines are honoured:
the store query is given the call's deadline (or the server's default when the client set none) and stops
with DEADLINE_EXCEEDED. Malformed requests fail with INVALID_ARGUMENT and a message naming the field;
requests for more than the server will hold fail with RESOURCE_EXHAUSTED; a store that cannot be read
fails the call with UNAVAILABLE.

``Flows`` orders records by (end_ns, table, id) ascending, FINAL records before INTERIM ones at the same
end_ns. Pages are continued by an opaque ``page_token`` bound to the request. With ``follow``, history is
read in one snapshot (up to the last closed period), then records of periods closed after it are streamed,
so nothing is sent twice; ``number`` bounds the history part only (0: the default 1,000), except that
``follow`` with neither ``number`` nor ``since_ns`` means "no history, only new records".

A Flows stream lasts at most ``ApiLimits.stream_age_s`` and holds its snapshot at most
``ApiLimits.snapshot_age_s`` (an idle client would otherwise pin a read transaction, its files and the WAL
behind it): it then ends with ABORTED and a page token in the ``meshnode-page-token`` trailing metadata;
the same request with that token continues after the last record sent (the records still due of ``number``,
or, following, everything since and then the live records). A follow stream that has seen no record at all
resumes as it began.
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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import grpc

from meshnode import health as health_mod
from meshnode._exceptions import StoreError
from meshnode._model import FAILED_OUTCOMES, FlowRecord
from meshnode.api._convert import (
    completeness_pb,
    dns_pbs,
    event_pb,
    health_row_pb,
    path_mtu_pb,
    period_pb,
    resolver_pb,
    retry_pb,
    rollups_pb,
    scan_pb,
)
from meshnode.api._executor import ApiExecutor
from meshnode.api._filters import FilterError, Selector, dns_query
from meshnode.api._flowstream import HistoryReader, ReadAhead, SnapshotExpired
from meshnode.api._limits import MAX_TIME_NS, ApiLimits
from meshnode.api._live import EventRing, FlowFeed
from meshnode.api._pacer import StreamPacer
from meshnode.api._status import StatusProvider
from meshnode.sensor import EventRecord
from meshnode.store import (
    DEFAULT_DNS_LIMIT,
    TABLE_FINAL,
    TABLE_INTERIM,
    DnsQuery,
    FlowQuery,
    PeriodRow,
    RowFilter,
    Store,
    StoredEvent,
    StoredFlow,
    StoredFlows,
    StoreTimeout,
)
from meshnode.summary import PeriodSummary, format_destination, format_process, merge_window
from meshnode.v1 import flow_pb2, observer_pb2, observer_pb2_grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)
T = TypeVar("T")

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
MAX_HEALTH_DNS: Final = 1_000_000
"""DNS transactions one Health call rolls up per resolver (~130 B each in memory)."""
MAX_DNS: Final = 10_000
"""DNS transactions one DnsTransactions answer holds at most (~100 B each on the wire)."""
DNS_DEFAULT_RANGE_NS: Final = 15 * 60 * 1_000_000_000
RESUME_METADATA: Final = "meshnode-page-token"
"""Trailing metadata of a Flows stream that ended early (ABORTED): the page token that resumes it."""

Key = tuple[int, int, int]


class _RangeTooLarge(OverflowError):
    """A range holds more than a call may read; the message says what and how to narrow it."""


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[StoredFlow]
    more: bool
    snapshot: int


async def _abort(context: Context, code: grpc.StatusCode, message: str,
                 trailing: tuple[tuple[str, str], ...] = ()) -> NoReturn:
    await context.abort(code, message, trailing)
    raise AssertionError("unreachable")  # pragma: no cover


def _client_deadline(context: Context) -> float | None:
    """The client's deadline as a ``time.monotonic()`` value; None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _check_times(**times: int) -> None:
    """Refuse times the store cannot hold (it keeps signed 64-bit nanoseconds)."""
    for name, value in times.items():
        if value > MAX_TIME_NS:
            raise FilterError(name, f"{value} is past the largest time the node keeps ({MAX_TIME_NS})")


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise StoreTimeout("the query ran past its deadline")


def _fingerprint(request: observer_pb2.FlowsRequest) -> str:
    bare = observer_pb2.FlowsRequest()
    bare.CopyFrom(request)
    bare.page_token = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_page_token(request: observer_pb2.FlowsRequest, key: Key | None, left: int | None = None) -> str:
    """An opaque token continuing after ``key``, valid only for the same request; ``left`` (a resume token)
    is the number of history records still due, instead of the request's ``number``."""
    data: dict[str, Any] = {"k": None if key is None else list(key), "h": _fingerprint(request)}
    if left is not None:
        data["n"] = left
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(request: observer_pb2.FlowsRequest) -> tuple[Key | None, int | None]:
    """The key a token continues after and the records it leaves due (None: the request's own number)."""
    token = request.page_token
    if not token:
        return None, None
    bad = FilterError("page_token", "not a token this server issued")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw_key, fp, raw_left = data["k"], str(data["h"]), data.get("n")
        key = None if raw_key is None else tuple(int(x) for x in raw_key)
        left = None if raw_left is None else int(raw_left)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise bad from None
    # the fingerprint is no secret: a key is checked as the store keeps keys (64-bit end time and id, a table)
    if key is not None and (len(key) != 3 or key[1] not in (TABLE_FINAL, TABLE_INTERIM)
                            or not all(-(1 << 63) <= k < (1 << 63) for k in key)):
        raise bad
    if (key is None and left is None) or (left is not None and not 0 <= left <= MAX_FLOWS):
        raise bad
    if fp != _fingerprint(request):
        raise FilterError("page_token", "the token belongs to a request with other filters or range")
    return (None if key is None else (key[0], key[1], key[2])), left


def decode_page_token(request: observer_pb2.FlowsRequest) -> Key | None:
    """The key a token continues after; raises ``FilterError`` for a token of another request."""
    return _decode_token(request)[0]


def _live_responses(
    batch: Sequence[StoredFlow], sel: Selector, request: observer_pb2.FlowsRequest
) -> tuple[list[observer_pb2.FlowsResponse], Key | None]:
    """A closed period's records for a follow stream, as responses, and the period's last key (a resume
    point: every record up to it was considered). Runs in a worker: the records are decoded and matched
    here, not on the event loop."""
    if not batch:
        return [], None
    if isinstance(batch, StoredFlows):  # the node's periods: the filters judged on the period's columns
        q = sel.query(FlowQuery(since_ns=request.since_ns, include_interim=request.include_interim))
        fresh = [sf.record for sf in batch.matching(q)]
    else:
        fresh = [sf.record for sf in batch
                 if (sf.record.kind != "interim" or request.include_interim)
                 and sf.record.end_ns >= request.since_ns and sel.matches(sf.record)]
    last = batch[len(batch) - 1].key
    if not request.batch_size:
        return [observer_pb2.FlowsResponse(flow=r.to_proto()) for r in fresh], last
    size = min(request.batch_size, MAX_BATCH)
    return [observer_pb2.FlowsResponse(flows=[r.to_proto() for r in fresh[start:start + size]])
            for start in range(0, len(fresh), size)], last


def _records_in(resp: observer_pb2.FlowsResponse) -> int:
    return len(resp.flows) or int(resp.HasField("flow"))


def _summary(row: PeriodRow) -> PeriodSummary:
    """A stored period's summary; an incomplete period (no summary stored) has empty rollups."""
    if row.summary:
        s = PeriodSummary.from_json(row.summary)
    else:
        s = PeriodSummary(node_id="", seq=row.seq, period_start_ns=row.start_ns, period_end_ns=row.end_ns)
    s.incomplete = row.state == "incomplete"
    return s


def _event(s: StoredEvent | EventRecord) -> EventRecord:
    """A stored event as the sensor's record (the one shape filters and ``event_pb`` take)."""
    if isinstance(s, EventRecord):
        return s
    return EventRecord(s.type, s.time_ns, s.flow, s.value, s.detail)


def events_coverage(since_ns: int, held_since_ns: int) -> str:
    """What to say when events are asked from before what the node holds ("" otherwise)."""
    if not since_ns:
        return ""
    if held_since_ns == 0:
        return f"asked from {_utc(since_ns)} UTC, but this node holds no period yet"
    if since_ns >= held_since_ns:
        return ""
    return (f"asked from {_utc(since_ns)} UTC, but this node holds events from {_utc(held_since_ns)} UTC only "
            "(since its store began, or as far as its retention keeps them)")


def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


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
        limits: ApiLimits | None = None,
        executor: ApiExecutor | None = None,
        status_executor: ApiExecutor | None = None,
    ) -> None:
        self.store = store
        self.feed = feed or FlowFeed()
        self.events = events or EventRing()
        self.status_provider = status
        self.clock = clock
        self.limits = limits or ApiLimits()
        self.executor = executor or ApiExecutor(self.limits.workers)
        """Queries and stream reads."""
        self.status_executor = status_executor or ApiExecutor(1, "meshnode-status")
        """``Status`` alone."""
        self._streams: set[Callable[[], None]] = set()
        """How to end each open Flows stream now (its ``expire``): ``close`` ends them all."""
        self.pacer = StreamPacer(self.limits.stream_responses_per_s, self.limits.stream_burst)
        """Stream responses a second, all streams together: the loop keeps room for Status and the mesh."""
        self.sending = 0
        """Flows and Events streams open now."""

    def close(self) -> None:
        """At shutdown, after the server stopped: end every stream and every store read still running, so
        that no snapshot is held when the store closes (its checkpoint would wait for them)."""
        self.store.expire_readers()  # first: a read in progress stops at its next check and lets go of its stream
        for expire in list(self._streams):
            expire()

    async def _paced(self) -> None:
        """Wait for the next stream response's turn (``StreamPacer``) while several streams are open: at once
        unless they together send faster than the limit. A lone stream is not paced: it has one response in
        flight at a time, so calls queued behind it wait for one send at most (and a client reading one record
        a response, as grpcurl does, gets its answer at full speed)."""
        if self.sending > 1 and (wait := self.pacer.delay()):
            await asyncio.sleep(wait)

    def _deadline(self, context: Context) -> float:
        """The call's deadline (``time.monotonic()``), or the server's default when the client set none."""
        client = _client_deadline(context)
        return time.monotonic() + self.limits.default_deadline_s if client is None else client

    async def _work(self, context: Context, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; the store's errors become the call's status."""
        try:
            return await self.executor.run(fn, *args)
        except StoreTimeout:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the query ran past the deadline")
        except StoreError as exc:
            log.warning("API query failed: %s", exc)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

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
            after, left = _decode_token(request)
            _check_times(since_ns=request.since_ns, until_ns=request.until_ns)
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
        if left is not None:
            limit = left
        else:
            limit = request.number or (0 if request.follow and not request.since_ns else DEFAULT_FLOWS)
        query = FlowQuery(request.since_ns, request.until_ns, request.include_interim, None, after)
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.limits.stream_age_s
        expired = False
        sub = self.feed.subscribe() if request.follow else None

        client_deadline = _client_deadline(context)
        snapshot_ends = time.monotonic() + min(self.limits.snapshot_age_s, self.limits.stream_age_s)
        history = HistoryReader(
            self.store, sel.query(query), limit, min(request.batch_size, MAX_BATCH),
            snapshot_ends if client_deadline is None else min(client_deadline, snapshot_ends),
            lambda key: "" if request.follow else encode_page_token(request, key),
        )
        # a read is a round trip to a worker: batches four at a time, single records 256 (a few kB each way)
        reader = ReadAhead(history.keyed(), self.executor, ahead=4 if request.batch_size else 256,
                           max_age_s=snapshot_ends - time.monotonic())

        def expire() -> None:  # even while the client does not read: give back what the stream holds
            nonlocal expired
            expired = True
            reader.expire()
            if sub is not None:
                sub.close()

        timer = loop.call_later(self.limits.stream_age_s, expire)
        self._streams.add(expire)
        self.sending += 1
        sent = after  # the key after which a resumed stream goes on

        async def resume(why: str, due: int) -> NoReturn:
            token = encode_page_token(request, sent, due)
            await _abort(context, grpc.StatusCode.ABORTED,
                         f"{why}; the same request with the page token in the {RESUME_METADATA} trailing "
                         "metadata continues after the last record sent", ((RESUME_METADATA, token),))

        try:
            try:
                async for resp, key in reader:
                    await self._paced()
                    yield resp
                    sent = key
                    limit -= _records_in(resp)
            except (SnapshotExpired, StoreTimeout) as exc:
                if isinstance(exc, StoreTimeout) and client_deadline is not None \
                        and time.monotonic() > client_deadline:
                    await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the query ran past the deadline")
                await resume(f"the stream held its snapshot for the maximum of {self.limits.snapshot_age_s:g} s",
                             limit)
            except StoreError as exc:
                await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
            if sub is None:
                return
            while True:
                if not expired:
                    try:
                        async with asyncio.timeout_at(ends):
                            seq, batch = await sub.queue.get()
                    except TimeoutError:
                        expired = True
                if expired:
                    await resume(f"the stream reached its maximum age of {self.limits.stream_age_s:g} s",
                                 MAX_FLOWS if sent is not None else limit)
                if sub.lagged:
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"follow: the client fell behind and {sub.lagged} records were dropped; "
                                 "reconnect with since_ns to resume")
                if seq <= history.snapshot:
                    continue
                responses, last = await self.executor.run(_live_responses, batch, sel, request)
                for resp in responses:
                    await self._paced()
                    yield resp
                sent = last or sent
        finally:
            timer.cancel()
            self._streams.discard(expire)
            self.sending -= 1
            if sub is not None:
                sub.close()

    # -- Summaries ---------------------------------------------------------------------------------------

    async def Summaries(
        self, request: observer_pb2.SummariesRequest, context: Context
    ) -> observer_pb2.SummariesResponse:
        await self._check_times(context, since_ns=request.since_ns, until_ns=request.until_ns)
        if request.until_ns and request.until_ns < request.since_ns:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"until_ns: {request.until_ns} is before since_ns {request.since_ns}")
        if request.number > MAX_SUMMARIES:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_SUMMARIES}")

        def summaries() -> observer_pb2.SummariesResponse:
            rows = self.store.periods(request.since_ns, request.until_ns, request.number or DEFAULT_SUMMARIES)
            return observer_pb2.SummariesResponse(summaries=[period_pb(_summary(row)) for row in rows])

        return await self._work(context, summaries)

    async def _check_times(self, context: Context, **times: int) -> None:
        try:
            _check_times(**times)
        except FilterError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _range(self, context: Context, since_ns: int, until_ns: int, default_ns: int) -> tuple[int, int]:
        """A request's ``[since, until]``: checked, until now and since ``default_ns`` before it when unset."""
        await self._check_times(context, since_ns=since_ns, until_ns=until_ns)
        until = until_ns or self.clock()
        since = since_ns or max(0, until - default_ns)
        if until < since:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"until_ns: {until} is before since_ns {since}")
        return since, until

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
        since, until = await self._range(context, request.since_ns, request.until_ns, ROLLUPS_DEFAULT_RANGE_NS)
        if request.number > MAX_ROLLUP_ROWS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_ROLLUP_ROWS}")
        resp = await self._work(context, self._rollups, since, until, request.number or DEFAULT_ROLLUP_ROWS)
        if resp is None:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"since_ns: the window holds more than {MAX_ROLLUP_PERIODS} export periods; narrow it")
        return resp

    # -- Health ------------------------------------------------------------------------------------------

    def _health(
        self, since: int, until: int, sel: Selector, deadline: float | None
    ) -> observer_pb2.HealthResponse:
        """Fractions from the store's outcome counts (no record decoded); retry and scan patterns from the
        columns of the failed flows (no record decoded either); address-change failures from the records of
        the 60 s after each change. The pure health functions decide exactly as they would over records.
        """
        base = sel.query(FlowQuery(since, until))
        failed = {"outcome": sorted(FAILED_OUTCOMES)}
        # retry and scan patterns are computed on the columns of every failed flow (no record made)
        failed_q = dataclasses.replace(base, equals=failed)
        # inbound attempts to closed ports come aggregated per source (failed flows, so among the columns above);
        # fragmentation-needed errors are on flows of any outcome: their columns too (both come from the
        # chunks' health rows where the store kept them)
        mtu_q = dataclasses.replace(base, deny=(*base.deny, RowFilter(equals={"icmp_frag_needed": [0]})))
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
            dns, dns_rows = self.store.query_dns(DnsQuery(since, until), conn, limit=MAX_HEALTH_DNS,
                                                 deadline=deadline)
            if dns_rows > MAX_HEALTH_DNS:
                raise _RangeTooLarge(f"since_ns: the range holds more than {MAX_HEALTH_DNS:,} DNS transactions; "
                                     "narrow it")
            by_proc, by_dst, by_period = self.store.count_outcomes_many(
                base, (("comm", "pid"), ("dst", "dport"), ("period",)), conn, tops=(HEALTH_TOP, HEALTH_TOP, 0))
            _check_deadline(deadline)
            failures = self.store.query_columns(
                failed_q, sorted({*health_mod.RETRY_COLUMNS, *health_mod.SCAN_COLUMNS}), conn,
                max_rows=MAX_HEALTH_ROWS)
            _check_deadline(deadline)
            mtu_flows = self.store.query_columns(mtu_q, health_mod.MTU_COLUMNS, conn, max_rows=MAX_HEALTH_ROWS)
            rows = len(mtu_flows["dst"])
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
        scans = health_mod.scan_patterns(failures)
        scanned = health_mod.scan_flow_outcomes(failures, scans)
        for outcome, n in scanned.items():  # seed 004 leaves scans out of the host's fraction
            host.remove_count(outcome, n)
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
            retries=[retry_pb(p) for p in health_mod.retry_patterns(failures)],
            scans=[scan_pb(s) for s in scans],
            scan_flows=sum(scanned.values()),
            path_mtu=[path_mtu_pb(p) for p in health_mod.path_mtu_problems(mtu_flows)],
            failures_after_address_change=health_mod.failures_after_address_change(
                list(after_change.values()), changes),
            since_ns=since, until_ns=until,
            by_period=[health_row_pb(r) for r in periods],
            address_changes=sum(1 for t in changes if t >= since),
            resolvers=[resolver_pb(r) for r in health_mod.resolver_health(dns)],
        )

    async def Health(
        self, request: observer_pb2.HealthRequest, context: Context
    ) -> observer_pb2.HealthResponse:
        await self._check_times(context, since_ns=request.since_ns, until_ns=request.until_ns)
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
            return await self._work(context, self._health, since, until, sel, self._deadline(context))
        except OverflowError as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc) if isinstance(exc, _RangeTooLarge)
                         else f"since_ns: the range holds more than {MAX_HEALTH_ROWS} flows; narrow it or filter")

    # -- DnsTransactions ---------------------------------------------------------------------------------

    async def DnsTransactions(
        self, request: observer_pb2.DnsTransactionsRequest, context: Context
    ) -> observer_pb2.DnsTransactionsResponse:
        since, until = await self._range(context, request.since_ns, request.until_ns, DNS_DEFAULT_RANGE_NS)
        if request.limit > MAX_DNS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"limit: {request.limit} is over the server maximum of {MAX_DNS}")
        try:
            query = dns_query(request, since, until)
        except FilterError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        deadline = self._deadline(context)

        def read() -> observer_pb2.DnsTransactionsResponse:
            with self.store.reader(deadline) as conn:
                found, matched = self.store.query_dns(query, conn, limit=request.limit or DEFAULT_DNS_LIMIT,
                                                      deadline=deadline)
            return observer_pb2.DnsTransactionsResponse(transactions=dns_pbs(found), matched=matched,
                                                        since_ns=since, until_ns=until)

        return await self._work(context, read)

    # -- Events ------------------------------------------------------------------------------------------

    async def Events(
        self, request: observer_pb2.EventsRequest, context: Context
    ) -> AsyncIterator[observer_pb2.EventsResponse]:
        try:
            sel = Selector.from_request(request.whitelist, request.blacklist)
            _check_times(since_ns=request.since_ns)
        except FilterError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.number > MAX_EVENTS:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"number: {request.number} is over the server maximum of {MAX_EVENTS}")
        sub = self.events.subscribe() if request.follow else None
        self.sending += 1
        try:
            if request.number:
                # the loop appends to the ring: copy it here (with the id below which the store has the
                # rest), read the store and match in a worker
                ring, floor = list(self.events.ring), self.events.floor_id
                number, since = int(request.number), request.since_ns
                deadline = self._deadline(context)

                def past() -> tuple[list[EventRecord], int]:
                    recent = [e for _, e in ring if e.time_ns >= since and sel.matches_event(e)][-number:]
                    older = self.store.events(since, before_id=floor, number=number - len(recent),
                                              types=sel.event_types(),
                                              match=lambda s: sel.matches_event(_event(s)),
                                              deadline=deadline) if len(recent) < number else []
                    held = self.store.events_held_since() if since else 0
                    return [*map(_event, older), *recent], held

                try:
                    found, held = await self.executor.run(past)
                except StoreTimeout:
                    await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                                 "the event history read ran past its deadline; narrow --since or filter")
                note = events_coverage(since, held)
                if note:
                    yield observer_pb2.EventsResponse(held_since_ns=held, coverage=note)
                for ev in found:
                    await self._paced()
                    yield observer_pb2.EventsResponse(event=event_pb(ev))
            if sub is None:
                return
            async for ev in sub:
                if sub.lagged:
                    await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"follow: the client fell behind and {sub.lagged} events were dropped")
                if ev.time_ns >= request.since_ns and sel.matches_event(ev):
                    await self._paced()
                    yield observer_pb2.EventsResponse(event=event_pb(ev))
        finally:
            self.sending -= 1
            if sub is not None:
                sub.close()

    # -- Status ------------------------------------------------------------------------------------------

    async def Status(
        self, request: observer_pb2.StatusRequest, context: Context
    ) -> observer_pb2.StatusResponse:
        if self.status_provider is None:
            stats = await self.status_executor.run(self.store.stats)
            return observer_pb2.StatusResponse(
                store_bytes=stats.bytes, store_rows=stats.rows, data_dir=str(self.store.path.parent),
                completeness=completeness_pb({"store_evictions": stats.evictions,
                                              "incomplete_periods": stats.incomplete_periods}),
            )
        # on the loop: under load every hop to a thread waits for the GIL (and the status thread's SQLite
        # reads wait for it once per statement), which is where most of Status's time went
        st = self.status_provider()
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
            exporters=[observer_pb2.ExporterStatus(name=e.name, target=e.target, counters=e.counters,
                                                   last_error=e.last_error) for e in st.exporters],
        )
