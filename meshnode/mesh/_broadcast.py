"""The transmit-limited broadcast queue (memberlist ``queue.go``).

Every broadcast is piggybacked on up to ``retransmit_mult * ceil(log10(n + 1))`` packets, fewest-sent
first, then dropped: enough for an epidemic to reach every member with high probability, and bounded so
that gossip costs O(log n) packets per member per message. A newer broadcast about the same subject
(``key``) replaces the older one in the queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one broadcast is sent: ``mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Item:
    key: str
    payload: bytes
    id: int
    transmits: int = 0
    on_done: Callable[[], None] | None = field(default=None)


class TransmitLimitedQueue:
    """Queued broadcasts, each sent a limited number of times.

    Args:
        num_nodes: returns the current member count (the limit grows with it).
        retransmit_mult: the multiplier of the limit.
        max_items: the queue's bound; the oldest most-sent items are dropped past it (and counted).
    """

    def __init__(self, num_nodes: Callable[[], int], retransmit_mult: int, max_items: int = 1024) -> None:
        self._num_nodes = num_nodes
        self._mult = retransmit_mult
        self._max = max_items
        self._items: dict[str, _Item] = {}
        self._next_id = 0
        self.dropped = 0
        self._order: list[_Item] | None = None
        """Items by eviction order, the next victim last; valid until a send changes transmit counts."""

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, payload: bytes, on_done: Callable[[], None] | None = None) -> None:
        """Add a broadcast, replacing any queued one with the same ``key``."""
        old = self._items.pop(key, None)
        if old is not None and old.on_done is not None:
            old.on_done()
        self._next_id += 1
        self._items[key] = _Item(key, payload, self._next_id, 0, on_done)
        if len(self._items) > self._max:
            worst = self._worst()
            del self._items[worst.key]
            self.dropped += 1
            if worst.on_done is not None:
                worst.on_done()

    def _worst(self) -> _Item:
        """The most-sent item, oldest among equals. Sorted once and then popped, so that a burst of
        broadcasts (a join answer listing thousands of members) costs O(log n) each, not a scan each: an
        item queued since the sort is never the worst (never sent, and newer than all), and an item since
        replaced is skipped."""
        while True:
            if not self._order:
                self._order = sorted(self._items.values(), key=lambda it: (it.transmits, -it.id))
            worst = self._order.pop()
            if self._items.get(worst.key) is worst:
                return worst

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Broadcasts that fit in ``limit`` bytes with ``overhead`` bytes of framing each.

        Fewest-transmitted first, newest first among equals; each one returned counts as transmitted.
        """
        if not self._items:
            return []
        max_transmits = retransmit_limit(self._mult, self._num_nodes())
        self._order = None
        out: list[bytes] = []
        used = 0
        for item in sorted(self._items.values(), key=lambda it: (it.transmits, -it.id)):
            size = len(item.payload) + overhead
            if used + size > limit:
                continue
            used += size
            out.append(item.payload)
            item.transmits += 1
            if item.transmits >= max_transmits:
                del self._items[item.key]
                if item.on_done is not None:
                    item.on_done()
        return out

    def reset(self) -> None:
        """Forget every queued broadcast."""
        self._items.clear()
        self._order = None
