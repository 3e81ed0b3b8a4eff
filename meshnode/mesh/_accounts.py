"""Accounting (seed 003): what this node spent on each requester, what it asked of each peer, and quotas.

pMeasure keeps "a clear knowledge of whom it served and which tasks it participated in", and refuses tasks
from requesters that take without giving. Here each requester has an ``Account``: active tasks run for it,
fleet queries answered for it and the bytes of those answers (``served_*``), and the tasks and queries this
node sent it with the bytes that came back (``asked_*``). Gossip (membership packets, digest pulls) is not
accounted: every member carries about the same share of it by design.

A requester is a member's node id (the key that signed the request), else the caller's address (an
operator's meshctl, or an unsigned caller of an insecure lab node). Each has a quota per hour for active
tasks and for fleet queries, as a token bucket (``TokenBucket``: the quota is the burst, refilled evenly
over the hour), configurable per requester; a request over it is refused with RESOURCE_EXHAUSTED and
counted on the account (``refused``). The ledger holds at most ``max_peers`` accounts; the least recently
used one goes first, counted in ``evicted``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Final, Literal

from meshnode.mesh._tasks import TaskRefused, TokenBucket

MAX_PEERS: Final = 1024
"""Accounts held at most (members, and callers by address)."""
DEFAULT_TASK_QUOTA: Final = 600
"""Active tasks per requester per hour by default (one every 6 s sustained, 600 at once)."""
DEFAULT_QUERY_QUOTA: Final = 3600
"""Fleet queries per requester per hour by default (one a second sustained)."""

Kind = Literal["tasks", "queries"]


@dataclass(slots=True)
class Account:
    """One requester's account with this node since it started (``meshnode.v1.PeerAccount``)."""

    served_tasks: int = 0
    served_queries: int = 0
    served_bytes: int = 0
    asked_tasks: int = 0
    asked_queries: int = 0
    asked_bytes: int = 0
    refused: int = 0

    def total(self) -> int:
        """How busy the account is (the order of the views)."""
        return self.served_tasks + self.served_queries + self.asked_tasks + self.asked_queries + self.refused


ACCOUNT_FIELDS: Final = tuple(f.name for f in fields(Account))


@dataclass(frozen=True, slots=True)
class Quota:
    """Per hour; 0 is unlimited."""

    tasks: int = DEFAULT_TASK_QUOTA
    queries: int = DEFAULT_QUERY_QUOTA


def parse_quotas(entries: tuple[str, ...] | list[str]) -> dict[str, Quota]:
    """``PEER=TASKS/QUERIES`` entries (a node id or an address; counts per hour, 0 unlimited) by peer.

    Raises:
        ValueError: naming the entry and the form it must have.
    """
    out: dict[str, Quota] = {}
    for entry in entries:
        peer, sep, rest = entry.strip().partition("=")
        tasks, slash, queries = rest.partition("/")
        if not sep or not slash or not peer.strip() or not tasks.strip().isdigit() or not queries.strip().isdigit():
            raise ValueError(f"{entry!r} is not PEER=TASKS/QUERIES (a node id or address, then active tasks and "
                             "fleet queries per hour, 0 for unlimited), e.g. 3f2a9c1d0b7e6a55=60/600")
        out[peer.strip()] = Quota(int(tasks), int(queries))
    return out


@dataclass
class _Entry:
    account: Account = field(default_factory=Account)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)


class Ledger:
    """Accounts by requester, with quotas. Not thread-safe: the mesh's event loop owns it.

    Args:
        default: every requester's quota unless ``quotas`` names it.
        quotas: per-requester quotas (``parse_quotas``).
        clock: monotonic seconds (injected in tests).
        max_peers: accounts held at most.
    """

    def __init__(self, default: Quota | None = None, quotas: Mapping[str, Quota] | None = None,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = MAX_PEERS) -> None:
        self.default = default or Quota()
        self.quotas = dict(quotas or {})
        self._clock = clock
        self.max_peers = max_peers
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.evicted = 0
        """Accounts dropped (least recently used first) to stay within ``max_peers``."""

    def quota(self, peer: str) -> Quota:
        """The requester's quota."""
        return self.quotas.get(peer, self.default)

    def _entry(self, peer: str) -> _Entry:
        e = self._entries.get(peer)
        if e is None:
            e = self._entries[peer] = _Entry()
            while len(self._entries) > self.max_peers:
                self._entries.popitem(last=False)
                self.evicted += 1
        else:
            self._entries.move_to_end(peer)
        return e

    def charge(self, peer: str, kind: Kind, n: int = 1) -> None:
        """Take ``n`` of ``peer``'s quota of ``kind``; raise TaskRefused(RESOURCE_EXHAUSTED) when over it."""
        limit = getattr(self.quota(peer), kind)
        e = self._entry(peer)
        if not limit:
            return
        bucket = e.buckets.get(kind)
        if bucket is None:
            bucket = e.buckets[kind] = TokenBucket(rate=limit / 3600.0, burst=float(limit), clock=self._clock)
        if not bucket.take(n):
            e.account.refused += 1
            what = "active tasks" if kind == "tasks" else "fleet queries"
            raise TaskRefused("RESOURCE_EXHAUSTED", f"{peer} is over its quota of {limit} {what} per hour on this "
                                                    "node (its operator may raise it: peer_quotas)")

    def served(self, peer: str, *, tasks: int = 0, queries: int = 0, nbytes: int = 0) -> None:
        """This node did work for ``peer``."""
        a = self._entry(peer).account
        a.served_tasks += tasks
        a.served_queries += queries
        a.served_bytes += nbytes

    def asked(self, peer: str, *, tasks: int = 0, queries: int = 0, nbytes: int = 0) -> None:
        """This node asked ``peer`` for work (``nbytes``: the answer's size)."""
        a = self._entry(peer).account
        a.asked_tasks += tasks
        a.asked_queries += queries
        a.asked_bytes += nbytes

    def accounts(self) -> list[tuple[str, Account, Quota]]:
        """Every account with its quota, busiest first (then by peer)."""
        rows = [(p, e.account, self.quota(p)) for p, e in self._entries.items()]
        return sorted(rows, key=lambda r: (-r[1].total(), r[0]))

    def totals(self) -> dict[str, int]:
        """Each ``Account`` field summed over the accounts held (for status and metrics)."""
        out = dict.fromkeys(ACCOUNT_FIELDS, 0)
        for e in self._entries.values():
            for name in ACCOUNT_FIELDS:
                out[name] += getattr(e.account, name)
        return out
