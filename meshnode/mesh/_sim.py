"""A simulated cluster on the in-memory network and a manual clock (tests and bench/bench_mesh.py).

Everything random comes from one seed, so a failing run can be replayed exactly.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Mapping

from meshnode.mesh._clock import ManualScheduler
from meshnode.mesh._config import MeshConfig
from meshnode.mesh._digest import DigestConfig, DigestExchange, DigestRejected, NodeKey, check_signature
from meshnode.mesh._memnet import MemoryNetwork
from meshnode.mesh._sites import REGION, SITE, SiteConfig, SiteNode, elect
from meshnode.mesh._state import Delegate, Member, Membership, State
from meshnode.v1 import mesh_pb2


class SimCluster:
    """Nodes ``n0``, ``n1``, ... at addresses ``addr-0``, ``addr-1``, ...

    Args:
        seed: the one seed of the run.
        config: every node's protocol parameters.
        latency: one-way network delay in seconds.
        loss: default packet loss probability.
        delegate_factory: builds each node's delegate from its node id (None: no delegate).
        digests: give every node a ``DigestExchange`` (its node id is then its key's fingerprint, the key
            derived from the seed and the node's index).
        digest_config: the exchanges' bounds.
    """

    def __init__(
        self,
        seed: int = 1,
        config: MeshConfig | None = None,
        latency: float = 0.001,
        loss: float = 0.0,
        delegate_factory: Callable[[str], Delegate] | None = None,
        digests: bool = False,
        digest_config: DigestConfig | None = None,
    ) -> None:
        self.seed = seed
        self.digests = digests
        self.digest_config = digest_config
        self.exchanges: dict[str, DigestExchange] = {}
        self.ids: list[str] = []
        self._check = MemoCheck()
        self.rng = random.Random(seed)
        self.sched = ManualScheduler()
        net_rng = random.Random(self.rng.getrandbits(64))
        self.net = MemoryNetwork(self.sched, net_rng, latency=latency, loss=loss)
        self.config = config or MeshConfig()
        self.nodes: dict[str, Membership] = {}
        self.addr: dict[str, str] = {}
        self._delegate_factory = delegate_factory
        self._count = 0
        self.events: list[tuple[float, str, str, str]] = []
        self.record_events = True
        self.leaves_seen: Counter[str] = Counter()
        """How many observers saw each node go (dead or left)."""

    def add(self, labels: Mapping[str, str] | None = None, node_id: str | None = None,
            config: MeshConfig | None = None) -> Membership:
        """A new started node (not joined yet)."""
        i = self._count
        self._count += 1
        nid = node_id or f"n{i}"
        addr = f"addr-{i}"
        delegate: Delegate | None = None
        exchange: DigestExchange | None = None
        if self.digests:
            key = NodeKey.from_seed(f"{self.seed}/{i}".encode())
            nid = node_id or key.node_id
            exchange = DigestExchange(key, self.sched, self.digest_config, self._memo_check)
            delegate = exchange
        elif self._delegate_factory is not None:
            delegate = self._delegate_factory(nid)

        def on_event(kind: str, m: Member, observer: str = nid) -> None:
            if self.record_events:
                self.events.append((self.sched.now(), observer, kind, m.node_id))
            if kind == "leave":
                self.leaves_seen[m.node_id] += 1

        node = Membership(
            nid,
            self.net.endpoint(addr),
            self.sched,
            labels=labels or {},
            config=config or self.config,
            rng=random.Random(self.rng.getrandbits(64)),
            delegate=delegate,
            on_event=on_event,
        )
        if exchange is not None:
            exchange.attach(node)
            self.exchanges[nid] = exchange
        node.start()
        self.nodes[nid] = node
        self.ids.append(nid)
        self.addr[nid] = addr
        return node

    def build(self, n: int, labels: Callable[[int], Mapping[str, str]] | None = None) -> list[Membership]:
        """``n`` nodes, each joined through the first one; the clock is not advanced."""
        first = len(self.nodes)
        out = [self.add(labels(first + i) if labels else None) for i in range(n)]
        seed = out[0].address if first == 0 else next(iter(self.nodes.values())).address
        for node in out:
            if node.address != seed:
                node.join([seed])
        return out

    def bootstrap(self, n: int, labels: Callable[[int], Mapping[str, str]] | None = None) -> list[Membership]:
        """``n`` nodes that already know each other, as after a completed join (large simulations).

        Joining 1,000 nodes through gossip costs O(n^2) broadcasts to simulate; this installs the member
        tables directly and clears the join broadcasts.
        """
        out = [self.add(labels(i) if labels else None) for i in range(n)]
        now = self.sched.now()
        for node in out:
            others = [o for o in out if o is not node]
            for o in others:
                node._members[o.node_id] = Member(o.node_id, o.address, 0, State.ALIVE, o.labels, now)
            node._ids = [m for m in node._members]
            node._probe_list = [o.node_id for o in others]
            node._rng.shuffle(node._probe_list)
            node._num_live = len(node._members)
            node._broadcasts.reset()
            pp = node._timers.get("push_pull")
            if pp is not None:  # rescheduled with the interval of the full size, as in steady state
                pp.cancel()
                first = node._rng.random() * node._push_pull_interval()
                node._timers["push_pull"] = self.sched.call_later(first, node._push_pull_tick)
        return out

    def _memo_check(self, public_key: bytes, signature: bytes, payload: bytes) -> None:
        """``check_signature`` computed once per distinct input for the whole cluster (``MemoCheck``)."""
        self._check(public_key, signature, payload)

    def alive(self) -> list[Membership]:
        """Nodes that are running (not crashed, not shut down)."""
        return [m for m in self.nodes.values() if m._running]

    def crash(self, node_id: str) -> None:
        """Stop a node without a word (a crash or a power cut)."""
        self.nodes[node_id].shutdown()

    def view(self, observer: str) -> dict[str, State]:
        """What ``observer`` thinks of every member."""
        return {m.node_id: m.state for m in self.nodes[observer].members()}

    def converged(self, expect_alive: set[str] | None = None) -> bool:
        """True when every running node sees exactly ``expect_alive`` (default: the running nodes) alive."""
        running = self.alive()
        want = expect_alive if expect_alive is not None else {m.node_id for m in running}
        for m in running:
            if m.node_id not in want:
                continue
            seen = {nid for nid, st in ((x.node_id, x.state) for x in m.members()) if st == State.ALIVE}
            if seen != want:
                return False
        return True

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> float:
        """Advance the clock; with ``until``, stop early when it holds. Returns the elapsed time."""
        start = self.sched.now()
        self.sched.run_until(start + seconds, until)
        return self.sched.now() - start


class MemoCheck:
    """``check_signature`` computed once per distinct (key, signature, payload) for a whole simulated fleet.

    Each real node verifies each item once; in one process thousands of simulated nodes would verify the
    same bytes thousands of times. Same bytes, same answer, so the result is shared.
    """

    def __init__(self) -> None:
        self._verified: dict[tuple[bytes, bytes, bytes], str] = {}

    def __call__(self, public_key: bytes, signature: bytes, payload: bytes) -> None:
        k = (public_key, signature, payload)
        reason = self._verified.get(k)
        if reason is None:
            try:
                check_signature(public_key, signature, payload)
                reason = ""
            except DigestRejected as exc:
                reason = f"{exc.reason}\0{exc}"
            if len(self._verified) > 200_000:
                self._verified.clear()
            self._verified[k] = reason
        if reason:
            code, _, detail = reason.partition("\0")
            raise DigestRejected(code, detail.partition(": ")[2])


def install_members(nodes: list[Membership]) -> None:
    """Make ``nodes`` know each other as after a completed join (no join traffic to simulate)."""
    for node in nodes:
        now = node._sched.now()
        for o in nodes:
            if o is not node:
                node._members[o.node_id] = Member(o.node_id, o.address, 0, State.ALIVE, o.labels, now)
        node._ids = list(node._members)
        node._probe_list = [o.node_id for o in nodes if o is not node]
        node._rng.shuffle(node._probe_list)
        node._num_live = sum(1 for m in node._members.values() if m.state in (State.ALIVE, State.SUSPECT))
        node._broadcasts.reset()
        pp = node._timers.get("push_pull")
        if pp is not None:  # rescheduled with the interval of the full size, as in steady state
            pp.cancel()
            first = node._rng.random() * node._push_pull_interval()
            node._timers["push_pull"] = node._sched.call_later(first, node._push_pull_tick)


class SiteCluster:
    """A hierarchical fleet (``meshnode.mesh._sites``) on the in-memory network and a manual clock.

    Node ``i`` is ``SiteNode`` ``nodes[id]`` with its site pool at ``addr-i`` and, while it is a site
    aggregator, its region and fleet pools at ``addr-i/region`` and ``addr-i/fleet``. Periods end at
    multiples of ``site_config.period`` of the clock (the wall clock is aligned to them).

    Args:
        seed: the one seed of the run.
        config: every pool's membership parameters.
        site_config: the hierarchy's parameters.
        latency: one-way network delay in seconds.
        jitter: extra uniform random delay.
        loss: packet loss probability of every link.
    """

    def __init__(self, seed: int = 1, config: MeshConfig | None = None, site_config: SiteConfig | None = None,
                 latency: float = 0.001, jitter: float = 0.0, loss: float = 0.0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.sched = ManualScheduler()
        self.net = MemoryNetwork(self.sched, random.Random(self.rng.getrandbits(64)), latency=latency,
                                 jitter=jitter, loss=loss)
        self.config = config or MeshConfig()
        self.site_config = site_config or SiteConfig()
        self.check = MemoCheck()
        self.nodes: dict[str, SiteNode] = {}
        self.ids: list[str] = []
        self.addr: dict[str, str] = {}
        self.leaves_seen: Counter[str] = Counter()
        """How many observers saw each node go (dead or left), in its site pool."""
        self.digest_of: Callable[[SiteNode, int], mesh_pb2.Digest] | None = None
        """Each node's digest for a period end (wall ns); None publishes nothing."""
        self.publish_spread = 0.3
        """Members publish within this many seconds after the period ends."""

    def _membership(self, node: SiteNode, role: str, addr: str) -> Membership:
        nid = node.node_id

        def on_event(kind: str, m: Member) -> None:
            if kind == "leave" and role == SITE:
                self.leaves_seen[m.node_id] += 1

        return Membership(nid, self.net.endpoint(addr), self.sched, labels=node.labels, config=self.config,
                          rng=random.Random(self.rng.getrandbits(64)), delegate=node.pools[role],
                          on_event=on_event)

    def bootstrap(self, n: int, labels: Callable[[int], Mapping[str, str]]) -> None:
        """``n`` nodes that know their site (and aggregators their region and the fleet's aggregators)."""
        sites: dict[str, list[Membership]] = {}
        for i in range(n):
            key = NodeKey.from_seed(f"{self.seed}/{i}".encode())
            node = SiteNode(key, labels(i), self.sched, self.site_config, self.check)
            addr = f"addr-{i}"
            m = self._membership(node, SITE, addr)
            node.attach(SITE, m)
            node.make_upper = functools.partial(self._upper, node, addr)
            node.upper_seeds = functools.partial(self._seeds, node)
            self.nodes[node.node_id] = node
            self.ids.append(node.node_id)
            self.addr[node.node_id] = addr
            sites.setdefault(node.site, []).append(m)
        for members in sites.values():
            for m in members:
                m.start()
            install_members(members)
        k = self.site_config.aggregators
        regions: dict[str, list[Membership]] = {}
        fleet: list[Membership] = []
        for members in sites.values():
            for nid in elect((m.node_id for m in members), k):
                node = self.nodes[nid]
                for role, pool in ((REGION, regions.setdefault(node.region, [])), ("fleet", fleet)):
                    um = self._membership(node, role, f"{self.addr[nid]}/{role}")
                    node.attach(role, um)
                    um.start()
                    pool.append(um)
        for pool in [*regions.values(), fleet]:
            install_members(pool)

    def _upper(self, node: SiteNode, addr: str, role: str) -> Membership:
        return self._membership(node, role, f"{addr}/{role}")

    def _seeds(self, node: SiteNode, role: str) -> list[str]:
        out = []
        for other in self.nodes.values():
            m = other.pools[role].membership
            if other is node or m is None or not m._running:
                continue
            if role == REGION and other.region != node.region:
                continue
            out.append(m.address)
            if len(out) >= 3:
                break
        return out

    def start_periods(self) -> None:
        """From the next period end on: every running node closes each period and publishes its digest."""
        p = self.site_config.period
        first = (int(self.sched.now() / p) + 1) * p

        def tick() -> None:
            end_ns = self.sched.wall_ns() // int(p * 1e9) * int(p * 1e9)
            for nid in self.ids:
                node = self.nodes[nid]
                if not node.site_pool._running:
                    continue
                node.period_closed(end_ns)
                if self.digest_of is not None:
                    d = self.digest_of(node, end_ns)
                    later = functools.partial(self._publish, node, d)
                    self.sched.call_later(self.rng.random() * self.publish_spread, later)
            self.sched.call_later(p, tick)

        self.sched.call_later(first - self.sched.now(), tick)

    @staticmethod
    def _publish(node: SiteNode, d: mesh_pb2.Digest) -> None:
        node.publish(d)

    def crash(self, node_id: str) -> None:
        """Stop a node and all its pools without a word."""
        for pool in self.nodes[node_id].pools.values():
            if pool.membership is not None and pool.membership._running:
                pool.membership.shutdown()

    def alive(self) -> list[SiteNode]:
        return [n for n in self.nodes.values() if n.site_pool._running]

    def bytes_sent(self, node_id: str) -> int:
        """Every byte ``node_id`` sent, all its pools together."""
        a = self.addr[node_id]
        b = self.net.bytes_sent
        return b.get(a, 0) + b.get(f"{a}/{REGION}", 0) + b.get(f"{a}/fleet", 0)

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> float:
        """Advance the clock; with ``until``, stop early when it holds. Returns the elapsed time."""
        start = self.sched.now()
        self.sched.run_until(start + seconds, until)
        return self.sched.now() - start
