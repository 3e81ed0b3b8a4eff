"""The Flows RPC's history part: store rows straight into ``FlowsResponse`` messages, in a worker thread.

``FlowRecord`` is the model every layer shares, but building one per stored row and then its message cost
the node ~25 us a record (decode ~10, ``to_proto`` ~8, the Python filter re-check ~6): 2.5 s of CPU for
``meshctl flows --since all --limit 100000``. Here a row from ``Store.query_rows`` (enumerations stored as
wire numbers) becomes keyword arguments of the message in one ``dict(zip(...))``. Filters are pushed into
SQL (``Selector.query``), which selects exactly what ``Selector.matches`` would, so
rows are not re-checked in Python. The messages equal ``FlowRecord.to_proto`` of the same records: a unit
test compares both paths field by field over varied records and filters.

``ReadAhead`` advances the responses in the API's worker threads a few at a time, one read ahead of gRPC,
so the first records are on the wire while later ones are still read and the event loop stays free for
other calls. Between reads no thread is held: a client that stops reading holds its snapshot only, and only
until the snapshot's maximum age, when the reader is closed under it (its read transaction and its three
files given back, so the WAL can be checkpointed) and the stream ends with a resume token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from meshnode.api._executor import ApiExecutor
from meshnode.store import ROW_FIELDS, FlowQuery, Store
from meshnode.v1 import flow_pb2, observer_pb2

T = TypeVar("T")


class HistoryReader:
    """One Flows call's history: up to ``limit`` records of ``query`` read in one snapshot, as responses.

    ``responses`` runs in a worker thread; ``snapshot`` (the last closed period of the snapshot, for the
    follow part) is set before the first response, ``more`` once the responses are exhausted.
    ``batch_size`` 0 sends one record per response (``FlowsResponse.flow``), otherwise up to that many in
    ``FlowsResponse.flows``. ``token(key)`` gives the page token the last response carries when more
    records remain (it may return "" for none). ``keyed`` gives each response with the key of its last
    record, where a stream cut short resumes.
    """

    def __init__(
        self, store: Store, query: FlowQuery, limit: int, batch_size: int, deadline: float | None,
        token: Callable[[tuple[int, int, int]], str],
    ) -> None:
        self.store = store
        self.query = query
        self.limit = limit
        self.batch_size = batch_size
        self.deadline = deadline
        self.token = token
        self.snapshot = 0
        self.more = False

    def responses(self) -> Iterator[observer_pb2.FlowsResponse]:
        """The responses in record order; the store's snapshot stays open until they are exhausted."""
        return (resp for resp, _ in self.keyed())

    def keyed(self) -> Iterator[tuple[observer_pb2.FlowsResponse, tuple[int, int, int]]]:
        """``(response, key of its last record)`` in record order, in one snapshot (closed with the iterator)."""
        with self.store.reader(self.deadline) as conn:
            self.snapshot = self.store.last_closed_period(conn)
            if self.limit == 0:
                return
            q = dataclasses.replace(self.query, max_period=self.snapshot)
            rows = self.store.query_rows(q, conn, deadline=self.deadline)
            if self.batch_size:
                yield from self._batched(rows)
            else:
                yield from self._single(rows)

    def _batched(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[observer_pb2.FlowsResponse, Any]]:
        Response = observer_pb2.FlowsResponse
        names = ROW_FIELDS
        size, left = self.batch_size, self.limit
        resp = Response()
        add = resp.flows.add
        in_resp = 0
        last: tuple[Any, ...] | None = None
        for row in rows:
            if left == 0:
                self.more = True
                break
            if in_resp == size:
                assert last is not None
                yield resp, last[-3:]
                resp = Response()
                add = resp.flows.add
                in_resp = 0
            add(**dict(zip(names, row, strict=False)))  # row ends with the flag and the key
            in_resp += 1
            left -= 1
            last = row
        if last is None:
            return
        if self.more:
            resp.next_page_token = self.token(last[-3:])
        yield resp, last[-3:]

    def _single(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[observer_pb2.FlowsResponse, Any]]:
        Response = observer_pb2.FlowsResponse
        Flow = flow_pb2.Flow
        names = ROW_FIELDS
        left = self.limit
        prev: observer_pb2.FlowsResponse | None = None
        last: tuple[Any, ...] | None = None
        for row in rows:
            if left == 0:
                self.more = True
                break
            if prev is not None:
                assert last is not None
                yield prev, last[-3:]
            prev = Response(flow=Flow(**dict(zip(names, row, strict=False))))
            left -= 1
            last = row
        if prev is None or last is None:
            return
        if self.more:
            prev.next_page_token = self.token(last[-3:])
        yield prev, last[-3:]


class SnapshotExpired(Exception):
    """The stream's snapshot reached its maximum age and was given back; the stream ends with a resume key."""


class _Pull:
    """An iterator advanced and closed under one lock, by whichever worker runs the job."""

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._lock = threading.Lock()
        self.closed = False

    def take(self, n: int) -> list[Any] | None:
        """Up to ``n`` items (fewer at the end); None once closed."""
        with self._lock:
            if self.closed:
                return None
            return list(itertools.islice(self._items, n))

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            close = getattr(self._items, "close", None)
            if close is not None:
                close()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a read nobody waits for any more: its error is dropped with it


class ReadAhead(Generic[T]):
    """``items`` advanced in ``executor``'s workers, ``ahead`` at a time, one read ahead of the consumer.

    The iterator is advanced and closed under a lock (its SQLite connection is used by one thread at a time)
    and never on the event loop while the executor runs. When the consumer stops early (the call was
    cancelled, the client went away) the iterator is closed. ``expire`` (called after ``max_age_s``, or by
    the servicer at shutdown) closes it even while the consumer waits on a client that does not read; the
    consumer's next step then raises ``SnapshotExpired``. An exception in the producer is raised here.
    """

    def __init__(self, items: Iterator[T], executor: ApiExecutor, *, ahead: int = 4,
                 max_age_s: float | None = None) -> None:
        self._pull = _Pull(items)
        self._executor = executor
        self._ahead = ahead
        self._max_age_s = max_age_s
        self.expired = False

    def expire(self) -> None:
        """Give the iterator back now (in a worker; inline once the executor is closed)."""
        self.expired = True
        self._executor.submit(self._pull.close)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._run()

    async def _run(self) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._max_age_s, self.expire) if self._max_age_s is not None else None
        pending = asyncio.ensure_future(self._executor.run(self._pull.take, self._ahead))
        try:
            while True:
                got = await pending
                if got is None or self.expired:
                    raise SnapshotExpired
                if not got:
                    return
                pending = asyncio.ensure_future(self._executor.run(self._pull.take, self._ahead))
                for item in got:
                    yield item
                    if self.expired:
                        raise SnapshotExpired
        finally:
            if timer is not None:
                timer.cancel()
            if not pending.done():
                pending.cancel()
            pending.add_done_callback(_retrieve)
            self._executor.submit(self._pull.close)
