"""Site aggregates: hierarchical dissemination of signed rollups (seed 000, Astrolabe / SDIMS; Consul's pools).

Full replication sends every digest to every node, so a node's gossip grows with the fleet. Here a node runs
SWIM only with the members of its site, and what crosses a site is a signed aggregate:

* **site pool** (every member of one site): membership and failure detection stay inside the site. Each
  member hands its signed digest to the site's elected aggregators (``elect``: the ``k`` alive members with
  the lowest sha256 of their node id, as each member sees them). Shortly after the period closes every
  aggregator builds the site's ``GroupAggregate`` from the digests it holds (``build_aggregate``, a pure
  function), signs it and announces it; every member pulls the ``k`` candidates and cross-checks them.
* **region pool** (the site aggregators of one region) carries the candidates of its sites, which its
  members cross-check in turn; ``k`` of them (elected the same way) build the region's aggregate from the
  site aggregates decided.
* **fleet pool** (every site aggregator) carries the region aggregates' candidates; its members decide
  them and announce the decided one into their site, where every member pulls one per region.

A pool carries the candidates of the level it checks; the pool below gets only the decided aggregate. So
a member receives its own site's ``k`` candidates and one aggregate per region each period, pushes one
digest, and pulls the digests of the peers it validates: its cost grows with its own traffic and the
number of regions, not with the fleet. Details of another site are asked of that site ("descend only where
asked"): its aggregators hold the digests.

Cross-check (``decide``): candidates of one group and period that agree (same content but the signer) are
accepted at once. When they differ, the holder pulls the signed sources each candidate lists and recomputes
it; a candidate that does not equal its own recomputation is a lie (sums inflated, rows invented), its
aggregator is flagged and its aggregates are dropped from then on. A member also flags a candidate that
lists its own digest at a seq it never signed, and an aggregator that signs two different aggregates of one
group and period (the two signed aggregates are the proof). Sources are signed by their publishers, so a
recomputation cannot be fooled by whoever serves them.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from google.protobuf.message import DecodeError

from meshnode._exceptions import PeerError
from meshnode.mesh._aggregate import (
    FLEET,
    HOST_LIMITS,
    MISSING_LABEL,
    U64_MAX,
    Aggregate,
    HostLimits,
    clamp_rollup,
    group_of,
)
from meshnode.mesh._broadcast import TransmitLimitedQueue
from meshnode.mesh._digest import (
    DIGEST_VERSION,
    DigestRejected,
    NodeKey,
    SignatureCheck,
    bound_digest,
    check_signature,
    node_id_from_public_key,
    sign_digest,
    verify_digest,
)
from meshnode.mesh._state import State
from meshnode.v1 import flow_pb2, mesh_pb2

if TYPE_CHECKING:
    from meshnode.mesh._clock import Scheduler
    from meshnode.mesh._state import Member, Membership

log = logging.getLogger(__name__)

AGGREGATE_VERSION: Final = 1
"""The only ``GroupAggregate.version`` this code writes and reads."""

HOST: Final = "host"
SITE: Final = "site"
REGION: Final = "region"
_LEVELS: Final = (SITE, REGION)
_DOMAIN: Final = b"meshnode.v1.GroupAggregate\0"
"""Signed before an aggregate's payload, so that no digest signature verifies as an aggregate's, nor back."""

_MAX_GROUP = 256
_FUTURE_SLACK_NS = 300 * 10**9


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Bounds and timers of the hierarchy.

    Attributes:
        aggregators: ``k``, the aggregators elected per site and per region (2 or 3: one can lie or die and
            the others still answer).
        period: the export period in seconds; periods end at wall-clock multiples of it.
        settle: seconds after a period ends before site aggregators build (members' digests arrive first).
        decide_after: seconds after a candidate arrives before it is decided without the other ``k - 1``.
        repair_after: seconds after a period ends when a member asks its site's aggregators for the region
            aggregates it still lacks (the regions of the period before), should gossip have missed it.
        region_settle: seconds after a period ends before region aggregators build.
        max_bytes: the largest aggregate payload built or accepted; the quietest destinations are cut.
        max_sources: the most sources one aggregate lists (a site's members, a region's sites).
        max_pull: the most items one pull asks for or one answer carries.
        keep_periods: periods of digests and aggregates held (older ones are dropped, later arrivals too).
        retransmit_mult: announcements are sent mult * ceil(log10(n + 1)) times in each pool.
    """

    aggregators: int = 2
    period: float = 10.0
    settle: float = 1.0
    decide_after: float = 1.0
    region_settle: float = 2.2
    repair_after: float = 4.0
    max_bytes: int = 1024
    max_sources: int = 1024
    max_pull: int = 64
    keep_periods: int = 3
    retransmit_mult: int = 3


# ---------------------------------------------------------------------------------------------- pure parts


def site_group(labels: Mapping[str, str]) -> str:
    """The site a host belongs to: its ``region/site`` label path."""
    return group_of(labels, SITE)


def region_group(labels: Mapping[str, str]) -> str:
    """The region a host belongs to."""
    return group_of(labels, REGION)


def election_rank(node_id: str) -> bytes:
    """A member's place in elections: sha256 of its node id (lowest first). Node ids are key fingerprints,
    so nobody picks a low rank without grinding keys, and every member ranks the same way."""
    return hashlib.sha256(node_id.encode()).digest()


def elect(alive: Iterable[str], k: int) -> list[str]:
    """The ``k`` aggregators of a group: the alive members with the lowest ``election_rank``."""
    return sorted(set(alive), key=election_rank)[:k]


def _ref_key(r: mesh_pb2.AggregateRef) -> tuple[str, str, str, int, int]:
    return (r.level, r.group, r.signer, r.period_end_ns, r.seq)


def _median_low(values: list[int]) -> int:
    return int(statistics.median_low(values)) if values else 0


@dataclass(slots=True)
class _Row:
    service: str
    flows: int = 0
    useful: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0
    retransmits: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    p50: list[int] = field(default_factory=list)
    p95: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Source:
    """One input of an aggregate: its ref, its rollups, the hosts it covers and its period length."""

    ref: mesh_pb2.AggregateRef
    rollups: Sequence[flow_pb2.Rollup]
    hosts: int = 1
    period_s: float = HOST_LIMITS.max_period_s


def digest_source(d: mesh_pb2.Digest) -> Source:
    """A member's digest as a site aggregate's source."""
    ref = mesh_pb2.AggregateRef(level=HOST, signer=d.node_id, period_end_ns=d.period_end_ns, seq=d.seq)
    return Source(ref, d.by_destination, 1, HOST_LIMITS.period_s(d.period_start_ns, d.period_end_ns))


