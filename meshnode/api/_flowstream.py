"""The Flows RPC's history part: store rows straight into ``FlowsResponse`` messages, in a worker thread.

``FlowRecord`` is the model every layer shares, but building one per stored row and then its message cost
the node ~25 us a record (decode ~10, ``to_proto`` ~8, the Python filter re-check ~6): 2.5 s of CPU for
``meshctl flows --since all --limit 100000``. Here a row from ``Store.query_rows`` (enumerations stored as
wire numbers) becomes keyword arguments of the message in one ``dict(zip(...))``. Filters are pushed into
SQL (``Selector.query``), which selects exactly what ``Selector.matches`` would, so
rows are not re-checked in Python. The messages equal ``FlowRecord.to_proto`` of the same records: a unit
test compares both paths field by field over varied records and filters.

``in_thread`` runs the producer in its own thread, a few responses ahead of gRPC, so the first records are
on the wire while later ones are still read and the event loop stays free for other calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final, TypeVar

from meshnode.store import ROW_FIELDS, FlowQuery, Store
from meshnode.v1 import flow_pb2, observer_pb2

T = TypeVar("T")


class HistoryReader:
    """One Flows call's history: up to ``limit`` records of ``query`` read in one snapshot, as responses.

    ``responses`` runs in a worker thread; ``snapshot`` (the last closed period of the snapshot, for the
    follow part) is set before the first response, ``more`` once the responses are exhausted.
    ``batch_size`` 0 sends one record per response (``FlowsResponse.flow``), otherwise up to that many in
    ``FlowsResponse.flows``. ``token(key)`` gives the page token the last response carries when more
    records remain (it may return "" for none).
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

    def _batched(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[observer_pb2.FlowsResponse]:
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
                yield resp
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
        yield resp

    def _single(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[observer_pb2.FlowsResponse]:
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
                yield prev
            prev = Response(flow=Flow(**dict(zip(names, row, strict=False))))
            left -= 1
            last = row
        if prev is None or last is None:
            return
        if self.more:
            prev.next_page_token = self.token(last[-3:])
        yield prev


_ITEM: Final = 0
_DONE: Final = 1
_ERROR: Final = 2


async def in_thread(items: Iterator[T], ahead: int = 4) -> AsyncIterator[T]:
    """``items`` produced in a thread of its own, at most ``ahead`` items before the consumer.

    The iterator is advanced and closed only in that thread (its SQLite connection is used by one thread
    at a time); when the consumer stops early (the call was cancelled, the client went away) the producer
    stops at its next item and closes the iterator. An exception in the producer is raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    room = threading.Semaphore(ahead)
    stop = threading.Event()

    def hand(kind: int, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def produce() -> None:
        try:
            for item in items:
                room.acquire()
                if stop.is_set():
                    return
                hand(_ITEM, item)
        except BaseException as exc:  # handed over, raised in the consumer
            hand(_ERROR, exc)
        else:
            hand(_DONE, None)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    threading.Thread(target=produce, name="meshnode-flows", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            room.release()
            yield value
    finally:
        stop.set()
        room.release()
