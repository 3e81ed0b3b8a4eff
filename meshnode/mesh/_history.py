"""A bounded history of verified digests of every member, by node id and seq.

The exchange spreads only each member's newest digest, and gossip can skip one (its announcement lost, or
superseded before the pull); cross-validation needs every period of a witness over a flow's whole span, or a
claim against it stays unverifiable. So each node keeps the last periods of every member here, each digest
names its publisher's previous one (``Digest.prev_seq``), and a node holding digest n but not the one before
it knows exactly what to fetch, from the publisher or from any holder (``DigestPull.refs``): the digests are
signed, so a holder can serve them but not forge them.

Bounded twice: digests per member (``per_node``, the retention validation needs) and payload bytes in all
(``max_bytes``); the oldest period (by period end) goes first, and every eviction is counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshnode.mesh._digest import HeldDigest


class DigestHistory:
    """Verified digests by ``(node_id, seq)``, at most ``per_node`` per member and ``max_bytes`` of payload.

    Args:
        per_node: digests kept per member (the newest seqs).
        max_bytes: payload bytes kept in all.
    """

    def __init__(self, per_node: int, max_bytes: int) -> None:
        self.per_node = max(1, per_node)
        self.max_bytes = max_bytes
        self._by_node: dict[str, dict[int, HeldDigest]] = {}
        self._heap: list[tuple[int, str, int]] = []  # (period_end_ns, node_id, seq); stale entries skipped
        self._count = 0
        self.bytes = 0
        self.evicted = 0
        """Digests evicted by either bound."""

    def __len__(self) -> int:
        return self._count

    def get(self, node_id: str, seq: int) -> HeldDigest | None:
        """The digest ``seq`` of ``node_id``, or None."""
        return self._by_node.get(node_id, {}).get(seq)

    def of(self, node_id: str) -> list[HeldDigest]:
        """The digests held of ``node_id``, oldest seq first."""
        held = self._by_node.get(node_id, {})
        return [held[s] for s in sorted(held)]

    def add(self, held: HeldDigest) -> bool:
        """Keep ``held``; False when it was held already or is older than every digest the bounds keep."""
        d = held.digest
        node = self._by_node.setdefault(d.node_id, {})
        if d.seq in node:
            return False
        node[d.seq] = held
        self._count += 1
        self.bytes += len(held.signed.payload)
        heapq.heappush(self._heap, (d.period_end_ns, d.node_id, d.seq))
        while len(node) > self.per_node:
            self._drop(d.node_id, min(node))
        while self.bytes > self.max_bytes and self._heap:
            _, nid, seq = heapq.heappop(self._heap)
            if self.get(nid, seq) is not None:
                self._drop(nid, seq)
        if len(self._heap) > 2 * self._count + 64:  # entries of digests already dropped pile up: rebuild
            self._heap = [(h.digest.period_end_ns, n, s) for n, hs in self._by_node.items() for s, h in hs.items()]
            heapq.heapify(self._heap)
        return self.get(d.node_id, d.seq) is not None

    def _drop(self, node_id: str, seq: int) -> None:
        node = self._by_node[node_id]
        held = node.pop(seq)
        if not node:
            del self._by_node[node_id]
        self._count -= 1
        self.bytes -= len(held.signed.payload)
        self.evicted += 1

    def missing(self, node_id: str) -> list[int]:
        """Seqs of ``node_id`` that held digests name as their predecessor and that are not held, newest first.

        Only those the per-member bound would keep once fetched: fewer than ``per_node`` held digests are newer.
        """
        node = self._by_node.get(node_id, {})
        seqs = sorted(node, reverse=True)
        out = []
        for i, s in enumerate(seqs):
            prev = node[s].digest.prev_seq
            if prev and prev < s and prev not in node and i + 1 < self.per_node:
                out.append(prev)
        return out

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop every digest of these nodes (not counted as evictions: the members are gone)."""
        for nid in node_ids:
            node = self._by_node.pop(nid, None)
            if node:
                self._count -= len(node)
                self.bytes -= sum(len(h.signed.payload) for h in node.values())