def aggregate_source(a: mesh_pb2.GroupAggregate) -> Source:
    """A site aggregate as a region aggregate's source."""
    ref = mesh_pb2.AggregateRef(level=a.level, group=a.group, signer=a.aggregator, period_end_ns=a.period_end_ns)
    return Source(ref, a.by_destination, a.hosts)


def build_aggregate(level: str, group: str, aggregator: str, period_end_ns: int, sources: Iterable[Source],
                    max_bytes: int = 1024, limits: HostLimits = HOST_LIMITS) -> mesh_pb2.GroupAggregate:
    """The aggregate of ``sources``: deterministic, so that anyone holding the sources recomputes it exactly.

    Per destination: attempts, useful, failures, bytes and retransmits summed (a host's values clamped to
    ``limits`` first, sums saturating at ``U64_MAX``); RTT p50 and p95 the low median over the sources that
    have one. Busiest destinations first, cut to ``max_bytes`` (the cut counted).
    """
    srcs = sorted(sources, key=lambda s: _ref_key(s.ref))
    rows: dict[str, _Row] = {}
    for s in srcs:
        seen: set[str] = set()
        for r in s.rollups:
            if r.key in seen:
                continue
            seen.add(r.key)
            if s.ref.level == HOST:
                v, _ = clamp_rollup(r, s.period_s, limits)
                flows, useful, failures = int(v["attempts"]), int(v["useful"]), dict(v["failures"])
                tx, rx, retx = int(v["bytes_tx"]), int(v["bytes_rx"]), int(v["retransmits"])
                p50, p95 = int(v["rtt_p50_us"]), int(v["rtt_p95_us"])
            else:
                flows, useful, failures = r.flows, r.useful, dict(r.failures)
                tx, rx, retx, p50, p95 = r.bytes_tx, r.bytes_rx, r.retransmits, r.rtt_p50_us, r.rtt_p95_us
            row = rows.get(r.key)
            if row is None:
                row = rows[r.key] = _Row(r.service)
            row.flows = min(U64_MAX, row.flows + flows)
            row.useful = min(U64_MAX, row.useful + useful)
            row.bytes_tx = min(U64_MAX, row.bytes_tx + tx)
            row.bytes_rx = min(U64_MAX, row.bytes_rx + rx)
            row.retransmits = min(U64_MAX, row.retransmits + retx)
            for outcome, n in failures.items():
                row.failures[outcome] = min(U64_MAX, row.failures[outcome] + n)
            if p50:
                row.p50.append(p50)
            if p95:
                row.p95.append(p95)
            if not row.service and r.service:
                row.service = r.service
    out = [
        flow_pb2.Rollup(key=key, flows=row.flows, useful=row.useful, failures=dict(sorted(row.failures.items())),
                        bytes_tx=row.bytes_tx, bytes_rx=row.bytes_rx, retransmits=row.retransmits,
                        rtt_p50_us=_median_low(row.p50), rtt_p95_us=_median_low(row.p95), service=row.service)
        for key, row in rows.items()
    ]
    out.sort(key=lambda r: (-r.flows, r.key))
    refs = [s.ref for s in srcs]
    agg = mesh_pb2.GroupAggregate(
        version=AGGREGATE_VERSION, level=level, group=group, aggregator=aggregator, period_end_ns=period_end_ns,
        hosts=sum(s.hosts for s in srcs), sources_sha256=sources_sha256(refs),
    )
    budget = max_bytes - agg.ByteSize() - 6  # room for rollups_truncated
    kept = 0
    for r in out:
        size = r.ByteSize() + 3
        if size > budget:
            break
        budget -= size
        kept += 1
    agg.by_destination.extend(out[:kept])
    agg.rollups_truncated = len(out) - kept
    agg.sources.extend(refs)
    return agg


def sources_sha256(refs: Iterable[mesh_pb2.AggregateRef]) -> bytes:
    """The commitment a gossiped aggregate carries instead of its source list (``GroupAggregate.sources_sha256``)."""
    h = hashlib.sha256()
    for r in refs:
        b = r.SerializeToString(deterministic=True)
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.digest()


def stripped(a: mesh_pb2.GroupAggregate) -> mesh_pb2.GroupAggregate:
    """The gossiped form of an aggregate: its source list left out (``sources_sha256`` commits to it)."""
    c = mesh_pb2.GroupAggregate()
    c.CopyFrom(a)
    del c.sources[:]
    return c


def content(a: mesh_pb2.GroupAggregate) -> bytes:
    """What honest aggregators of the same sources agree on: the aggregate without its signer."""
    c = mesh_pb2.GroupAggregate()
    c.CopyFrom(a)
    c.aggregator = ""
    return c.SerializeToString(deterministic=True)


def sign_aggregate(key: NodeKey, agg: mesh_pb2.GroupAggregate) -> mesh_pb2.SignedDigest:
    """Serialize the gossiped form (``stripped``) once; sign the domain tag and those bytes."""
    payload = stripped(agg).SerializeToString(deterministic=True)
    return mesh_pb2.SignedDigest(payload=payload, signature=key.sign(_DOMAIN + payload), public_key=key.public_raw)


def check_sources(a: mesh_pb2.GroupAggregate, refs: Sequence[mesh_pb2.AggregateRef], cfg: SiteConfig) -> None:
    """Check a source list a holder sent for ``a``: bounded, no source twice, sorted, and the one committed to.

    Raises:
        DigestRejected: ``too_many_sources``, ``duplicate_source``, ``sources_mismatch``.
    """
    if len(refs) > cfg.max_sources:
        raise DigestRejected("too_many_sources", f"{len(refs)} sources (max {cfg.max_sources})")
    if len({_ref_key(r)[1:4] for r in refs}) != len(refs):
        raise DigestRejected("duplicate_source", "a source is listed twice")
    if sources_sha256(refs) != a.sources_sha256:
        raise DigestRejected("sources_mismatch", "the source list is not the one the aggregate commits to")


