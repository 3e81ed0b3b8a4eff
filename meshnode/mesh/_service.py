"""The mesh as a service of the node: membership + digests over gRPC, and the ``Mesh`` servicer.

The daemon owns the grpc.aio server and the event loop; the mesh registers its servicer on that server
and runs on that loop::

    mesh = MeshService(advertise="10.0.0.5:7946", key=NodeKey.load_or_create(path),
                       labels={"region": "eu", "site": "ams1", "host": "web-1"},
                       seeds=["10.0.0.2:7946"], source=node_digests)
    mesh.register(server)          # before server.start(); with meshnode.api:
                                   #   api.add_servicer(mesh.register, MESH_SERVICE)
    await server.start()
    await mesh.start()             # joins through the seeds, starts probing and publishing

``advertise`` may be assigned until ``start`` (e.g. once the API server knows its port); it must be an
address peers can reach, not ``0.0.0.0``.
    ...
    await mesh.stop()              # graceful leave, then shutdown

``source`` is anything with ``local_digest() -> meshnode.v1.Digest | None`` (the node's latest rollups);
the service stamps, bounds, signs and publishes it every ``export_period`` seconds, or whenever the
daemon calls ``await mesh.publish()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import grpc
from google.protobuf.message import DecodeError

from meshnode._exceptions import ConfigError, PeerError, StoreError
from meshnode.mesh._accounts import Ledger
from meshnode.mesh._aggregate import (
    DEFAULT_LABEL_ORDER,
    FLEET,
    MISSING_LABEL,
    group_of,
    host_reports,
    matches,
    trusted_aggregate,
)
from meshnode.mesh._clock import AsyncioScheduler
from meshnode.mesh._config import MeshConfig
from meshnode.mesh._digest import (
    DigestConfig,
    DigestExchange,
    DigestRejected,
    NodeKey,
    PeriodLike,
    digest_from_period,
    members_only,
    verify_digest,
)
from meshnode.mesh._fleetflows import (
    CHALLENGE_BYTES,
    EMPTY_REST,
    LEFT_SITE,
    MALFORMED_ANSWER,
    MAX_FAN_OUTS,
    MAX_LOCAL_ANSWERS,
    MAX_MEMBERS,
    MAX_ROWS_PER_MEMBER,
    MAX_VIEW_AGE_NS,
    NOT_REPORTED,
    UNTRUSTED_ANSWER,
    Answer,
    FleetRefused,
    Key,
    SiteView,
    answer_signed_by,
    check_member,
    check_request,
    decode_token,
    encode_token,
    member_after,
    member_request,
    merge,
    relay_accounted,
    relay_members,
    share,
    sign_answer,
    unreported,
)
from meshnode.mesh._grpc_transport import MAX_POOL, GrpcTransport, with_retries
from meshnode.mesh._identity import (
    PEER,
    IdentityGuard,
    PeerCertificate,
    alive_signed_by_member,
    audience_metadata,
    sign_alive,
    sign_leave,
    tls_peer,
)
from meshnode.mesh._measurements import MAX_MEASUREMENTS_LISTED, HeldMeasurements, MeasurementStore
from meshnode.mesh._mux import SITE_TAG, DelegateMux
from meshnode.mesh._pathprobe import trace_path
from meshnode.mesh._sites import (
    REGION,
    SITE,
    SiteConfig,
    SiteNode,
    aggregate_rows,
    aggregate_selected,
    build_aggregate,
    digest_source,
    group_sums,
    only_service,
    site_group,
    verify_aggregate,
)
from meshnode.mesh._state import Delegate, Member, Membership, State
from meshnode.mesh._tasks import (
    MEMBER_CALLER,
    TaskPolicy,
    TaskRefused,
    TokenBucket,
    bounded,
    bounded_hops,
    measure_tcp,
    split_target,
)
from meshnode.store import StoreTimeout
from meshnode.summary import format_destination
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from meshnode._model import FlowRecord
    from meshnode.mesh._aggregate import Aggregate
    from meshnode.v1 import observer_pb2

log = logging.getLogger(__name__)

DEFAULT_QUERY_DEADLINE_MS = 2000

DEAD_MEMBER_BUDGET = 0.5
"""Seconds a fleet query gives a member it holds dead (not left): a node overloaded for a while is declared
dead while it still serves, and its answer is as good as any (signed, verified); a truly dead one costs the
query at most this long, in parallel with the rest (bench/RESULTS.md, "Fleet query latency")."""

REJOIN_FIRST = 0.5
"""Seconds before the first retry of seeds that did not answer; each further retry waits twice as long, up to
``MeshService.rejoin_interval``."""

RELAY_DEADLINE_SHARE = 0.8
"""The part of what is left of a fleet flow query's deadline a site relay gets for its own fan-out: the rest
carries its answer back (a relay that used it all would answer just after the asking node stopped waiting)."""
LISTING_WAIT: Final = 1.0
"""Seconds a fleet flow query waits, after a site's relay answered, for that site's aggregate's source list
(asked when the relay was): past it, the relay's answer is checked against the aggregate's count only."""

QUERY_CONCURRENCY = 64
"""Calls in flight per fleet query: bounds the burst of calls and verifications on the querying node's loop
in a large fleet; at N = 100, 64 is as fast as no bound and 16 is twice as slow (bench/RESULTS.md, "Fleet
query latency")."""

MAX_FROM_ADDR = 256
"""The longest ``from_addr`` of a Packet or Stream call (a ``host:port``); longer calls are refused as oversize."""

MESH_SERVICE: Final = mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name
"""``"meshnode.v1.Mesh"``, for health checking and reflection (``ApiServer.add_servicer``)."""


class LocalDigestSource(Protocol):
    """What the node supplies: its latest local rollups as an unsigned digest."""

    def local_digest(self) -> mesh_pb2.Digest | None:
        """The digest of the last closed export period (by_destination, endpoints, period), or None.

        Must not block. ``node_id``, ``version``, ``seq`` and (when empty) ``labels`` are set by the mesh.
        """


class LocalHistory(Protocol):
    """What the node supplies for fleet flow queries: its own stored records (``meshnode.api.StoreHistory``)."""

    def check(self, flows: observer_pb2.FlowsRequest) -> object:
        """Validate the query's filters and times as ``Observer.Flows`` does (same limits).

        Raises:
            ValueError: naming the field (answered INVALID_ARGUMENT).
        """

    async def local_flows(
        self, flows: observer_pb2.FlowsRequest, after: Key | None, limit: int, deadline_s: float
    ) -> tuple[list[flow_pb2.Flow], list[mesh_pb2.FleetFlowKey], bool]:
        """Up to ``limit`` records of ``flows`` after store key ``after``, in store order, their keys, and
        whether more match. Raises ``ValueError`` (bad request), ``meshnode.store.StoreTimeout`` (past the
        deadline) or ``meshnode.StoreError`` (the store cannot be read)."""


def _aggregate_to_proto(a: Aggregate, hosts_excluded: int = 0) -> mesh_pb2.HealthAggregate:
    return mesh_pb2.HealthAggregate(
        group=a.group, destination=a.destination, hosts=a.hosts, attempts=a.attempts, useful=a.useful,
        useful_fraction_median=a.useful_fraction if a.useful_fraction is not None else 0.0,
        failures=a.failures, rtt_p50_us_median=round(a.rtt_p50_us or 0),
        rtt_p95_us_median=round(a.rtt_p95_us or 0), retransmits=a.retransmits,
        newest_age_ms=round(a.newest_age_s * 1000), oldest_age_ms=round(a.oldest_age_s * 1000),
        hosts_excluded=hosts_excluded, hosts_clamped=a.hosts_clamped, hosts_trimmed=a.hosts_trimmed,
        attempts_per_s=a.attempts_per_s or 0.0, bytes_tx_per_s=a.bytes_tx_per_s or 0.0,
        bytes_rx_per_s=a.bytes_rx_per_s or 0.0, retransmits_per_s=a.retransmits_per_s or 0.0,
        failure_fraction_median=a.failure_fraction,
    )


class MeshService:
    """One node's mesh: membership, digest exchange, gRPC transport and the ``Mesh`` servicer.

    A ``meshnode.daemon.Service`` (``name``, ``async start()``, ``async stop()``).

    Args:
        advertise: this node's ``host:port`` as peers reach its gRPC server; with ``listen`` and port 0
            (``"10.0.0.5:0"``), the port actually bound is filled in at ``start``.
        listen: serve ``Mesh`` on a gRPC server of its own bound to this ``HOST:PORT`` (started and stopped
            with the service); None when the daemon calls ``register`` on its own server instead.
        key: this node's identity; its fingerprint is the node id.
        labels: this node's labels (region, site, host, ...).
        seeds: addresses to join through.
        source: the node's local digests; None publishes nothing (the node can still ``publish``).
        config: membership parameters.
        digest_config: digest bounds.
        export_period: seconds between two automatic publications; 0 turns them off.
        label_order: the aggregation label order.
        rng: randomness (seed it in tests).
        rejoin_interval: while this node knows no other member, retry the seeds this often (0: never).
        task_policy: whether this node runs active tasks (and path probes), and for whom.
        task_bucket: the rate limit on active tasks' connects (all requesters together).
        ledger: the accounts and per-requester quotas (``meshnode.mesh._accounts``).
    """

    name = "mesh"

    def __init__(
        self,
        *,
        advertise: str,
        key: NodeKey,
        listen: str | None = None,
        labels: Mapping[str, str] | None = None,
        seeds: Sequence[str] = (),
        source: LocalDigestSource | None = None,
        config: MeshConfig | None = None,
        digest_config: DigestConfig | None = None,
        export_period: float = 60.0,
        label_order: Sequence[str] = DEFAULT_LABEL_ORDER,
        rng: random.Random | None = None,
        rejoin_interval: float = 10.0,
        task_policy: TaskPolicy | None = None,
        task_bucket: TokenBucket | None = None,
        ledger: Ledger | None = None,
        site_config: SiteConfig | None = None,
    ) -> None:
        self.key = key
        self.node_id = key.node_id
        self.advertise = advertise
        self.labels = dict(labels or {})
        self.seeds = [s for s in seeds if s]
        self.source = source
        self.config = config or MeshConfig()
        self.digest_config = digest_config or DigestConfig()
        self.export_period = export_period
        self.label_order = tuple(label_order)
        self._rng = rng or random.Random()
        self.counters: Counter[str] = Counter()
        self.listen = listen
        self.task_policy = task_policy or TaskPolicy()
        self.task_bucket = task_bucket or TokenBucket(rate=5.0, burst=50.0)
        """Connect attempts for active tasks: 5 per second sustained, bursts of 50 (seed 003 accounting)."""
        self._measurements: list[mesh_pb2.MeasureResponse] = []
        self.ledger = ledger or Ledger()
        """What this node spent on each requester and asked of each peer, with quotas (seed 003)."""
        self.results: MeasurementStore = HeldMeasurements()
        """Where active-task results are kept (the daemon sets the node's store)."""
        self.transport = GrpcTransport(advertise, packet_timeout=max(0.05, self.config.probe_timeout))
        self.servicer = MeshServicer(self)
        self._server: grpc.aio.Server | None = None
        self._membership: Membership | None = None
        self._exchange: DigestExchange | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.rejoin_interval = rejoin_interval
        self.joined = 0
        self.query_concurrency = QUERY_CONCURRENCY
        """Calls a fleet query keeps in flight at once (one per member asked)."""
        self.addresses: Callable[[], Iterable[str]] | None = None
        """This node's own IP addresses, published in each digest so peers map flow ends to members."""
        self.digest_decorators: list[Callable[[mesh_pb2.Digest, PeriodLike, Sequence[FlowRecord]], None]] = []
        """Each adds to the period's digest before it is signed: ``decorate(digest, period, records)``."""
        self.digest_listeners: list[Callable[[mesh_pb2.Digest, mesh_pb2.SignedDigest, bool], None]] = []
        """Called with every accepted peer digest (``own=False``) and each digest this node publishes
        (``own=True``, the bounded digest as signed): ``listener(digest, signed, own)``."""
        self.node_certificates_only = False
        """Under mTLS (set by the daemon): gossip is accepted only from peers presenting a node certificate
        that binds their key, and the identity rules of ``identity`` apply (``meshnode.mesh._identity``)."""
        self.identity = IdentityGuard()
        """Which node ids have called with a certificate binding their key (used under mTLS only)."""
        self.forget_listeners: list[Callable[[list[str]], None]] = []
        """Called with the node ids of members reaped (gone for good): state kept about them can go."""
        self.denied: set[str] = set()
        """Node ids whose digests are dropped (counted ``digests_denied``) even when they are members."""
        self.exclude: Callable[[Iterable[str]], set[str]] | None = None
        """The hosts among the given node ids whose digests fleet aggregates leave out (trust's flagged
        nodes, ``meshnode.trust.TrustMonitor.excluded``); None leaves nobody out. Fleet flow queries do not
        ask them."""
        self.history: LocalHistory | None = None
        """This node's stored flow records, for fleet flow queries (set by the daemon); None: it answers
        members' flow queries with UNIMPLEMENTED."""
        self.max_rows_per_member = MAX_ROWS_PER_MEMBER
        """Records a fleet flow query asks of each member for one page."""
        self.max_members = MAX_MEMBERS
        """Members one fleet flow query may ask from this node."""
        self.max_fan_outs = MAX_FAN_OUTS
        """Fleet flow queries this node fans out at once (more: RESOURCE_EXHAUSTED)."""
        self.max_local_answers = MAX_LOCAL_ANSWERS
        """Members' fleet flow requests this node answers from its store at once (more: RESOURCE_EXHAUSTED)."""
        self._fan_outs = 0
        self._local_answers = 0
        self.site_config = site_config
        """Site aggregates (``meshnode.mesh._sites``): membership and digests stay within this node's site
        (its ``region``/``site`` labels), elected aggregators sum the site each period and carry it across
        regions and the fleet. None: one flat mesh, every digest to every node."""
        self._sites: SiteNode | None = None
        self._site_closed = 0
        self.upper_hints: dict[str, dict[str, str]] = {}
        """Addresses of fleet-pool members (other sites' aggregators) learnt from locate answers, with their
        labels, bounded by ``SiteConfig.max_sources``: where this node joins the region and fleet pools when
        it is elected."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def membership(self) -> Membership:
        """The membership state machine (after ``start``)."""
        if self._membership is None:
            raise RuntimeError("MeshService.start() has not run")
        return self._membership

    @property
    def exchange(self) -> DigestExchange:
        """The digest exchange (after ``start``)."""
        if self._exchange is None:
            raise RuntimeError("MeshService.start() has not run")
        return self._exchange

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._membership is not None

    def register(self, server: grpc.aio.Server) -> None:
        """Add the ``meshnode.v1.Mesh`` servicer to the daemon's server (before it starts)."""
        mesh_pb2_grpc.add_MeshServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]

    async def _serve(self, listen: str) -> None:
        # The largest stream request plus its envelope: gRPC refuses more before any handler runs.
        limit = self.config.max_stream_bytes + 4096
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit)])
        self.register(server)
        try:
            port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise ConfigError(f"mesh listen: cannot bind {listen}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"mesh listen: cannot bind {listen} (address in use or not local?)")
        host, _, adv_port = self.advertise.rpartition(":")
        if adv_port in ("", "0"):
            self.advertise = f"{host or listen.rpartition(':')[0]}:{port}"
            self.transport = GrpcTransport(self.advertise, packet_timeout=self.transport.packet_timeout)
        await server.start()
        self._server = server

    async def start(self) -> None:
        """Start membership on the running loop and join through the seeds (``joined`` says how many answered).

        A node whose seeds all fail still runs (alone), retries them every ``rejoin_interval``, and is
        found when a peer joins through it.

        Raises:
            ConfigError: ``listen`` cannot be bound.
        """
        if self._membership is not None:
            return
        if self.listen is not None and self._server is None:
            await self._serve(self.listen)
        if self.transport.address != self.advertise:  # advertise was set after construction
            self.transport = GrpcTransport(self.advertise, packet_timeout=self.transport.packet_timeout)
        sched = AsyncioScheduler(asyncio.get_running_loop())
        self._exchange = DigestExchange(self.key, sched, self.digest_config)
        self._exchange.on_accept = self._notify
        guard = self.identity if self.node_certificates_only else None
        self._exchange.admit = members_only(lambda: self._membership, lambda: self.denied,
                                            guard.certified if guard is not None else None)
        self._exchange.on_forget = self._forgotten
        delegate: Delegate = self._exchange
        admit_labels: Callable[[Mapping[str, str]], bool] | None = None
        if self.site_config is not None:
            self._sites = SiteNode(self.key, self.labels, sched, self.site_config)
            self._sites.pools[SITE].tag = SITE_TAG
            self._sites.make_upper = functools.partial(self._upper_membership, sched, guard)
            self._sites.upper_seeds = self._upper_seeds
            self._sites.on_digest = self._exchange.ingest
            self._exchange.gossip = False  # digests go to the site's aggregators and to who validates them
            delegate = DelegateMux(self._exchange, self._sites.pools[SITE])
            admit_labels = functools.partial(_same_group, SITE, self.labels)
        self._membership = Membership(
            self.node_id, self.transport, sched, labels=self.labels, config=self.config, rng=self._rng,
            delegate=delegate, sign_alive=functools.partial(sign_alive, self.key),
            sign_leave=functools.partial(sign_leave, self.key), identity=guard, admit_labels=admit_labels,
        )
        self._exchange.attach(self._membership)
        if self._sites is not None:
            self._sites.attach(SITE, self._membership)
        self._membership.start()
        if self.seeds:
            self.joined = await self._join(self._membership)
            log.info("mesh %s joined through %d of %d seeds", self.node_id, self.joined, len(self.seeds))
            if self._sites is not None:
                await self._locate()
        loop = asyncio.get_running_loop()
        if self.source is not None and self.export_period > 0:
            self._tasks.append(loop.create_task(self._publish_loop()))
        if self.seeds and self.rejoin_interval > 0:
            self._tasks.append(loop.create_task(self._rejoin_loop()))

    async def _rejoin_loop(self) -> None:
        """While this node knows nobody else (its seeds were down, or it was partitioned), retry them: soon at
        first, then less often, up to every ``rejoin_interval``. Nodes of a fleet started together come up
        within seconds of each other; a node that found its seed not listening yet stayed alone, and unknown
        to the fleet, for the whole interval (10 s of the 11-15 s a lab node took to be listed everywhere).
        With sites, also ask where the rest of the fleet is again while it is alone in its site or, as a site
        aggregator, alone with its site in the fleet pool (two sites started at once find each other)."""
        backoff = REJOIN_FIRST
        wait = backoff
        while True:
            await asyncio.sleep(min(wait, self.rejoin_interval))
            m = self._membership
            if m is None:
                return
            if m.num_members() > 1:  # joined: looked at again after the full interval
                backoff, wait = REJOIN_FIRST, self.rejoin_interval
            else:
                self.joined = await self._join(m)
                self.counters["rejoins"] += 1
                wait, backoff = backoff, min(2 * backoff, self.rejoin_interval)
            if self._sites is not None and self._lonely():
                await self._locate()
                self._heal_upper()

    # ------------------------------------------------------------------ sites

    @property
    def sites(self) -> SiteNode | None:
        """This node's part of the site hierarchy (after ``start``; None without ``site_config``)."""
        return self._sites

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live member of a pool this node runs (its site; with sites, also the
        region and fleet pools while it is an aggregator): whose signed requests it answers as a member's."""
        pools = [self._membership] if self._sites is None else [
            p.membership for p in self._sites.pools.values() if p.membership is not None and p.membership._running]
        for m in pools:
            x = m.member(node_id) if m is not None else None
            if x is not None and x.state in (State.ALIVE, State.SUSPECT):
                return True
        return False

    def _lonely(self) -> bool:
        """Whether this node should ask where the rest of the fleet is again: it lists nobody in its site,
        or it is a site aggregator whose fleet pool lists no other site (two sites that started at once)."""
        sites = self._sites
        assert sites is not None
        if self.membership.num_members() <= 1:
            return True
        m = sites.pools["fleet"].membership
        if m is None or not m._running:
            return False
        return all(site_group(x.labels) == sites.site for x in m.members())

    def _upper_membership(self, sched: AsyncioScheduler, guard: IdentityGuard | None, role: str) -> Membership:
        """This node's membership of the region or fleet pool (elected in its site): same port, own pool."""
        assert self._sites is not None
        admit = functools.partial(_same_group, REGION, self.labels) if role == REGION else None
        return Membership(self.node_id, self.transport.pool(role), sched, labels=self.labels, config=self.config,
                          rng=random.Random(self._rng.getrandbits(64)), delegate=self._sites.pools[role],
                          sign_alive=functools.partial(sign_alive, self.key),
                          sign_leave=functools.partial(sign_leave, self.key), identity=guard, admit_labels=admit)

    def _upper_seeds(self, role: str) -> list[str]:
        """Where to join an upper pool: the other aggregators of this site (elected before, so in it), then
        the fleet's aggregators learnt from locate answers (of this region, for the region pool)."""
        assert self._sites is not None
        out = [a for a in (self._sites._addr_of(SITE, x) for x in self._sites.site_aggregators()
                           if x != self.node_id) if a]
        for addr, labels in self.upper_hints.items():
            if role == "fleet" or group_of(labels, REGION) == group_of(self.labels, REGION):
                out.append(addr)
        return list(dict.fromkeys(a for a in out if a != self.advertise))

    def _heal_upper(self) -> None:
        """Join the aggregators the locate answers named that this node's upper pools do not list."""
        assert self._sites is not None
        for role in (REGION, "fleet"):
            m = self._sites.pools[role].membership
            if m is None or not m._running:
                continue
            listed = {x.addr for x in m.members()}
            missing = [a for a in self._upper_seeds(role) if a not in listed]
            if missing:
                self.counters[f"{role}_pool_heals"] += 1
                m.join(missing)

    async def _ask_locate(self, addr: str, group: str | None = None) -> mesh_pb2.SiteItems | None:
        m = self._membership
        assert m is not None and self._sites is not None
        done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def reply(raw: bytes | None, err: str) -> None:
            if not done.done():
                done.set_result(raw)

        me = m.member(self.node_id)
        assert me is not None
        asker = mesh_pb2.PushPullMember(node=me.node_id, addr=me.addr, incarnation=me.incarnation,
                                        labels=me.labels, public_key=me.public_key, signature=me.signature)
        req = mesh_pb2.SiteRequest(locate=self._sites.site if group is None else group)
        if group is None:  # asking for its own site: remembered, so that its site's next members find it
            req.asker.CopyFrom(asker)
        m.request(addr, SITE_TAG + req.SerializeToString(), reply)
        raw = await done
        if raw is None:
            self.counters["locates_failed"] += 1
            return None
        try:
            return mesh_pb2.SiteItems.FromString(raw)
        except DecodeError:
            self.counters["locate_answers_malformed"] += 1
            return None

    def _dialable_entry(self, e: mesh_pb2.PushPullMember) -> bool:
        """A located member's address is dialled only when its entry is well formed and, under mTLS, its
        Alive is signed by the member's own key (nobody else names where a member is)."""
        cfg = self.config
        if (not e.node or len(e.node) > 64 or not e.addr or len(e.addr) > MAX_FROM_ADDR
                or len(e.labels) > cfg.max_labels
                or any(len(k) > cfg.max_label_bytes or len(v) > cfg.max_label_bytes for k, v in e.labels.items())):
            self.counters["located_malformed"] += 1
            return False
        if self.node_certificates_only and not alive_signed_by_member(mesh_pb2.Alive(
                node=e.node, incarnation=e.incarnation, addr=e.addr, labels=e.labels, public_key=e.public_key,
                signature=e.signature)):
            self.counters["located_unsigned"] += 1
            return False
        return e.node != self.node_id

    async def _locate(self) -> None:
        """Find this node's site through the seeds (any site's nodes answer), and the fleet's aggregators.

        A seed of another site answers with the members of this node's site it lists (as an aggregator) and
        the aggregators it knows; when it lists none of the site, those aggregators are asked in turn (one
        more round): every site's aggregators are in the fleet pool, so they know where each site is.
        """
        m = self._membership
        sites = self._sites
        if m is None or sites is None:
            return
        asked: set[str] = set()
        ask = [s for s in self.seeds if s != self.advertise]
        found: dict[str, str] = {}
        for _round in range(2):
            ask = [a for a in dict.fromkeys(ask) if a not in asked][: sites.config.max_pull]
            if not ask:
                break
            asked.update(ask)
            answers = await asyncio.gather(*(self._ask_locate(a) for a in ask))
            ask = []
            for items in answers:
                if items is None:
                    continue
                for e in items.members[: sites.config.max_pull]:
                    if self._dialable_entry(e) and site_group(e.labels) == sites.site:
                        found[e.node] = e.addr
                for e in items.aggregators[: sites.config.max_pull]:
                    if not self._dialable_entry(e):
                        continue
                    if e.addr not in self.upper_hints and len(self.upper_hints) >= sites.config.max_sources:
                        self.counters["upper_hints_dropped"] += 1
                        continue
                    self.upper_hints[e.addr] = dict(e.labels)
                    ask.append(e.addr)
            if found:
                break
        new = [addr for nid, addr in found.items() if m.member(nid) is None]
        if new:
            self.counters["site_joins_located"] += 1
            await self._join_addrs(m, new)

    async def _join_addrs(self, m: Membership, addrs: list[str]) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def joined(n: int) -> None:
            if not done.done():
                done.set_result(n)

        m.join(addrs, on_done=joined)
        return await done

    def _site_publish(self, signed: mesh_pb2.SignedDigest) -> None:
        """Hand this node's signed digest to its site's aggregators and close its period in the hierarchy
        (builds, validation pulls and region work are timed from the period's end)."""
        sites = self._sites
        held = self.exchange.latest(self.node_id)
        if sites is None or held is None or held.signed is not signed:
            return
        d = held.digest
        sites.validate = self._validated(d)
        sites.offer(signed, d)
        end = sites.period_of(d.period_end_ns)
        if end > self._site_closed:
            self._site_closed = end
            sites.period_closed(end)

    async def _join(self, m: Membership) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def joined(n: int) -> None:
            if not done.done():
                done.set_result(n)

        m.join(self.seeds, on_done=joined)
        return await done

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception:
                log.exception("publishing the local digest failed")
            await asyncio.sleep(self.export_period)

    async def publish(self, digest: mesh_pb2.Digest | None = None) -> mesh_pb2.SignedDigest | None:
        """Sign and spread ``digest`` (default: ``source.local_digest()``); None when there is none."""
        if digest is None and self.source is not None:
            digest = self.source.local_digest()
        if digest is None:
            return None
        d = mesh_pb2.Digest()
        d.CopyFrom(digest)
        if not d.labels:
            d.labels.update(self.membership.labels)
        self._attach_measurements(d)
        signed = self.exchange.publish(d)
        self._site_publish(signed)
        return signed

    async def stop(self, leave_timeout: float = 2.0, leave: bool = True) -> None:
        """Leave gracefully (wait up to ``leave_timeout`` for the broadcast to go out), then shut down.

        With ``leave=False`` the node just stops, and peers will declare it dead (a crash, as far as
        they can tell).
        """
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        m = self._membership
        if m is None:
            return
        if self._sites is not None:
            for role in (REGION, "fleet"):
                um = self._sites.pools[role].membership
                if um is not None and um._running:
                    um.shutdown()
        if leave:
            done = asyncio.Event()
            m.leave(on_done=done.set)
            try:
                await asyncio.wait_for(done.wait(), leave_timeout)
            except TimeoutError:
                log.info("mesh leave broadcast not fully sent within %.1f s", leave_timeout)
        m.shutdown()
        await self.transport.aclose()
        self._membership = None
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    def on_period(self, period: PeriodLike, records: Sequence[FlowRecord] = ()) -> None:
        """A record listener (``Node.record_listeners``): sign and spread each closed period's digest.

        The digest carries the period's destination rollups, this node's addresses (``addresses()``), the
        active-task results since the last one, and whatever each of ``digest_decorators`` adds from the
        period's records (endpoint records for cross-validation, ...), in order, before it is signed.
        """
        if self._membership is None:
            return
        d = digest_from_period(period)
        d.labels.update(self._membership.labels)
        if self.addresses is not None:
            d.addresses.extend(sorted(set(self.addresses())))
        self._attach_measurements(d)
        for decorate in list(self.digest_decorators):
            try:
                decorate(d, period, records)
            except Exception:
                # A decorator's bug must not stop the node from publishing, nor publish what a privacy
                # filter (a decorator) did not get to: fail closed, keep only what names no address.
                log.exception("digest decorator %r failed: this period's digest goes out without its "
                              "destinations, endpoints, addresses, processes and measurements", decorate)
                self.counters["digest_decorator_failures"] += 1
                for name in ("by_destination", "endpoints", "addresses", "processes", "measurements"):
                    d.ClearField(name)
                break
        signed = self.exchange.publish(d)
        self._site_publish(signed)
        held = self.exchange.latest(self.node_id)
        self._notify(held.digest if held is not None else d, signed, own=True)

    def _validated(self, d: mesh_pb2.Digest) -> dict[str, str]:
        """The members this node validates this period, by node id with their address: the site members at
        the other end of the flows its digest has endpoint records of (their digests are pulled each period
        to cross-check them; the aggregators get the whole site's anyway)."""
        hosts = {ep.dst for ep in d.endpoints}
        return {x.node_id: x.addr for x in self.membership.members()
                if x.node_id != self.node_id and x.state in (State.ALIVE, State.SUSPECT)
                and x.addr.rpartition(":")[0].strip("[]") in hosts}

    def _forgotten(self, node_ids: list[str]) -> None:
        self.identity.forget(node_ids)
        for listener in list(self.forget_listeners):
            try:
                listener(node_ids)
            except Exception:
                log.exception("forget listener %r", listener)

    def _notify(self, digest: mesh_pb2.Digest, signed: mesh_pb2.SignedDigest, *, own: bool = False) -> None:
        for listener in list(self.digest_listeners):
            try:
                listener(digest, signed, own)
            except Exception:
                log.exception("digest listener %r", listener)

    def _attach_measurements(self, d: mesh_pb2.Digest) -> None:
        """Active-task results since the previous digest ride this one (gossiped), newest 16 at most.

        Without a path's hops: up to 30 each would take a bounded digest's room from the rollups; they stay
        in this node's store (``Measurements``)."""
        if self._measurements:
            for m in self._measurements[-16:]:
                x = d.measurements.add()
                x.CopyFrom(m)
                del x.hops[:]
            self._measurements.clear()

    async def measure(self, request: mesh_pb2.MeasureRequest, requester_addr: str) -> mesh_pb2.MeasureResponse:
        """Run one active task of the request's kind (connects, handshake RTTs, or a path probe), store and
        account it. Raises TaskRefused (policy, quota, rate, bounds)."""
        caller = MEMBER_CALLER.get()  # the member whose node key signed the request (None: an operator)
        if caller is not None and request.requester_id not in ("", caller):
            raise TaskRefused("PERMISSION_DENIED", f"requester_id {request.requester_id} is not the signer {caller}")
        self.task_policy.check(requester_addr, caller or request.requester_id)
        kind = request.kind or mesh_pb2.MEASURE_CONNECT
        if kind not in (mesh_pb2.MEASURE_CONNECT, mesh_pb2.MEASURE_RTT, mesh_pb2.MEASURE_PATH):
            raise TaskRefused("INVALID_ARGUMENT", f"kind: {kind} is not a MeasureKind")
        if kind == mesh_pb2.MEASURE_PATH and not self.task_policy.path_probes:
            raise TaskRefused("FAILED_PRECONDITION", "path probes are off on this node (they draw ICMP from every "
                                                     "router on the way); its operator enables them with "
                                                     "active_tasks_path = true")
        count, timeout = bounded(request.count, request.timeout_ms)
        hops = bounded_hops(request.max_hops) if kind == mesh_pb2.MEASURE_PATH else 0
        if hops and not request.timeout_ms:
            timeout = 1.0  # a silent router costs each probe its whole timeout
        target = request.target
        member = self.membership.member(target) if self._membership is not None else None
        if member is not None:
            host = member.addr.rpartition(":")[0].strip("[]")
            port = request.port or int(member.addr.rpartition(":")[2])
        else:
            try:
                host, port = split_target(target)
            except ValueError as exc:
                raise TaskRefused("INVALID_ARGUMENT", f"target: {exc} (nor is it a member's node id)") from exc
        requester = caller or requester_addr  # '' for this node's own task (a challenge it runs)
        if requester:
            try:
                self.ledger.charge(requester, "tasks")
            except TaskRefused:
                self.counters["tasks_over_quota"] += 1
                raise
        if not self.task_bucket.take(hops or count):
            raise TaskRefused("RESOURCE_EXHAUSTED",
                              f"active tasks are rate-limited here ({self.task_bucket.rate:g} connects/s); retry later")
        if kind == mesh_pb2.MEASURE_PATH:
            resp = await self._trace(host, port, hops, timeout)
        else:  # connect and rtt make the same connects; rtt's headline (p50_us) is the kernel's RTT
            m = await measure_tcp(host, port, count, timeout)
            resp = mesh_pb2.MeasureResponse(
                node_id=self.node_id, target=m.target, attempts=m.attempts, reachable=m.reachable,
                connect_us=list(m.connect_us), rtt_us=list(m.rtt_us), errors=m.errors, time_ns=m.time_ns,
                p50_us=m.p50_us if kind == mesh_pb2.MEASURE_CONNECT else m.rtt_p50_us)
        resp.kind, resp.requester = kind, requester
        try:
            resp.id = self.results.record(resp)
        except StoreError as exc:  # the answer still goes back; it is only not kept
            self.counters["measurements_not_stored"] += 1
            log.warning("active task result not stored: %s", exc)
        if requester:
            self.ledger.served(requester, tasks=1, nbytes=resp.ByteSize())
        self._measurements.append(resp)
        del self._measurements[:-64]
        return resp

    async def _trace(self, host: str, port: int, hops: int, timeout: float) -> mesh_pb2.MeasureResponse:
        try:
            path = await trace_path(host, port, hops, timeout)
        except OSError as exc:
            raise TaskRefused("INVALID_ARGUMENT", f"target: {host} does not resolve here: {exc}") from exc
        last = path[-1] if path else None
        reached = last is not None and last.reached
        return mesh_pb2.MeasureResponse(
            node_id=self.node_id, target=format_destination(host, port), attempts=len(path), reachable=int(reached),
            hops=[mesh_pb2.MeasureHop(ttl=h.ttl, addr=h.addr, rtt_us=h.rtt_us, status=h.status) for h in path],
            p50_us=last.rtt_us if reached and last is not None else 0, time_ns=time.time_ns())

    def measurements(self, request: mesh_pb2.MeasurementsRequest) -> mesh_pb2.MeasurementsResponse:
        """The stored active-task results, newest first. Raises TaskRefused(INVALID_ARGUMENT) over the bound."""
        number = request.number or 100
        if number > MAX_MEASUREMENTS_LISTED:
            raise TaskRefused("INVALID_ARGUMENT", f"number: {number} is over {MAX_MEASUREMENTS_LISTED}")
        found, evicted = self.results.list(request.since_ns, number)
        return mesh_pb2.MeasurementsResponse(measurements=found, evicted=evicted)

    def member_ips(self) -> set[str]:
        """Hosts of the members' mesh addresses (to pick the flows whose endpoint records go in a digest)."""
        if self._membership is None:
            return set()
        return {m.addr.rpartition(":")[0].strip("[]") for m in self._membership.members()}

    # ------------------------------------------------------------------ views

    def peers(self) -> mesh_pb2.PeersResponse:
        """Every member with state, incarnation, labels, last digest age and RTT; this node first."""
        m = self.membership
        now_ns = m._sched.wall_ns()
        resp = mesh_pb2.PeersResponse(health_score=m.awareness.score)
        for peer, a, q in self.ledger.accounts():
            resp.accounts.add(peer=peer, served_tasks=a.served_tasks, served_queries=a.served_queries,
                              served_bytes=a.served_bytes, asked_tasks=a.asked_tasks, asked_queries=a.asked_queries,
                              asked_bytes=a.asked_bytes, refused=a.refused, quota_tasks=q.tasks,
                              quota_queries=q.queries)
        members = sorted(m.members(), key=lambda x: (x.node_id != self.node_id, x.node_id))
        for x in members:
            held = self.exchange.latest(x.node_id)
            resp.peers.add(
                node_id=x.node_id, addr=x.addr, state=int(x.state), incarnation=x.incarnation, labels=x.labels,
                digest_seq=held.digest.seq if held else 0,
                digest_age_ms=round((now_ns - held.digest.period_end_ns) / 1e6) if held else -1,
                rtt_us=round((x.rtt or 0.0) * 1e6), is_self=x.node_id == self.node_id,
            )
        counters = self.counter_totals()
        counters["digest_history_held"] = len(self.exchange.history)
        resp.counters.update({k: v for k, v in counters.items() if v >= 0})
        return resp

    def counter_totals(self) -> Counter[str]:
        """Every counter of the mesh and its parts, by name (``meshctl peers`` and the metrics show them); all
        count up from the start."""
        m = self.membership
        counters: Counter[str] = Counter()
        counters.update(m.counters)
        counters.update(self.exchange.counters)
        counters.update(self.transport.counters)
        counters.update(self.counters)
        counters.update(self.identity.counters)
        counters["broadcasts_dropped"] = m._broadcasts.dropped
        counters["announces_dropped"] = self.exchange._announces.dropped
        counters["digest_history_evicted"] = self.exchange.history.evicted
        counters["accounts_evicted"] = self.ledger.evicted
        if self._sites is not None:
            counters.update({f"sites_{k}": v for k, v in self._sites.counters.items()})
            for role in (REGION, "fleet"):
                um = self._sites.pools[role].membership
                if um is not None:
                    counters.update({f"{role}_pool_{k}": v for k, v in um.counters.items()})
                    counters[f"{role}_pool_broadcasts_dropped"] = um._broadcasts.dropped
        return counters

    def member_states(self) -> dict[str, int]:
        """How many members are in each state (``alive``, ``suspect``, ``dead``, ``left``), this node included."""
        out = {s.name.lower(): 0 for s in State}
        for x in self.membership.members():
            name = x.state.name.lower()
            out[name] = out.get(name, 0) + 1
        return out

    async def fleet_query(self, req: mesh_pb2.FleetQueryRequest) -> mesh_pb2.FleetQueryResponse:
        """Fan ``req`` out to the selected members, verify and aggregate their digests (see mesh.proto)."""
        if req.local_only:
            held = self.exchange.latest(self.node_id)
            resp = mesh_pb2.FleetQueryResponse()
            if held is None:
                resp.nodes.add(node_id=self.node_id, answered=False, error="no digest")
                resp.partial = True
            else:
                resp.nodes.add(node_id=self.node_id, answered=True)
                resp.digests.append(held.signed)
            return resp
        if req.aggregates_only:
            return mesh_pb2.FleetQueryResponse(group_aggregates=self._sites.newest_signed()
                                               if self._sites is not None else [])
        deadline = (req.deadline_ms or DEFAULT_QUERY_DEADLINE_MS) / 1000.0
        selector = dict(req.selector)
        if self._sites is not None:
            return await self._site_fleet_query(req, selector, deadline)
        targets: list[Member] = [
            x for x in self.membership.members() if matches(x.labels, selector)
        ]
        resp, digests, now_ns = await self._collect_digests(targets, deadline)
        self._digest_rows(req, resp, digests, now_ns)
        return resp

    async def _collect_digests(self, targets: list[Member], deadline: float
                               ) -> tuple[mesh_pb2.FleetQueryResponse, dict[str, tuple[mesh_pb2.SignedDigest,
                                                                                        mesh_pb2.Digest]], int]:
        """Ask each of ``targets`` for its newest digest (within ``deadline``) and verify it: the answer's
        node statuses and digests, the verified digests by node id, and the wall clock when asked."""
        statuses: dict[str, mesh_pb2.NodeStatus] = {}
        digests: dict[str, tuple[mesh_pb2.SignedDigest, mesh_pb2.Digest]] = {}
        now_ns = self.membership._sched.wall_ns()

        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        slots = asyncio.Semaphore(max(1, self.query_concurrency))
        self.transport.reserve(len(targets))

        async def ask(x: Member, timeout: float) -> None:
            if x.node_id == self.node_id:
                held = self.exchange.latest(self.node_id)
                if held is None:
                    statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error="no digest")
                else:
                    digests[x.node_id] = (held.signed, held.digest)
                return
            stub = self.transport.stub(x.addr)
            local = mesh_pb2.FleetQueryRequest(local_only=True)
            try:
                resp = await with_retries(
                    lambda: stub.FleetQuery(local, timeout=timeout, metadata=audience_metadata(x.node_id)),
                    budget=timeout)
            except grpc.aio.AioRpcError as exc:
                self.ledger.asked(x.node_id, queries=1)
                statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error=exc.code().name)
                return
            self.ledger.asked(x.node_id, queries=1, nbytes=resp.ByteSize())
            if not resp.digests:
                err = resp.nodes[0].error if resp.nodes else "no digest"
                statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error=err)
                return
            signed = resp.digests[0]
            try:
                d = verify_digest(signed, self.digest_config.max_bytes, now_ns)
                if d.node_id != x.node_id:
                    raise DigestRejected("bad_identity", f"{x.addr} answered with the digest of {d.node_id}")
            except DigestRejected as exc:
                self.counters[f"query_digests_{exc.reason}"] += 1
                log.warning("fleet query answer from %s dropped: %s", x.addr, exc)
                statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error=exc.reason)
                return
            digests[x.node_id] = (signed, d)

        async def ask_bounded(x: Member) -> None:
            if x.node_id == self.node_id:
                await ask(x, deadline)  # answered here, without a call
                return
            if x.state not in (State.ALIVE, State.SUSPECT, State.DEAD):
                statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error=f"not alive: {x.state.name}")
                return
            async with slots:  # the query's deadline runs from its start, waiting for a slot included
                left = end - loop.time()
                if x.state == State.DEAD:
                    left = min(left, DEAD_MEMBER_BUDGET)
                try:
                    if left <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(ask(x, left), left)
                except TimeoutError:
                    statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error="DEADLINE_EXCEEDED")
            if x.state == State.DEAD:
                if x.node_id in digests:
                    self.counters["query_answers_from_dead"] += 1
                else:
                    statuses[x.node_id] = mesh_pb2.NodeStatus(node_id=x.node_id, error="not alive: DEAD")

        await asyncio.gather(*(ask_bounded(x) for x in targets))
        resp = mesh_pb2.FleetQueryResponse()
        for x in sorted(targets, key=lambda t: t.node_id):
            if x.node_id in digests:
                resp.nodes.add(node_id=x.node_id, answered=True)
                resp.digests.append(digests[x.node_id][0])
            else:
                resp.nodes.add().CopyFrom(statuses[x.node_id])
        resp.partial = any(not n.answered for n in resp.nodes)
        return resp, digests, now_ns

    def _digest_rows(self, req: mesh_pb2.FleetQueryRequest, resp: mesh_pb2.FleetQueryResponse,
                     digests: Mapping[str, tuple[mesh_pb2.SignedDigest, mesh_pb2.Digest]], now_ns: int) -> None:
        """The rows of ``req`` from verified member digests (trust's flagged hosts left out), into ``resp``."""
        out = self.exclude(digests) if self.exclude is not None else set()
        reports = host_reports(d for _, d in digests.values())
        clamped = sum(1 for r in reports if r.clamped)
        if clamped:  # a report above what one host can do: counted at the limit, and counted here
            self.counters["query_reports_clamped"] += clamped
        got = trusted_aggregate(reports, excluded=out, now_ns=now_ns, group_by=req.group_by or None,
                                destination=req.destination or None, order=self.label_order,
                                service=req.service or None)
        left_out = dict(got.left_out)
        resp.aggregates.extend(_aggregate_to_proto(a, left_out.pop((a.group, a.destination), 0)) for a in got.rows)
        for (group, dest), n in sorted(left_out.items()):  # rows only flagged hosts reported
            resp.aggregates.add(group=group, destination=dest, hosts_excluded=n)
        resp.hosts_excluded = len(out)
        resp.excluded.extend(sorted(out))

    # ------------------------------------------------------------------ fleet queries over sites

    async def _site_fleet_query(self, req: mesh_pb2.FleetQueryRequest, selector: dict[str, str],
                                deadline: float) -> mesh_pb2.FleetQueryResponse:
        """A fleet query with site aggregates: this node's site from its members' digests, the rest of the
        fleet from the signed aggregates its site's aggregators decided (a site of this region each, a
        region each beyond). A selector naming another site descends into it: that site answers with its
        members' digests, verified here."""
        sites = self._sites
        assert sites is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        mine = site_group(self.labels)
        wanted = _selected_group(selector, self.labels)
        if wanted is not None and wanted != mine:
            return await self._descend(req, wanted, deadline)
        targets = [x for x in self.membership.members() if matches(x.labels, selector)]
        resp, digests, now_ns = await self._collect_digests(targets, deadline)
        others: list[tuple[mesh_pb2.SignedDigest, mesh_pb2.GroupAggregate]] = []
        if wanted is None and set(selector) <= {REGION, SITE}:
            others = [(sd, a) for sd, a in await self._group_aggregates(max(0.05, end - loop.time()))
                      if aggregate_selected(a, selector, self.labels)]
        if req.group_by in ("", FLEET, REGION, SITE):
            # sums all the way: this site's own aggregate from its (trusted) digests beside the others'
            out = self.exclude(digests) if self.exclude is not None else set()
            own = build_aggregate(SITE, mine, self.node_id, now_ns, [
                digest_source(d) for nid, (_s, d) in sorted(digests.items()) if nid not in out], max_bytes=1 << 20)
            groups = group_sums(req.group_by or FLEET, own if digests else None, [a for _, a in others],
                                 self.node_id, group_of(self.labels, REGION))
            rows = aggregate_rows(only_service(groups, req.service), now_ns=now_ns,
                                  destination=req.destination or None)
            resp.aggregates.extend(_aggregate_to_proto(a) for a in rows)
            resp.hosts_excluded = len(out)
            resp.excluded.extend(sorted(out))
        else:  # per host (or another label): this site's detail, the others at the finest level held
            self._digest_rows(req, resp, digests, now_ns)
            rows = aggregate_rows(only_service([a for _, a in others], req.service), now_ns=now_ns,
                                  destination=req.destination or None)
            resp.aggregates.extend(_aggregate_to_proto(a) for a in rows)
        resp.group_aggregates.extend(sd for sd, _ in others)
        self.counters["fleet_queries_from_aggregates"] += 1
        return resp

    async def _group_aggregates(self, timeout: float) -> list[tuple[mesh_pb2.SignedDigest, mesh_pb2.GroupAggregate]]:
        """The other groups' signed aggregates of the newest period decided: held here when this node is a
        site aggregator, else asked of its site's aggregators (first that answers) and verified."""
        sites = self._sites
        assert sites is not None
        mine = sites.site
        if sites.is_site_aggregator():
            signed = sites.newest_signed()
        else:
            signed = []
            for nid in sites.site_aggregators():
                addr = sites._addr_of(SITE, nid)
                if addr is None:
                    continue
                stub = self.transport.stub(addr)
                try:
                    got = await with_retries(lambda stub=stub, nid=nid: stub.FleetQuery(  # type: ignore[misc]
                        mesh_pb2.FleetQueryRequest(aggregates_only=True), timeout=timeout,
                        metadata=audience_metadata(nid)), budget=timeout)
                except grpc.aio.AioRpcError as exc:
                    self.counters[f"group_aggregates_failed_{exc.code().name}"] += 1
                    continue
                signed = list(got.group_aggregates[:MAX_GROUP_AGGREGATES])
                break
        out = []
        now_ns = self.membership._sched.wall_ns()
        for sd in signed:
            try:
                a = verify_aggregate(sd, sites.config, now_ns)
            except DigestRejected as exc:
                self.counters[f"query_aggregates_{exc.reason}"] += 1
                continue
            if a.aggregator in sites.flagged or (a.level == SITE and a.group == mine):
                continue
            out.append((sd, a))
        return out

    async def _descend(self, req: mesh_pb2.FleetQueryRequest, group: str, deadline: float
                       ) -> mesh_pb2.FleetQueryResponse:
        """Ask site ``group`` itself for its detail, and build the rows here from the digests it returns,
        each verified and of that site. A site aggregator asks that site's aggregators (its fleet pool
        knows them, and they answer a fleet-pool member's signed request); a member asks through its own
        site's aggregators, who do so."""
        self.counters["fleet_queries_descended"] += 1
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        sites = self._sites
        assert sites is not None
        if sites.is_site_aggregator():
            located = await self._locate_group(group)
        else:
            located = [(nid, addr) for nid in sites.site_aggregators()
                       if (addr := sites._addr_of(SITE, nid)) is not None]
        resp = mesh_pb2.FleetQueryResponse()
        if not located:
            resp.partial = True
            resp.nodes.add(node_id="", error=f"no member of site {group} found")
            return resp
        now_ns = self.membership._sched.wall_ns()
        for nid, addr in located[:3]:
            left = end - loop.time()
            if left <= 0:
                break
            sub = mesh_pb2.FleetQueryRequest()
            sub.CopyFrom(req)
            sub.deadline_ms = max(1, int(left * RELAY_DEADLINE_SHARE * 1000))
            stub = self.transport.stub(addr)
            try:
                got = await asyncio.wait_for(stub.FleetQuery(sub, timeout=left, metadata=audience_metadata(nid)),
                                             left)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                self.counters["fleet_queries_descend_failed"] += 1
                log.info("site %s member %s did not answer a fleet query: %s", group, addr, exc)
                continue
            digests: dict[str, tuple[mesh_pb2.SignedDigest, mesh_pb2.Digest]] = {}
            for signed in got.digests[: self.config.max_members]:
                try:
                    d = verify_digest(signed, self.digest_config.max_bytes, now_ns)
                except DigestRejected as exc:
                    self.counters[f"query_digests_{exc.reason}"] += 1
                    continue
                if site_group(d.labels) == group and matches(d.labels, dict(req.selector)):
                    digests[d.node_id] = (signed, d)
            for n in got.nodes[: self.config.max_members]:
                st = resp.nodes.add()
                st.CopyFrom(n)
                st.answered = n.node_id in digests
                st.via = nid
            resp.digests.extend(sd for sd, _ in digests.values())
            resp.partial = any(not n.answered for n in resp.nodes)
            self._digest_rows(req, resp, digests, now_ns)
            return resp
        resp.partial = True
        resp.nodes.add(node_id="", error=f"no member of site {group} answered")
        return resp

    async def _locate_group(self, group: str) -> list[tuple[str, str]]:
        """``(node_id, addr)`` of members of site ``group``, its aggregators first: asked of this node's site
        aggregators (in the fleet pool, they know every site's), then of the fleet's aggregators known."""
        sites = self._sites
        assert sites is not None
        held = sites.locate_answer(group)
        if held.members:
            return [(e.node, e.addr) for e in held.members if self._dialable_entry(e)]
        ask = [e.addr for e in held.aggregators if e.node != self.node_id] + list(self.upper_hints)
        for addr in list(dict.fromkeys(ask))[:4]:
            items = await self._ask_locate(addr, group)
            if items is None:
                continue
            found = [(e.node, e.addr) for e in items.members[: sites.config.max_pull]
                     if self._dialable_entry(e) and site_group(e.labels) == group]
            if found:
                aggs = {e.node for e in items.aggregators}
                return sorted(found, key=lambda x: x[0] not in aggs)
        return []

    # ------------------------------------------------------------------ fleet history

    async def fleet_flows(self, req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
        """Fan a flow query out to the selected members (or one member per site) and merge their records.

        Raises:
            FleetRefused: a malformed or oversized request, too many members or queries at once.
        """
        if req.local_only:
            return await self._local_flows(req)
        number, deadline = check_request(req)
        if req.rows_per_member:  # a site's relay: its answer is its share of the asking node's page
            number = min(number, req.rows_per_member)
        if self.history is not None:
            try:
                self.history.check(req.flows)
            except ValueError as exc:
                raise FleetRefused("INVALID_ARGUMENT", str(exc)) from exc
        cursor = req.after if req.HasField("after") else decode_token(req)
        if self._fan_outs >= self.max_fan_outs:
            self.counters["fleet_flows_refused_busy"] += 1
            raise FleetRefused("RESOURCE_EXHAUSTED", f"this node runs {self.max_fan_outs} fleet flow queries at "
                                                     "once; retry in a moment")
        self._fan_outs += 1
        try:
            return await self._fan_out_flows(req, number, deadline, cursor)
        finally:
            self._fan_outs -= 1

    async def _fan_out_flows(self, req: mesh_pb2.FleetFlowsRequest, number: int, deadline: float,
                             cursor: mesh_pb2.FleetCursor | None) -> mesh_pb2.FleetFlowsResponse:
        """Ask the members directly, and other sites through one relay each; merge the members' signed answers.

        Flat mesh: every selected member directly, or with ``per_site`` one relay per site label. Sites: this
        node's own site directly and every other site through a relay of that site: one of its aggregators,
        found in the fleet pool, or, when this node is not in the fleet pool, through one of its own site's
        aggregators (``other_sites``), which is. A relay (``rows_per_member`` or ``other_sites`` set) answers
        with its members' answers as they signed them (``members``, cut to its page), never with records of
        its own making; every node up the chain checks each member's signature.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        selector = dict(req.selector)
        relaying = bool(req.rows_per_member) or req.other_sites
        challenge = req.challenge if relaying and req.challenge else os.urandom(CHALLENGE_BYTES)
        sites = self._sites
        if req.other_sites and (sites is None or not sites.is_site_aggregator()):
            raise FleetRefused("FAILED_PRECONDITION", "other_sites: this node is not a site aggregator now; ask "
                                                      "one of its site's aggregators")
        chosen = [] if req.other_sites else [x for x in self.membership.members()
                                             if matches(x.labels, selector) and x.state != State.LEFT]
        # a site's relay names the members that left its site (still listed): the asking node, holding an
        # aggregate of a period before they left, accounts for them (``unreported``)
        gone = [] if sites is None or not req.rows_per_member or req.other_sites else [
            x for x in self.membership.members() if matches(x.labels, selector) and x.state == State.LEFT]
        untrusted = self.exclude(x.node_id for x in chosen) if self.exclude is not None else set()
        targets = [x for x in chosen if x.node_id not in untrusted]
        hosts = {x.node_id: x.labels.get("host", "") for x in targets}
        # relays: (site, candidates in order, the selector they answer for, its members when known here)
        relays: list[tuple[str, list[Member], dict[str, str], set[str] | None]] = []
        direct = targets
        if sites is None and req.per_site:
            groups: dict[str, list[Member]] = {}
            for x in targets:
                groups.setdefault(x.labels.get("site", ""), []).append(x)
            direct = groups.pop("", [])  # the members without a site label are asked directly
            for site, members in groups.items():
                first = next((x for x in members if x.node_id == self.node_id), None) or min(
                    members, key=lambda x: (x.state != State.ALIVE, x.node_id))
                relays.append((site, [first], {**selector, "site": site}, {x.node_id for x in members}))
        elif sites is not None and (req.other_sites or not req.rows_per_member):
            relays = self._remote_sites(selector, req.other_sites)
        asked = len(direct) + len(relays)
        if asked > self.max_members:
            self.counters["fleet_flows_refused_members"] += 1
            raise FleetRefused("RESOURCE_EXHAUSTED", f"{asked} members selected; one query asks at most "
                                                     f"{self.max_members} (narrow the selector, or ask per site)")
        per_member = share(number, asked, self.max_rows_per_member)
        self.counters["fleet_flows_queries"] += 1
        statuses: dict[str, mesh_pb2.NodeStatus] = {}
        answers: list[Answer] = []
        proofs: list[mesh_pb2.MemberAnswer] = []
        excluded = set(untrusted)
        seen = {x.node_id for x in direct}
        slots = asyncio.Semaphore(max(1, self.query_concurrency))
        self.transport.reserve(asked)

        def failed(node_id: str, error: str, via: str = "", host: str = "") -> None:
            key = node_id or f"\x00{error}"  # a site nobody answered for is listed under no node id
            statuses[key] = mesh_pb2.NodeStatus(node_id=node_id, host=host or hosts.get(node_id, ""), error=error,
                                                via=via)

        async def call(x: Member, sub: mesh_pb2.FleetFlowsRequest, left: float) -> mesh_pb2.FleetFlowsResponse | str:
            sub.challenge = challenge
            if x.node_id == self.node_id:  # answered here, without a call
                resp = await self.fleet_flows(sub)
                if relaying and sub.local_only:  # passed on: signed like every other member's answer
                    sign_answer(self.key, sub, resp)
                return resp
            stub = self.transport.stub(x.addr)
            self.ledger.asked(x.node_id, queries=1)
            resp = await with_retries(
                lambda: stub.FleetFlows(sub, timeout=left, metadata=audience_metadata(x.node_id)), budget=left)
            self.ledger.asked(x.node_id, nbytes=resp.ByteSize())
            if not answer_signed_by(x.node_id, sub, resp):
                self.counters["fleet_flows_answers_untrusted"] += 1
                log.warning("fleet flows answer from %s refused: not signed by the key of %s, the member asked "
                            "there", x.addr, x.node_id)
                return UNTRUSTED_ANSWER
            return resp

        async def bounded(x: Member, sub: mesh_pb2.FleetFlowsRequest, share: float
                          ) -> mesh_pb2.FleetFlowsResponse | str:
            """The answer of ``x``, signed by it, or why there is none (a status name, or the refusal)."""
            if x.state not in (State.ALIVE, State.SUSPECT, State.DEAD):
                return f"not alive: {x.state.name}"
            async with slots:  # the deadline runs from the query's start, waiting for a slot included
                left = end - loop.time()
                if x.state == State.DEAD:
                    left = min(left, DEAD_MEMBER_BUDGET)
                if left <= 0:
                    return "DEADLINE_EXCEEDED"
                sub.deadline_ms = max(1, int(left * share * 1000))
                try:
                    return await asyncio.wait_for(call(x, sub, left), left)
                except TimeoutError:
                    return "DEADLINE_EXCEEDED"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name
                except FleetRefused as exc:
                    return exc.code

        def take(m: mesh_pb2.MemberAnswer, answer: Answer, node_id: str, host: str, via: str) -> None:
            answers.append(answer)
            proofs.append(m)
            statuses[node_id] = mesh_pb2.NodeStatus(node_id=node_id, host=host, answered=True, via=via)

        async def ask_member(x: Member) -> None:
            sub = member_request(req.flows, cursor, per_member, challenge)
            got = await bounded(x, sub, 1.0)
            if isinstance(got, str):
                failed(x.node_id, got)
                return
            if (len(got.flows) != len(got.keys) or len(got.flows) > per_member
                    or any(f.node_id != x.node_id for f in got.flows)):  # a member speaks for itself only
                self.counters["fleet_flows_answers_malformed"] += 1
                log.warning("fleet flows answer from %s dropped: %d records, %d keys (asked at most %d), or records "
                            "of another node", x.addr, len(got.flows), len(got.keys), per_member)
                failed(x.node_id, MALFORMED_ANSWER)
                return
            take(mesh_pb2.MemberAnswer(request=sub, answer=got, rest_sha256=EMPTY_REST),
                 Answer(got.flows, got.keys, got.more), x.node_id, hosts[x.node_id], "")

        async def ask_relay(site: str, candidates: list[Member], sub_selector: dict[str, str],
                            members: set[str] | None) -> None:
            """One site (``other_sites``: every other site) through the first of ``candidates`` that answers;
            its members' signed answers checked here. ``members``: the site's members when this node lists
            them (flat mesh), reported missing unless answered."""
            got: mesh_pb2.FleetFlowsResponse | str = "no relay"
            relay = candidates[0]
            checked = members is None and bool(site) and set(selector) <= {REGION, SITE}
            listing = self._ask_site_members(site) if checked else None  # meanwhile, what to check it against
            for relay in candidates:
                sub = mesh_pb2.FleetFlowsRequest(flows=req.flows, selector=sub_selector, rows_per_member=per_member,
                                                 other_sites=not site)
                sub.flows.page_token = ""
                if cursor is not None:
                    sub.after.CopyFrom(cursor)
                if not site:  # every other site: its share is the whole page, the relay divides it
                    sub.rows_per_member = min(number, self.max_rows_per_member)
                # the relay's own fan-out ends before this one waits no more, with time to send its answer back
                got = await bounded(relay, sub, RELAY_DEADLINE_SHARE)
                if not isinstance(got, str):
                    break
                if members is None or relay.node_id not in members:
                    failed(relay.node_id, f"site relay: {got}", host=relay.labels.get("host", ""))
                if got == "DEADLINE_EXCEEDED" or end - loop.time() <= 0:
                    break
            if isinstance(got, str):
                what = f"site {site}" if site else "the other sites"
                for nid in sorted(members or ()):
                    failed(nid, f"site relay {relay.node_id}: {got}", relay.node_id)
                if members is None:
                    failed("", f"{what}: no relay answered ({got}); its members were not asked")
                return
            bound = 4 * self.max_members
            if len(got.members) > bound or len(got.nodes) > bound or got.flows:
                self.counters["fleet_flows_answers_malformed"] += 1
                for nid in sorted(members or ()):
                    failed(nid, MALFORMED_ANSWER, relay.node_id)
                failed(relay.node_id if members is None else "", f"site relay: {MALFORMED_ANSWER}")
                return
            said = {n.node_id: n for n in got.nodes}
            vouched: set[str] = set()
            mine = "" if relay.node_id == self.node_id else relay.node_id
            for m in got.members:
                c = check_member(m, req.flows, cursor, challenge)
                via = said[c.node_id].via if c.node_id in said and said[c.node_id].via else mine
                if members is not None and c.node_id not in members:
                    self.counters["fleet_flows_answers_foreign"] += 1
                    continue
                if c.answer is None:
                    key = "fleet_flows_answers_untrusted" if c.error == UNTRUSTED_ANSWER else \
                        "fleet_flows_answers_malformed"
                    self.counters[key] += 1
                    log.warning("fleet flows answer of %s passed on by relay %s refused: %s", c.node_id,
                                relay.node_id, c.error)
                    failed(c.node_id, c.error, via, said[c.node_id].host if c.node_id in said else "")
                    vouched.add(c.node_id)
                    continue
                if c.node_id in seen:  # asked directly, or passed on twice: its records once
                    self.counters["fleet_flows_answers_duplicate"] += 1
                    continue
                seen.add(c.node_id)
                vouched.add(c.node_id)
                if self.exclude is not None and self.exclude([c.node_id]):
                    excluded.add(c.node_id)
                    continue
                take(m, c.answer, c.node_id, c.host, via)
            for n in got.nodes:
                if n.node_id in vouched or n.node_id in seen or (members is not None and n.node_id not in members):
                    continue
                if n.answered:  # said to have answered, but its signed answer was not passed on
                    failed(n.node_id, "answer not passed on by its relay", n.via or mine, n.host)
                else:
                    failed(n.node_id, n.error, n.via or mine, n.host)
            excluded.update(n for n in got.excluded[:bound] if members is None or n in members)
            for nid in sorted(members or ()):
                if nid not in statuses and nid not in excluded:
                    failed(nid, "not asked by its site relay", relay.node_id)
            if listing is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(listing), max(0.0, min(end - loop.time(), LISTING_WAIT)))
            view = self._site_view(site) if checked else None
            if view is not None:  # the relay's lists are all this node hears of the site's members but its aggregate
                named, short = unreported(view, relay_accounted(got, bound), relay.node_id)
                for nid in named:
                    if nid not in statuses and nid not in excluded:
                        self.counters["fleet_flows_members_unreported"] += 1
                        failed(nid, NOT_REPORTED, relay.node_id)
                if short:
                    self.counters["fleet_flows_members_unreported"] += 1
                    failed("", short, relay.node_id)

        for x in gone[: self.max_members]:
            failed(x.node_id, LEFT_SITE, host=x.labels.get("host", ""))
        jobs = [ask_member(x) for x in direct] + [ask_relay(*r) for r in relays]
        await asyncio.gather(*jobs)
        page = merge(answers, number)
        counts = Counter(f.node_id for f in page.flows)
        resp = mesh_pb2.FleetFlowsResponse(more=page.more, rows_dropped=page.dropped)
        if relaying:
            resp.members.extend(relay_members(proofs, page))
        else:
            resp.flows.extend(page.flows)
            resp.keys.extend(page.keys)
        for key in sorted(statuses):
            st = statuses[key]
            if st.node_id in excluded:
                continue
            st.records = counts.get(st.node_id, 0)
            resp.nodes.append(st)
        resp.partial = any(not n.answered and n.error != LEFT_SITE for n in resp.nodes)
        resp.excluded.extend(sorted(excluded))
        if page.more and page.last is not None and not req.HasField("after") and not relaying:
            resp.next_page_token = encode_token(req, page.last)
        self.counters["fleet_flows_rows_dropped"] += page.dropped
        if resp.partial:
            self.counters["fleet_flows_partial"] += 1
        return resp

    def _ask_site_members(self, group: str) -> asyncio.Future[None] | None:
        """Ask for the source list of site ``group``'s newest aggregate held here, when it is not held (see
        ``SiteNode.ask_site_members``); the future is done once answered or failed."""
        sites = self._sites
        if sites is None:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not fut.done():
                fut.set_result(None)

        def done() -> None:
            loop.call_soon_threadsafe(settle)

        if not sites.ask_site_members(group, sites.period_end_ns() - MAX_VIEW_AGE_NS, done):
            return None
        return fut

    def _site_view(self, group: str) -> SiteView | None:
        """What this node verified itself of site ``group``'s members: its newest decided site aggregate (of
        the last ``MAX_VIEW_AGE_NS``) and, when its source list is held, the members it names."""
        sites = self._sites
        if sites is None:
            return None
        held = sites.site_members(group, since_ns=sites.period_end_ns() - MAX_VIEW_AGE_NS)
        if held is None:
            self.counters["fleet_flows_sites_unchecked"] += 1
            return None
        agg, members = held
        return SiteView(group, agg.period_end_ns, agg.hosts, members)

    def _remote_sites(self, selector: Mapping[str, str], only_others: bool
                      ) -> list[tuple[str, list[Member], dict[str, str], set[str] | None]]:
        """The relays of the other sites a query with ``selector`` reaches (sites): every site's aggregators as
        this node's fleet pool lists them, lowest election rank first; or, when this node is not in the
        fleet pool, its own site's aggregators, asked for every other site at once (site ``""``).

        Raises:
            FleetRefused: FAILED_PRECONDITION, asked for the other sites (``only_others``) while not in the
                fleet pool.
        """
        sites = self._sites
        assert sites is not None
        mine = sites.site
        if _selected_group(selector, self.labels) == mine:
            return []
        fleet = sites.pools["fleet"].membership
        if fleet is not None and fleet._running:
            pin = {k: v for k, v in selector.items() if k in (REGION, SITE)}
            groups: dict[str, list[Member]] = {}
            for x in sites._listed("fleet"):
                group = site_group(x.labels)
                if group != mine and matches(x.labels, pin):
                    groups.setdefault(group, []).append(x)
            out: list[tuple[str, list[Member], dict[str, str], set[str] | None]] = []
            for group, members in sorted(groups.items()):
                pinned = dict(selector)
                pinned.update({k: members[0].labels[k] for k in (REGION, SITE) if k in members[0].labels})
                out.append((group, members[:3], pinned, None))
            return out
        if only_others:  # elected, but not in the fleet pool yet: the asking member tries another aggregator
            raise FleetRefused("FAILED_PRECONDITION", "other_sites: this node has not joined the fleet pool yet; "
                                                      "ask another of its site's aggregators")
        aggs = [self.membership.member(nid) for nid in sites.site_aggregators() if nid != self.node_id]
        candidates = [x for x in aggs if x is not None][:3]
        if not candidates:
            self.counters["fleet_flows_no_site_aggregator"] += 1
            return []
        return [("", candidates, dict(selector), None)]

    async def _local_flows(self, req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
        """A member's own records for a fan-out (``local_only``), under the same limits as a local query."""
        if self.history is None:
            raise FleetRefused("UNIMPLEMENTED", "this node keeps no flow history to query")
        number, deadline = check_request(req)
        try:
            self.history.check(req.flows)
        except ValueError as exc:
            raise FleetRefused("INVALID_ARGUMENT", str(exc)) from exc
        if self._local_answers >= self.max_local_answers:
            self.counters["fleet_flows_local_refused_busy"] += 1
            raise FleetRefused("RESOURCE_EXHAUSTED", f"this node answers {self.max_local_answers} fleet flow "
                                                     "queries at once; retry in a moment")
        limit = min(req.rows_per_member or number, number, MAX_ROWS_PER_MEMBER)
        after = member_after(req.after if req.HasField("after") else None, self.node_id)
        self._local_answers += 1
        try:
            flows, keys, more = await self.history.local_flows(req.flows, after, limit, deadline)
        except ValueError as exc:
            raise FleetRefused("INVALID_ARGUMENT", str(exc)) from exc
        except StoreTimeout as exc:
            raise FleetRefused("DEADLINE_EXCEEDED", "the store query ran past the deadline") from exc
        except StoreError as exc:
            raise FleetRefused("UNAVAILABLE", str(exc)) from exc
        finally:
            self._local_answers -= 1
        self.counters["fleet_flows_local_answers"] += 1
        for f in flows:
            f.node_id = self.node_id
        resp = mesh_pb2.FleetFlowsResponse(flows=flows, keys=keys, more=more)
        resp.nodes.add(node_id=self.node_id, host=self.labels.get("host", ""), answered=True, records=len(flows))
        return resp


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    """``meshnode.v1.Mesh`` on top of one ``MeshService``."""

    def __init__(self, service: MeshService) -> None:
        self._svc = service

    async def _gossip_peer(self, context: grpc.aio.ServicerContext[object, object]) -> PeerCertificate | None:
        """Identity check of a gossip call (Packet, Stream): under mTLS, the caller's node certificate, which
        must bind its key; aborts with PERMISSION_DENIED otherwise. None without TLS (nothing to check).

        Membership is what makes a key a member, and members may sign fleet queries and tasks: a holder of a
        client certificate (meshctl's) must not be able to gossip a key of its own into the fleet, and a node
        speaks only for the key its certificate names.
        """
        svc = self._svc
        if not svc.node_certificates_only:
            return None
        peer = tls_peer(context.auth_context())
        if peer is None or not peer.is_node:
            svc.counters["gossip_refused_not_a_node"] += 1
            log.warning("mesh gossip from %s refused: its certificate is not a node certificate", context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "mesh gossip needs a node certificate")
        assert peer is not None
        if peer.node_id is None:
            svc.counters["gossip_refused_unbound"] += 1
            log.warning("mesh gossip from %s refused: its certificate binds no node key", context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "mesh gossip needs a node certificate that binds the node's key; reissue it "
                                "with: meshnode ca issue NAME --node-key DATA_DIR/node.key --force")
        svc.identity.saw(peer)
        return peer

    async def Packet(
        self, request: mesh_pb2.PacketRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.PacketResponse:
        svc = self._svc
        peer = await self._gossip_peer(context)
        if (len(request.payload) > 2 * svc.config.packet_budget or len(request.from_addr) > MAX_FROM_ADDR
                or len(request.pool) > MAX_POOL):
            svc.counters["packets_oversize"] += 1
            log.warning("oversize mesh packet (%d bytes) from %s (%s) dropped", len(request.payload),
                        request.from_addr[:MAX_FROM_ADDR], context.peer())
        elif svc.running:
            handlers = svc.transport.handlers(request.pool)
            if handlers is None:
                svc.counters["packets_no_pool"] += 1
                return mesh_pb2.PacketResponse()
            token = PEER.set(peer)
            try:
                handlers[0](request.from_addr, request.payload)
            finally:
                PEER.reset(token)
        return mesh_pb2.PacketResponse()

    async def Stream(
        self, request: mesh_pb2.StreamRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.StreamResponse:
        svc = self._svc
        if not svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        peer = await self._gossip_peer(context)
        if (len(request.payload) > svc.config.max_stream_bytes or len(request.from_addr) > MAX_FROM_ADDR
                or len(request.pool) > MAX_POOL):
            svc.counters["streams_oversize"] += 1
            log.warning("oversize mesh stream request (%d bytes) from %s refused", len(request.payload),
                        context.peer())
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"stream request over {svc.config.max_stream_bytes} bytes "
                                f"(or from_addr over {MAX_FROM_ADDR}, or pool over {MAX_POOL})")
        handlers = svc.transport.handlers(request.pool)
        if handlers is None:
            svc.counters["streams_no_pool"] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"this node runs no {request.pool!r} pool (it is "
                                "not one of its site's aggregators now)")
        assert handlers is not None
        token = PEER.set(peer)
        try:
            answer = handlers[1](request.from_addr, request.payload)
        except PeerError as exc:
            log.warning("bad mesh stream request from %s (%s) refused: %s", request.from_addr, context.peer(), exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:
            # a bug of the node's, not the peer's: counted and said as such, never an UNKNOWN status
            svc.counters["streams_failed"] += 1
            log.exception("mesh stream request from %s could not be handled", context.peer())
            await context.abort(grpc.StatusCode.INTERNAL, "the node failed to handle this stream request")
        finally:
            PEER.reset(token)
        svc.counters["stream_bytes_answered"] += len(answer)
        return mesh_pb2.StreamResponse(payload=answer)

    async def Peers(
        self, request: mesh_pb2.PeersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.PeersResponse:
        if not self._svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        return self._svc.peers()

    async def Digests(
        self, request: mesh_pb2.DigestsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.DigestsResponse:
        if not self._svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        held = self._svc.exchange.held()
        wanted = set(request.node_ids) or set(held)
        return mesh_pb2.DigestsResponse(digests=[held[n].signed for n in sorted(wanted) if n in held])

    async def Measure(
        self, request: mesh_pb2.MeasureRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.MeasureResponse:
        if not self._svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        requester = _peer_host(context.peer())
        try:
            return await self._svc.measure(request, requester)
        except TaskRefused as exc:
            log.info("active task from %s (%s) refused: %s", requester, request.requester_id or "?", exc)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        raise AssertionError("unreachable")  # abort raises

    async def Measurements(
        self, request: mesh_pb2.MeasurementsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.MeasurementsResponse:
        try:
            return self._svc.measurements(request)
        except TaskRefused as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the store cannot be read: {exc}")
        raise AssertionError("unreachable")  # abort raises

    async def FleetQuery(
        self, request: mesh_pb2.FleetQueryRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.FleetQueryResponse:
        if not self._svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        requester = await self._charge_query(context)
        resp = await self._svc.fleet_query(request)
        self._svc.ledger.served(requester, queries=1, nbytes=resp.ByteSize())
        return resp

    async def _charge_query(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The fleet query's requester (a member's node id, else the caller's address), its quota charged."""
        requester = MEMBER_CALLER.get() or _peer_host(context.peer()) or "unknown"
        try:
            self._svc.ledger.charge(requester, "queries")
        except TaskRefused as exc:
            self._svc.counters["queries_over_quota"] += 1
            log.info("fleet query from %s refused: %s", requester, exc)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return requester


    async def FleetFlows(
        self, request: mesh_pb2.FleetFlowsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.FleetFlowsResponse:
        if not self._svc.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mesh not running")
        requester = await self._charge_query(context)
        try:
            resp = await self._svc.fleet_flows(request)
        except FleetRefused as exc:
            log.info("fleet flows request from %s refused: %s", context.peer(), exc)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
            raise AssertionError("unreachable") from exc  # abort raises
        if request.challenge:  # a fan-out takes the answer only signed by the member it asked
            sign_answer(self._svc.key, request, resp)
        self._svc.ledger.served(requester, queries=1, nbytes=resp.ByteSize())
        return resp


MAX_GROUP_AGGREGATES = 64
"""Signed group aggregates one fleet query answer carries (``FleetQueryResponse.group_aggregates``)."""


def _selected_group(selector: Mapping[str, str], mine: Mapping[str, str]) -> str | None:
    """The site a selector pins (its ``site``, in its ``region`` or else this node's), or None."""
    if SITE not in selector:
        return None
    return f"{selector.get(REGION, mine.get(REGION, MISSING_LABEL))}/{selector[SITE]}"


def _same_group(level: str, mine: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a member with ``labels`` is in this node's group at ``level`` (its site pool's, its region
    pool's admission rule). Nodes without those labels are all in the one default group."""
    return group_of(labels, level) == group_of(mine, level)


def _peer_host(peer: str) -> str:
    """The address in a gRPC peer string: ``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``, ``ipv6:[::1]:5000`` -> ``::1``."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    return rest.rpartition(":")[0].strip("[]")

