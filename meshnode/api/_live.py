"""What the API streams live: flow records as periods close, and the sensor's low-level events.

Both are bounded. The event ring keeps the newest ``capacity`` events for late subscribers and counts what
falls out of it; each subscriber has its own bounded queue, and a subscriber that falls behind is told so
(its ``lagged`` count) instead of silently missing records. Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from typing import Generic, TypeVar

from meshnode.sensor import EventRecord
from meshnode.store import StoredFlow

T = TypeVar("T")


class Subscription(Generic[T]):
    """One subscriber's bounded queue; iterate it with ``async for``."""

    def __init__(self, owner: _Hub[T], size: int) -> None:
        self._owner = owner
        self.queue: asyncio.Queue[T] = asyncio.Queue(size)
        self.lagged = 0
        """Items this subscriber missed because its queue was full."""

    def offer(self, item: T, weight: int = 1) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lagged += weight
            return False
        return True

    def close(self) -> None:
        """Stop receiving; what is queued is dropped (a stream ended at its maximum age while its client did
        not read must not keep periods of records alive)."""
        self._owner.unsubscribe(self)
        while not self.queue.empty():
            self.queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[T]:
        while True:
            yield await self.queue.get()


class _Hub(Generic[T]):
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscription[T]] = set()
        self.dropped = 0

    def subscribe(self) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, self.queue_size)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        self.subscribers.discard(sub)

    def _offer(self, item: T, weight: int = 1) -> None:
        for sub in list(self.subscribers):
            if not sub.offer(item, weight):
                self.dropped += weight


class FlowFeed(_Hub[tuple[int, Sequence[StoredFlow]]]):
    """Stored records of each closed period, ``(seq, records)``, to ``follow`` streams."""

    def __init__(self, queue_size: int = 64) -> None:
        super().__init__(queue_size)
        self.last_seq = 0

    def publish(self, seq: int, records: Sequence[StoredFlow]) -> None:
        """Called by the node after period ``seq`` committed."""
        self.last_seq = seq
        self._offer((seq, records), max(1, len(records)))


class EventRing(_Hub[EventRecord]):
    """The newest low-level events, bounded, plus live subscribers; and the events not yet in the store.

    Every event gets the next id (``first_id`` on: the node starts past the ids its store holds), so the ring
    holds a run of consecutive ids and the store the ids below it: a reader of history takes the ring and
    the stored events below ``floor_id``. ``take_pending`` hands the events pushed since the last take to the
    node, which writes them with the period (``restore_pending`` when that write failed); at most
    ``max_pending`` wait, the oldest beyond are counted in ``unstored``.
    """

    def __init__(self, capacity: int = 10_000, queue_size: int = 1_000, *, first_id: int = 1,
                 max_pending: int = 100_000) -> None:
        super().__init__(queue_size)
        self.ring: collections.deque[tuple[int, EventRecord]] = collections.deque(maxlen=capacity)
        self.next_id = first_id
        self.max_pending = max_pending
        self.pending: collections.deque[tuple[int, EventRecord]] = collections.deque()
        self.evicted = 0
        """Events pushed out of the ring by newer ones (still delivered to live subscribers, and stored)."""
        self.unstored = 0
        """Events that waited for the store beyond ``max_pending`` and were dropped before it took them."""

    def push(self, events: Sequence[EventRecord]) -> None:
        """Add events (a sensor poll's, or diagnosis's anomalies)."""
        cap = self.ring.maxlen or 0
        for ev in events:
            if len(self.ring) == cap:
                self.evicted += 1
            item = (self.next_id, ev)
            self.next_id += 1
            self.ring.append(item)
            self.pending.append(item)
            self._offer(ev)
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.unstored += 1

    def take_pending(self) -> list[tuple[int, EventRecord]]:
        """The events pushed since the last take, with their ids, for the store."""
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def restore_pending(self, taken: Sequence[tuple[int, EventRecord]]) -> None:
        """Put back what ``take_pending`` returned when the store could not write it."""
        self.pending.extendleft(reversed(taken))
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.unstored += 1

    @property
    def floor_id(self) -> int:
        """The smallest id the ring holds (``next_id`` when empty): older events are the store's."""
        return self.ring[0][0] if self.ring else self.next_id

    def recent(self, since_ns: int = 0) -> list[EventRecord]:
        """Events in the ring at or after ``since_ns``, oldest first."""
        return [e for _, e in self.ring if e.time_ns >= since_ns]