def verify_aggregate(signed: mesh_pb2.SignedDigest, cfg: SiteConfig, now_ns: int | None = None,
                     check: SignatureCheck = check_signature) -> mesh_pb2.GroupAggregate:
    """The aggregate inside ``signed`` after checking size, signature, identity, version, bounds, duplicates.

    Raises:
        DigestRejected: reasons ``oversize``, ``bad_key``, ``bad_signature``, ``malformed``, ``bad_identity``,
            ``bad_version``, ``bad_level``, ``duplicate_key``, ``from_future``.
    """
    if len(signed.payload) > cfg.max_bytes:
        raise DigestRejected("oversize", f"{len(signed.payload)} bytes")
    check(signed.public_key, signed.signature, _DOMAIN + signed.payload)
    try:
        a = mesh_pb2.GroupAggregate.FromString(signed.payload)
    except DecodeError as exc:
        raise DigestRejected("malformed", str(exc)) from exc
    if a.aggregator != node_id_from_public_key(signed.public_key):
        raise DigestRejected("bad_identity", "aggregator is not the key's fingerprint")
    if a.version != AGGREGATE_VERSION:
        raise DigestRejected("bad_version", f"version {a.version}")
    if a.level not in _LEVELS or not a.group or len(a.group) > _MAX_GROUP:
        raise DigestRejected("bad_level", f"level {a.level[:16]!r} group {a.group[:64]!r}")
    if a.sources or len(a.sources_sha256) != 32:
        raise DigestRejected("malformed", "a gossiped aggregate carries a 32-byte sources_sha256, not its sources")
    if len({r.key for r in a.by_destination}) != len(a.by_destination):
        raise DigestRejected("duplicate_key", "a destination is listed twice")
    if now_ns is not None and a.period_end_ns > now_ns + _FUTURE_SLACK_NS:
        raise DigestRejected("from_future", "period ends in the future")
    return a


def aggregate_rows(aggs: Iterable[mesh_pb2.GroupAggregate], *, now_ns: int,
                   destination: str | None = None) -> list[Aggregate]:
    """Fleet-query rows (``Aggregate``) from decided group aggregates, one per (group, destination).

    An aggregate carries sums, not one value per host, so ``hosts`` is the hosts the group's sources cover,
    ``useful_fraction`` is useful / attempts of the sums and the RTTs are the low median over the group's
    sources; the per-host rates and trimmed counts are left unset. Rows sorted by group, then destination.
    """
    out: list[Aggregate] = []
    for a in sorted(aggs, key=lambda a: a.group):
        age = max(0.0, (now_ns - a.period_end_ns) / 1e9)
        for r in sorted(a.by_destination, key=lambda r: r.key):
            if destination is not None and r.key != destination:
                continue
            out.append(Aggregate(
                level=a.level, group=a.group, destination=r.key, hosts=a.hosts, attempts=r.flows, useful=r.useful,
                failures=dict(sorted(r.failures.items())), bytes_tx=r.bytes_tx, bytes_rx=r.bytes_rx,
                retransmits=r.retransmits, useful_fraction=r.useful / r.flows if r.flows else None,
                rtt_p50_us=float(r.rtt_p50_us) if r.rtt_p50_us else None,
                rtt_p95_us=float(r.rtt_p95_us) if r.rtt_p95_us else None, newest_age_s=age, oldest_age_s=age,
            ))
    return out


def aggregate_selected(a: mesh_pb2.GroupAggregate, selector: Mapping[str, str], mine: Mapping[str, str]) -> bool:
    """Whether group aggregate ``a`` answers for hosts ``selector`` (region and site keys only) selects."""
    region = a.group.split("/")[0]
    if REGION in selector and selector[REGION] != region:
        return False
    if a.level == REGION:
        return region != mine.get(REGION, MISSING_LABEL)  # this node's region is summed from its sites
    return region == mine.get(REGION, MISSING_LABEL)


def group_sums(level: str, own: mesh_pb2.GroupAggregate | None, others: Sequence[mesh_pb2.GroupAggregate],
                node_id: str, my_region: str) -> list[mesh_pb2.GroupAggregate]:
    """The groups of a fleet query grouped by ``level`` (site, region, fleet) from site and region sums:
    this node's region is summed from its sites, the other regions are their aggregates."""
    sites = ([own] if own is not None else []) + [a for a in others if a.level == SITE]
    if level == SITE:
        return sites + [a for a in others if a.level == REGION]
    end = max([a.period_end_ns for a in [*sites, *others]], default=0)
    regions = [a for a in others if a.level == REGION]
    if sites:
        regions.append(build_aggregate(REGION, my_region, node_id, end, [aggregate_source(a) for a in sites],
                                       max_bytes=1 << 20))
    if level == REGION:
        return regions
    if not regions:
        return []
    return [build_aggregate(FLEET, FLEET, node_id, end, [aggregate_source(a) for a in regions], max_bytes=1 << 20)]


def only_service(aggs: Sequence[mesh_pb2.GroupAggregate], service: str) -> list[mesh_pb2.GroupAggregate]:
    """``aggs`` with only the destinations of ``service`` (all of them when empty)."""
    if not service:
        return list(aggs)
    out = []
    for a in aggs:
        c = mesh_pb2.GroupAggregate()
        c.CopyFrom(a)
        del c.by_destination[:]
        c.by_destination.extend(r for r in a.by_destination if r.service == service)
        out.append(c)
    return out


# ---------------------------------------------------------------------------------------------- the node


POOLS: Final = (SITE, REGION, "fleet")


@dataclass(slots=True)
class _Candidate:
    signed: mesh_pb2.SignedDigest
    agg: mesh_pb2.GroupAggregate
    addr: str
    """Where it came from (pool address): sources are pulled there first."""
    sources: list[mesh_pb2.AggregateRef] | None = None
    """Its source list, once built here or fetched and checked against the commitment."""


class _Pool:
    """One pool's membership delegate: announcements, pulls, pushes go to the node."""

    def __init__(self, node: SiteNode, role: str) -> None:
        self.node = node
        self.role = role
        self.membership: Membership | None = None
        self.queue = TransmitLimitedQueue(self._n, node.config.retransmit_mult)
        self.tag = b""
        """Prefixed to this pool's requests: ``meshnode.mesh._mux.SITE_TAG`` when the pool's membership is
        shared with the digest exchange (the node's site pool), else nothing."""

    def _n(self) -> int:
        return self.membership.num_members() if self.membership is not None else 1

    def notify_msg(self, source: str, source_addr: str, payload: bytes) -> None:
        self.node._on_announce(self, source_addr, payload)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self.queue.get_broadcasts(overhead, limit)

    def pending_broadcasts(self) -> int:
        return len(self.queue)

    def local_state(self, join: bool, remote: bytes | None) -> bytes:
        return self.node._held_refs(self.role).SerializeToString()

    def merge_remote_state(self, payload: bytes, join: bool, source_addr: str) -> None:
        self.node._merge_refs(self, source_addr, payload)

    def handle_request(self, source_addr: str, payload: bytes) -> bytes:
        return self.node._on_request(self, source_addr, payload)


GroupKey = tuple[str, str, int]
"""``(level, group, period_end_ns)``."""


class SiteNode:
    """One node's part of the hierarchy: its digests, its pools' delegates, candidates and decisions.

    Args:
        key: the node's identity.
        labels: its labels (``region``, ``site``).
        scheduler: the clock.
        config: bounds and timers.
        check: the signature check (simulations share a memoized one).
    """

    def __init__(self, key: NodeKey, labels: Mapping[str, str], scheduler: Scheduler,
                 config: SiteConfig | None = None, check: SignatureCheck = check_signature) -> None:
        self.key = key
        self.node_id = key.node_id
        self.labels = dict(labels)
        self.site = site_group(labels)
        self.region = region_group(labels)
        self.config = config or SiteConfig()
        self._sched = scheduler
        self._check = check
        self.pools: dict[str, _Pool] = {role: _Pool(self, role) for role in POOLS}
        self.counters: Counter[str] = Counter()
        self._seq = 0
        self.digests: dict[int, dict[str, tuple[mesh_pb2.SignedDigest, mesh_pb2.Digest]]] = {}
        """By period (``period_of`` their end): the digests held (own, pushed to this node as aggregator,
        pulled to validate)."""
        self.candidates: dict[GroupKey, dict[str, _Candidate]] = {}
        self.decided: dict[GroupKey, _Candidate] = {}
        self.flagged: dict[str, str] = {}
        """Aggregators caught lying, with the reason."""
        self.evidence: dict[tuple[str, str, int, str], _Candidate] = {}
        """The flagged aggregators' candidates, by ``(level, group, period_end_ns, aggregator)``."""
        self.validate: dict[str, str] = {}
        """Members this node validates (the other ends of its flows): node id -> address; their digests are
        pulled each period."""
        self._deciding: set[GroupKey] = set()
        self._pulling: set[tuple[str, bytes]] = set()
        self._decide_timers: set[GroupKey] = set()
        self.located: OrderedDict[str, mesh_pb2.PushPullMember] = OrderedDict()
        """The latest askers of locates, by node id (``_remember``)."""
        self.on_decide: Callable[[mesh_pb2.GroupAggregate], None] | None = None
        self.on_digest: Callable[[mesh_pb2.SignedDigest, str], object] | None = None
        """Called with each peer digest newly held (pushed to this aggregator, pulled to validate) and where
        it came from: the node hands it to its digest exchange (trust, diagnosis, queries)."""
        self.upper_seeds: Callable[[str], list[str]] | None = None
        """Addresses to join the region (``"region"``) or fleet (``"fleet"``) pool through, once elected."""
        self.make_upper: Callable[[str], Membership] | None = None
        """Builds this node's membership of an upper pool (the node's transport factory)."""

    # ------------------------------------------------------------------ pools

    def attach(self, role: str, membership: Membership) -> None:
        """Give pool ``role`` its membership (whose delegate is ``self.pools[role]``)."""
        self.pools[role].membership = membership

    @property
    def site_pool(self) -> Membership:
        m = self.pools[SITE].membership
        assert m is not None, "the site pool is attached first"
        return m

    def _live(self, role: str) -> list[str]:
        m = self.pools[role].membership
        if m is None or not m._running:
            return []
        return [x.node_id for x in m._members.values() if x.state in (State.ALIVE, State.SUSPECT)]

    def site_aggregators(self) -> list[str]:
        """The site's aggregators as this node sees its site."""
        return elect(self._live(SITE), self.config.aggregators)

    def is_site_aggregator(self) -> bool:
        return self.node_id in self.site_aggregators()

    def is_region_aggregator(self) -> bool:
        return self.node_id in elect(self._live(REGION), self.config.aggregators)

    def _addr_of(self, role: str, node_id: str) -> str | None:
        m = self.pools[role].membership
        if m is None:
            return None
        x = m._members.get(node_id)
        return None if x is None else x.addr

    def _request(self, role: str, addr: str, req: mesh_pb2.SiteRequest,
                 on_reply: Callable[[mesh_pb2.SiteItems | None], None]) -> None:
        pool = self.pools[role] if self.pools[role].membership is not None else self.pools[SITE]
        m = pool.membership or self.site_pool

        def reply(raw: bytes | None, err: str) -> None:
            if raw is None:
                self.counters["requests_failed"] += 1
                on_reply(None)
                return
            try:
                on_reply(mesh_pb2.SiteItems.FromString(raw))
            except DecodeError:
                self.counters["answers_malformed"] += 1
                on_reply(None)

        m.request(addr, pool.tag + req.SerializeToString(), reply)

    # ------------------------------------------------------------------ periods

    def period_end_ns(self, now_ns: int | None = None) -> int:
        """The end of the last closed period (wall-clock multiples of ``period``)."""
        p = int(self.config.period * 1e9)
        t = self._sched.wall_ns() if now_ns is None else now_ns
        return t // p * p

    def period_of(self, end_ns: int) -> int:
        """The period a digest ending at ``end_ns`` belongs to: the nearest multiple of ``period``. A node
        closes its period at the first tick after the boundary, so its digest ends a little after it; the
        digests of one period are summed together all the same (``digests`` is keyed by this)."""
        p = int(self.config.period * 1e9)
        return (end_ns + p // 2) // p * p

    def publish(self, digest: mesh_pb2.Digest, max_bytes: int = 8192) -> mesh_pb2.SignedDigest:
        """Stamp, bound and sign this node's digest of a period, hold it and push it to the site's aggregators."""
        d = mesh_pb2.Digest()
        d.CopyFrom(digest)
        d.version = DIGEST_VERSION
        d.node_id = self.node_id
        d.prev_seq = self._seq
        self._seq = max(self._seq + 1, self._sched.wall_ns() // 1_000_000)
        d.seq = self._seq
        d = bound_digest(d, max_bytes)
        signed = sign_digest(self.key, d)
        self.offer(signed, d)
        return signed

    def offer(self, signed: mesh_pb2.SignedDigest, d: mesh_pb2.Digest) -> None:
        """Hold this node's signed digest of a period (signed by whoever publishes it, e.g. the node's digest
        exchange) and push it to the site's aggregators."""
        self.digests.setdefault(self.period_of(d.period_end_ns), {})[self.node_id] = (signed, d)
        self.counters["digests_published"] += 1
        for agg in self.site_aggregators():
            if agg == self.node_id:
                continue
            addr = self._addr_of(SITE, agg)
            if addr is not None:
                self.counters["digests_pushed"] += 1
                self._request(SITE, addr, mesh_pb2.SiteRequest(push=signed), lambda _a: None)

    def period_closed(self, period_end_ns: int) -> None:
        """Schedule this period's work: site build, validation pulls, region build. Called at the period end
        (the daemon's export tick; the simulator's)."""
        later = self._sched.call_later
        later(self.config.settle, lambda: self._build_site(period_end_ns))
        later(self.config.settle, lambda: self._pull_validated(period_end_ns))
        later(self.config.region_settle, lambda: self._build_region(period_end_ns))
        later(self.config.settle, self._upper_pools)
        later(self.config.repair_after, lambda: self._repair(period_end_ns))
        self._prune(period_end_ns)

    def _prune(self, period_end_ns: int) -> None:
        horizon = period_end_ns - int(self.config.keep_periods * self.config.period * 1e9)
        for p in [p for p in self.digests if p <= horizon]:
            del self.digests[p]
        for k in [k for k in self.candidates if k[2] <= horizon]:
            del self.candidates[k]
        for k in [k for k in self.decided if k[2] <= horizon]:
            del self.decided[k]
        for e in [e for e in self.evidence if e[2] <= horizon]:
            del self.evidence[e]

    def _stale(self, period_end_ns: int) -> bool:
        horizon = self.period_end_ns() - int(self.config.keep_periods * self.config.period * 1e9)
        return period_end_ns <= horizon

    # ------------------------------------------------------------------ upper pools

    def _upper_pools(self) -> None:
        """Join the region and fleet pools when elected in the site; leave them when no longer."""
        elected = self.is_site_aggregator()
        for role in (REGION, "fleet"):
            pool = self.pools[role]
            running = pool.membership is not None and pool.membership._running
            if elected and not running and self.make_upper is not None:
                m = self.make_upper(role)
                pool.membership = m
                m.start()
                seeds = self.upper_seeds(role) if self.upper_seeds is not None else []
                m.join([s for s in seeds if s != m.address])
                self.counters[f"{role}_pool_joined"] += 1
            elif not elected and running and pool.membership is not None:
                m = pool.membership

                def stop(m: Membership = m) -> None:
                    m.shutdown()

                m.leave(stop)
                self._sched.call_later(5.0, stop)
                self.counters[f"{role}_pool_left"] += 1

    # ------------------------------------------------------------------ building

    def _build_site(self, period_end_ns: int) -> None:
        if not self.is_site_aggregator():
            return
        live = set(self._live(SITE))
        held = self.digests.get(period_end_ns, {})
        sources = [digest_source(d) for nid, (_s, d) in held.items() if nid in live][: self.config.max_sources]
        if not sources:
            return
        agg = build_aggregate(SITE, self.site, self.node_id, period_end_ns, sources, self.config.max_bytes)
        self._own_candidate(agg)

    def _build_region(self, period_end_ns: int) -> None:
        if not self.is_region_aggregator():
            return
        sources = [aggregate_source(c.agg) for (lvl, grp, p), c in self.decided.items()
                   if lvl == SITE and p == period_end_ns and grp.split("/")[0] == self.region]
        if not sources:
            return
        agg = build_aggregate(REGION, self.region, self.node_id, period_end_ns, sources, self.config.max_bytes)
        self._own_candidate(agg)

    def _own_candidate(self, agg: mesh_pb2.GroupAggregate) -> None:
        signed = sign_aggregate(self.key, agg)
        self.counters[f"{agg.level}_aggregates_built"] += 1
        self._hold(signed, stripped(agg), "", sources=list(agg.sources))

    # ------------------------------------------------------------------ receiving

    def _relevant(self, role: str, level: str, group: str, decided: bool) -> bool:
        """Which pool carries what: candidates of the level the pool checks, and decided region aggregates
        into the site pool."""
        if role == SITE:
            return (level == SITE and group == self.site and not decided) or (level == REGION and decided)
        if role == REGION:
            return level == SITE and group.split("/")[0] == self.region and not decided
        return level == REGION and not decided

    def _on_announce(self, pool: _Pool, source_addr: str, payload: bytes) -> None:
        try:
            ref = mesh_pb2.AggregateRef.FromString(payload)
        except DecodeError:
            self.counters["announces_malformed"] += 1
            return
        if ref.level not in _LEVELS or len(ref.group) > _MAX_GROUP or len(ref.signer) > 64:
            self.counters["announces_malformed"] += 1
            return
        decided = not ref.signer
        if not self._relevant(pool.role, ref.level, ref.group, decided) or self._stale(ref.period_end_ns):
            return
        key = (ref.level, ref.group, ref.period_end_ns)
        if ref.signer in self.flagged:
            return
        if decided:
            if key in self.decided:
                return
        elif ref.signer in self.candidates.get(key, {}):
            return
        if (pool.role, ref.SerializeToString()) in self._pulling:
            return
        self._pull_items(pool.role, source_addr, [ref])

    def _pull_items(self, role: str, addr: str, refs: list[mesh_pb2.AggregateRef],
                    then: Callable[[], None] | None = None) -> None:
        refs = refs[: self.config.max_pull]
        keys = [(role, r.SerializeToString()) for r in refs]
        pulling = self._pulling
        pulling.update(keys)
        self.counters["pulls"] += 1

        def reply(items: mesh_pb2.SiteItems | None) -> None:
            pulling.difference_update(keys)
            if items is not None:
                self._ingest(role, addr, items)
            if then is not None:
                then()

        self._request(role, addr, mesh_pb2.SiteRequest(pull=mesh_pb2.SiteItems(refs=refs)), reply)

    def _ingest(self, role: str, addr: str, items: mesh_pb2.SiteItems) -> None:
        for signed in items.aggregates[: self.config.max_pull]:
            try:
                a = verify_aggregate(signed, self.config, self._sched.wall_ns(), self._check)
            except DigestRejected as exc:
                self.counters[f"aggregates_{exc.reason}"] += 1
                log.warning("aggregate from %s dropped: %s", addr, exc)
                continue
            self._hold(signed, a, addr, pulled_in=role)
        for signed in items.digests[: self.config.max_pull]:
            try:
                d = verify_digest(signed, 8192, self._sched.wall_ns(), self._check)
            except DigestRejected as exc:
                self.counters[f"digests_{exc.reason}"] += 1
                continue
            self._hold_digest(signed, d, addr)

    def _hold_digest(self, signed: mesh_pb2.SignedDigest, d: mesh_pb2.Digest, source: str = "") -> bool:
        if self._stale(d.period_end_ns):
            self.counters["digests_stale"] += 1
            return False
        per = self.digests.setdefault(self.period_of(d.period_end_ns), {})
        have = per.get(d.node_id)
        if have is not None:
            if have[1].seq != d.seq:  # two digests of one period: keep the first, count the equivocation
                self.counters["digests_duplicate_period"] += 1
            return False
        if len(per) >= self.config.max_sources:
            self.counters["digests_refused_full"] += 1
            return False
        per[d.node_id] = (signed, d)
        if self.on_digest is not None and d.node_id != self.node_id:
            try:
                self.on_digest(signed, source)
            except Exception:
                log.exception("on_digest callback failed")
        return True

    def _hold(self, signed: mesh_pb2.SignedDigest, a: mesh_pb2.GroupAggregate, addr: str,
              pulled_in: str = "", sources: list[mesh_pb2.AggregateRef] | None = None) -> None:
        key = (a.level, a.group, a.period_end_ns)
        if a.aggregator in self.flagged:
            self.counters["aggregates_from_flagged"] += 1
            return
        if self._stale(a.period_end_ns):
            self.counters["aggregates_stale"] += 1
            return
        if pulled_in == SITE and a.level == REGION:  # a decided region aggregate, from the site pool
            if key not in self.decided:
                self.decided[key] = _Candidate(signed, a, addr)
                self.counters["region_aggregates_received"] += 1
                self._announce(SITE, a, decided=True)
                self._decided(a)
            return
        cands = self.candidates.setdefault(key, {})
        have = cands.get(a.aggregator)
        if have is not None:
            if have.signed.payload != signed.payload:
                self._flag(a.aggregator, "signed two aggregates of one group and period")
            else:
                self.counters["aggregates_duplicate"] += 1
            return
        if len(cands) >= 2 * self.config.aggregators + 2:
            self.counters["aggregates_refused_too_many"] += 1
            return
        cands[a.aggregator] = _Candidate(signed, a, addr, sources)
        for role in POOLS:
            if self._relevant(role, a.level, a.group, decided=False):
                self._announce(role, a, decided=False)
        if key in self.decided:
            if content(a) != content(self.decided[key].agg):
                self.decide(key, recheck=True)  # a late candidate that disagrees with the one taken: check both
            return
        if len(cands) >= self.config.aggregators:
            self.decide(key)
        elif key not in self._decide_timers:
            self._decide_timers.add(key)
            self._sched.call_later(self.config.decide_after, lambda: self.decide(key))

    def _announce(self, role: str, a: mesh_pb2.GroupAggregate, decided: bool) -> None:
        pool = self.pools[role]
        if pool.membership is None or not pool.membership._running:
            return
        ref = mesh_pb2.AggregateRef(level=a.level, group=a.group, period_end_ns=a.period_end_ns,
                                    signer="" if decided else a.aggregator)
        pool.queue.queue(f"{a.level}|{a.group}|{a.period_end_ns}|{ref.signer}", ref.SerializeToString())

    def _flag(self, aggregator: str, reason: str) -> None:
        if aggregator == self.node_id:
            return
        if aggregator not in self.flagged:
            self.flagged[aggregator] = reason
            self.counters["aggregators_flagged"] += 1
            log.warning("aggregator %s flagged: %s", aggregator, reason)
        for key, cands in self.candidates.items():
            c = cands.pop(aggregator, None)
            if c is not None:  # still served: the signed lie and its sources let every other member check it
                self.evidence[(*key, aggregator)] = c

    # ------------------------------------------------------------------ deciding

    def decide(self, key: GroupKey, recheck: bool = False) -> None:
        """Accept one candidate of ``key``: at once when all agree; after recomputing each from its signed
        sources when they differ (those that do not equal their recomputation are flagged). ``recheck``: a
        candidate arrived after the decision and differs from it; both are recomputed, and the decision
        changes if the one taken was the lie."""
        self._decide_timers.discard(key)
        if (key in self.decided and not recheck) or key in self._deciding:
            return
        cands = [c for c in self.candidates.get(key, {}).values() if c.agg.aggregator not in self.flagged]
        taken = self.decided.get(key)
        if taken is not None and all(c.agg.aggregator != taken.agg.aggregator for c in cands):
            cands.append(taken)
        if not cands:
            return
        if len({content(c.agg) for c in cands}) == 1:
            self._accept(key, cands)
            return
        self.counters["aggregates_disagreeing"] += 1
        self._deciding.add(key)
        role = SITE if key[0] == SITE and key[1] == self.site else (REGION if key[0] == SITE else "fleet")
        lists = [c for c in cands if c.sources is None]
        pending = len(lists)
        if not pending:
            self._fetch_sources(role, key, cands)
            return

        def listed() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                self._fetch_sources(role, key, cands)

        for c in lists:
            self._ask_sources(role, c, listed)

    def _sources_holders(self, role: str, c: _Candidate) -> list[str]:
        """Where a candidate's source list and sources are: its aggregator first, then whoever relayed it."""
        out = [a for a in (self._addr_of(role, c.agg.aggregator), c.addr) if a]
        return list(dict.fromkeys(out))

    def _ask_sources(self, role: str, c: _Candidate, done: Callable[[], None]) -> None:
        a = c.agg
        ref = mesh_pb2.AggregateRef(level=a.level, group=a.group, signer=a.aggregator, period_end_ns=a.period_end_ns)

        holders = self._sources_holders(role, c)

        def ask(i: int) -> None:
            def reply(items: mesh_pb2.SiteItems | None) -> None:
                if items is not None and items.refs:
                    try:
                        check_sources(a, items.refs, self.config)
                        c.sources = list(items.refs)
                    except DigestRejected as exc:
                        self.counters[f"sources_{exc.reason}"] += 1
                        log.warning("source list of %s's %s aggregate from %s dropped: %s", a.aggregator, a.group,
                                    holders[i], exc)
                if c.sources is None and i + 1 < len(holders):
                    ask(i + 1)
                else:
                    done()

            self._request(role, holders[i], mesh_pb2.SiteRequest(sources_of=ref), reply)

        if holders:
            ask(0)
        else:
            done()

    def _fetch_sources(self, role: str, key: GroupKey, cands: list[_Candidate]) -> None:
        missing: dict[str, list[mesh_pb2.AggregateRef]] = {}
        for c in cands:
            want = [r for r in c.sources or () if self._source(r) is None]
            holders = self._sources_holders(role, c)
            if want and holders:
                missing.setdefault(holders[0], []).extend(want)
        pending = sum(1 for addr in missing if addr)
        if not pending:
            self._verify(key, cands)
            return

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                self._verify(key, cands)

        for addr, refs in missing.items():
            if addr:
                self._pull_sources(role, addr, refs, one_done)

    def _pull_sources(self, role: str, addr: str, refs: list[mesh_pb2.AggregateRef], done: Callable[[], None]) -> None:
        chunks = [refs[i:i + self.config.max_pull] for i in range(0, len(refs), self.config.max_pull)]
        left = len(chunks)

        def chunk_done() -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done()

        for chunk in chunks:
            self._pull_items(role, addr, chunk, chunk_done)

    def _source(self, r: mesh_pb2.AggregateRef) -> Source | None:
        if r.level == HOST:
            held = self.digests.get(self.period_of(r.period_end_ns), {}).get(r.signer)
            return digest_source(held[1]) if held is not None and held[1].seq == r.seq else None
        c = self.candidates.get((r.level, r.group, r.period_end_ns), {}).get(r.signer)
        if c is None:
            d = self.decided.get((r.level, r.group, r.period_end_ns))
            c = d if d is not None and d.agg.aggregator == r.signer else None
        return aggregate_source(c.agg) if c is not None else None

    def _verify(self, key: GroupKey, cands: list[_Candidate]) -> None:
        self._deciding.discard(key)
        good = []
        for c in cands:
            srcs = [self._source(r) for r in c.sources] if c.sources is not None else [None]
            if any(s is None for s in srcs):
                self.counters["aggregates_unverifiable"] += 1
                continue
            again = build_aggregate(c.agg.level, c.agg.group, c.agg.aggregator, c.agg.period_end_ns,
                                    [s for s in srcs if s is not None], self.config.max_bytes)
            if stripped(again).SerializeToString(deterministic=True) == c.signed.payload:
                good.append(c)
            else:
                self._flag(c.agg.aggregator, f"{c.agg.level} aggregate of {c.agg.group} does not equal the sum of "
                           "its sources")
        if good:
            self._accept(key, good)
        elif key not in self.decided or self.decided[key].agg.aggregator in self.flagged:
            self.decided.pop(key, None)
            self.counters["aggregates_undecided"] += 1

    def _accept(self, key: GroupKey, cands: list[_Candidate]) -> None:
        best = max(cands, key=lambda c: (c.agg.hosts, [-b for b in election_rank(c.agg.aggregator)]))
        taken = self.decided.get(key)
        if taken is not None and taken.agg.aggregator not in self.flagged:
            return  # a recheck that found the decision sound keeps it (no second announcement)
        self.decided[key] = best
        self.counters[f"{key[0]}_aggregates_decided"] += 1
        if key[0] == REGION and self.pools[SITE].membership is not None:
            self._announce(SITE, best.agg, decided=True)
        self._decided(best.agg)

    def _decided(self, a: mesh_pb2.GroupAggregate) -> None:
        if self.on_decide is not None:
            try:
                self.on_decide(a)
            except Exception:
                log.exception("on_decide callback failed")

    # ------------------------------------------------------------------ fleet queries

    def newest_signed(self) -> list[mesh_pb2.SignedDigest]:
        """The signed site and region aggregates decided here, the newest of each group (what a member of
        this site asks of its aggregator to answer a fleet query without the other sites' digests), at most
        64."""
        newest: dict[tuple[str, str], tuple[int, _Candidate]] = {}
        for (lvl, group, end), c in self.decided.items():  # per group: groups decide at different moments
            if newest.get((lvl, group), (-1, c))[0] < end:
                newest[(lvl, group)] = (end, c)
        return [c.signed for _k, (_e, c) in sorted(newest.items())][:64]

    def _newest_site(self, group: str, since_ns: int) -> _Candidate | None:
        best: _Candidate | None = None
        for (lvl, grp, end), c in self.decided.items():
            if lvl == SITE and grp == group and end >= since_ns and (best is None or end > best.agg.period_end_ns):
                best = c
        return best

    def ask_site_members(self, group: str, since_ns: int, done: Callable[[], None]) -> bool:
        """Ask the holders of the newest site aggregate of ``group`` decided here (its aggregator, whoever
        passed it on) for its source list when it is not held, checked against its commitment on arrival;
        ``done`` is called once answered or failed. False when there is nothing to ask (no aggregate, its
        list held, or no holder known)."""
        best = self._newest_site(group, since_ns)
        region = self.pools[REGION].membership
        if best is None or best.sources is not None or region is None or not region._running:
            return False
        if not self._sources_holders(REGION, best):
            return False
        self.counters["site_members_asked"] += 1
        self._ask_sources(REGION, best, done)
        return True

    def site_members(self, group: str, since_ns: int = 0
                     ) -> tuple[mesh_pb2.GroupAggregate, frozenset[str] | None] | None:
        """The newest site aggregate of ``group`` decided here (period ending at ``since_ns`` or later), and
        the members it names when its source list is held here (checked against its commitment when it was
        taken): what this node knows of another site's membership without asking the site. None when no
        such aggregate is held (site aggregates of this node's region reach its region's aggregators only)."""
        best = self._newest_site(group, since_ns)
        if best is None:
            return None
        key = (SITE, group, best.agg.period_end_ns)
        listed = best.sources
        if listed is None:  # an agreeing candidate (same sources: same commitment) whose list is held
            same = content(best.agg)
            listed = next((c.sources for c in self.candidates.get(key, {}).values()
                           if c.sources is not None and content(c.agg) == same), None)
        if listed is None or sources_sha256(listed) != best.agg.sources_sha256:
            return best.agg, None
        return best.agg, frozenset(r.signer for r in listed if r.level == HOST)

    # ------------------------------------------------------------------ anti-entropy

    def _held_refs(self, role: str) -> mesh_pb2.SiteItems:
        """What this node holds that pool ``role`` carries (a push-pull's part): a peer pulls what it lacks."""
        out = mesh_pb2.SiteItems()
        for level, group, end in self.decided:
            if self._relevant(role, level, group, decided=True):
                out.refs.add(level=level, group=group, period_end_ns=end)
        for (level, group, end), cands in self.candidates.items():
            if self._relevant(role, level, group, decided=False):
                out.refs.extend(mesh_pb2.AggregateRef(level=level, group=group, period_end_ns=end, signer=s)
                                for s in cands)
        del out.refs[self.config.max_pull:]
        return out

    def _merge_refs(self, pool: _Pool, source_addr: str, payload: bytes) -> None:
        try:
            items = mesh_pb2.SiteItems.FromString(payload)
        except DecodeError:
            self.counters["states_malformed"] += 1
            return
        for r in items.refs[: self.config.max_pull]:
            self._on_announce(pool, source_addr, r.SerializeToString())

    def _repair(self, period_end_ns: int) -> None:
        """Pull from a site aggregator the region aggregates of this period still missing here (the regions
        decided the period before): the announcement's epidemic misses a member now and then under loss."""
        if self.is_site_aggregator():
            return
        prev = period_end_ns - int(self.config.period * 1e9)
        regions = {g for (lvl, g, end) in self.decided if lvl == REGION and end == prev}
        missing = [g for g in sorted(regions) if (REGION, g, period_end_ns) not in self.decided]
        if not missing:
            return
        aggs = [a for a in (self._addr_of(SITE, x) for x in self.site_aggregators()) if a]
        if not aggs:
            return
        self.counters["region_aggregates_repair_asked"] += len(missing)
        refs = [mesh_pb2.AggregateRef(level=REGION, group=g, period_end_ns=period_end_ns) for g in missing]
        self._pull_items(SITE, aggs[0], refs)

    # ------------------------------------------------------------------ validation pulls

    def _pull_validated(self, period_end_ns: int) -> None:
        held = self.digests.get(period_end_ns, {})
        for nid, addr in self.validate.items():
            if nid in held:
                continue
            ref = mesh_pb2.AggregateRef(level=HOST, signer=nid, period_end_ns=period_end_ns)
            self.counters["validation_pulls"] += 1
            self._pull_items(SITE, addr, [ref])

    # ------------------------------------------------------------------ serving

    def _on_request(self, pool: _Pool, source_addr: str, payload: bytes) -> bytes:
        try:
            req = mesh_pb2.SiteRequest.FromString(payload)
        except DecodeError as exc:
            self.counters["requests_malformed"] += 1
            raise PeerError(f"malformed site request from {source_addr}") from exc
        body = req.WhichOneof("body")
        if body == "push":
            self._on_push(pool, source_addr, req.push)
            return b""
        if body == "sources_of":
            r = req.sources_of
            key = (r.level, r.group, r.period_end_ns)
            c = self.candidates.get(key, {}).get(r.signer)
            if c is None:
                d = self.decided.get(key)
                c = d if d is not None and d.agg.aggregator == r.signer else self.evidence.get((*key, r.signer))
            return mesh_pb2.SiteItems(refs=c.sources if c is not None and c.sources else []).SerializeToString()
        if body == "locate":
            if len(req.locate) > _MAX_GROUP:
                self.counters["requests_malformed"] += 1
                raise PeerError(f"locate from {source_addr} names a site of {len(req.locate)} bytes")
            self.counters["locates_answered"] += 1
            answer = self.locate_answer(req.locate)
            self._remember(req.asker)
            return answer.SerializeToString()
        if body == "pull":
            if len(req.pull.refs) > self.config.max_pull:
                self.counters["pulls_oversize"] += 1
                raise PeerError(f"pull from {source_addr} names {len(req.pull.refs)} items (max "
                                f"{self.config.max_pull})")
            return self._answer(req.pull.refs).SerializeToString()
        self.counters["requests_malformed"] += 1
        raise PeerError(f"empty site request from {source_addr}")

    def _on_push(self, pool: _Pool, source_addr: str, signed: mesh_pb2.SignedDigest) -> None:
        try:
            d = verify_digest(signed, 8192, self._sched.wall_ns(), self._check)
        except DigestRejected as exc:
            self.counters[f"digests_{exc.reason}"] += 1
            log.warning("digest pushed by %s dropped: %s", source_addr, exc)
            return
        m = pool.membership
        if pool.role != SITE or m is None or m.member(d.node_id) is None:
            self.counters["digests_not_site_member"] += 1
            return
        if self._hold_digest(signed, d, source_addr):
            self.counters["digests_received"] += 1

    def _answer(self, refs: Iterable[mesh_pb2.AggregateRef]) -> mesh_pb2.SiteItems:
        out = mesh_pb2.SiteItems()
        for r in refs:
            if r.level == HOST:
                held = self.digests.get(self.period_of(r.period_end_ns), {}).get(r.signer)
                if held is not None and (not r.seq or held[1].seq == r.seq):
                    out.digests.append(held[0])
                continue
            key = (r.level, r.group, r.period_end_ns)
            c = self.decided.get(key) if not r.signer else self.candidates.get(key, {}).get(r.signer)
            if c is None and r.signer:
                d = self.decided.get(key)
                c = d if d is not None and d.agg.aggregator == r.signer else self.evidence.get((*key, r.signer))
            if c is not None:
                out.aggregates.append(c.signed)
        return out

    # ------------------------------------------------------------------ finding sites

    def locate_answer(self, site: str) -> mesh_pb2.SiteItems:
        """Where the members of ``site`` are, as far as this node knows: the ones it lists (its own site's
        members, or the aggregators of ``site`` in its upper pools), and the fleet pool's members (every
        site's aggregators; its own site's aggregators when it is not in the fleet pool), each bounded."""
        out = mesh_pb2.SiteItems()
        seen: set[str] = set()
        for role in POOLS:
            for x in self._listed(role):
                if len(out.members) >= self.config.max_pull:
                    break
                if x.node_id not in seen and site_group(x.labels) == site:
                    seen.add(x.node_id)
                    out.members.append(_entry(x))
        for e in reversed(self.located.values()):
            if len(out.members) >= self.config.max_pull:
                break
            if e.node not in seen and site_group(e.labels) == site:
                seen.add(e.node)
                out.members.append(e)
        fleet = self._listed("fleet")
        if not fleet:
            aggs = set(self.site_aggregators())
            fleet = [x for x in self._listed(SITE) if x.node_id in aggs]
        out.aggregators.extend(_entry(x) for x in fleet[: self.config.max_pull])
        return out

    def _remember(self, e: mesh_pb2.PushPullMember) -> None:
        """Keep a locate's asker (bounded, least recently asked dropped) for later askers of its site."""
        if not e.node or len(e.node) > 64 or not e.addr or len(e.addr) > 256 or len(e.labels) > 32:
            return
        if any(len(k) > 256 or len(v) > 256 for k, v in e.labels.items()):
            return
        self.located.pop(e.node, None)
        self.located[e.node] = e
        while len(self.located) > self.config.max_sources:
            self.located.popitem(last=False)
            self.counters["located_evicted"] += 1

    def _listed(self, role: str) -> list[Member]:
        """The alive (or suspect) members of pool ``role``, this node included, lowest election rank first."""
        m = self.pools[role].membership
        if m is None or not m._running:
            return []
        live = [x for x in m._members.values() if x.state in (State.ALIVE, State.SUSPECT)]
        return sorted(live, key=lambda x: election_rank(x.node_id))


def _entry(x: Member) -> mesh_pb2.PushPullMember:
    e = mesh_pb2.PushPullMember(node=x.node_id, addr=x.addr, incarnation=x.incarnation, labels=x.labels,
                                public_key=x.public_key, signature=x.signature)
    e.state = x.state.value  # type: ignore[assignment]
    return e
